#!/usr/bin/env bats
# pipelines/teacher.mk at tiny scale on the CPU (data, tokenizer, token streams, init, training,
# HF export, eval), tests/gpu/train_teacher.sh rehearsed on the CPU, ra-tok --train-bpe / --gen-kv.

load '/usr/lib/bats/bats-support/load'
load '/usr/lib/bats/bats-assert/load'

ROOT="$BATS_TEST_DIRNAME/../.."
W="$ROOT/tests/fixtures/words.txt"

# tiny sizes for every step
SMALL=(VOCAB=400 SEQ=64 KV_TOK=30 KV_TRAIN=60 KV_HELDOUT=8 TEXT_REPEAT=2 TEXT_MAX_FILES=12 TEXT_MAX_BYTES=20000
       HELDOUT_EVERY=4 LAYERS=2 HIDDEN=32 HEADS=4 KV_HEADS=2 INTER=48 BATCH=4 EVAL_EVERY=4 EVAL_BATCHES=1
       CKPT_EVERY=4 KV_PAIRS=5,10 KV_SAMPLES=8 PROBE_STEPS=4 TRAIN_TOKENS=1024)

small() { # OUT [TARGET...]
    local out=$1
    shift
    make -s -f "$ROOT/pipelines/teacher.mk" OUT="$out" "${SMALL[@]}" WORDS="$W" "${@:-tokens}"
}

@test "ra-tok --gen-kv: JSON lines, deterministic, seeds matter, evaluation seeds refused" {
    ra-tok --gen-kv 20 --seed 5 --words "$W" -o "$BATS_TEST_TMPDIR/a.jsonl"
    ra-tok --gen-kv 20 --seed 5 --words "$W" > "$BATS_TEST_TMPDIR/b.jsonl"
    cmp "$BATS_TEST_TMPDIR/a.jsonl" "$BATS_TEST_TMPDIR/b.jsonl"
    [ "$(wc -l < "$BATS_TEST_TMPDIR/a.jsonl")" -eq 20 ]
    ra-tok --gen-kv 20 --seed 6 --words "$W" > "$BATS_TEST_TMPDIR/c.jsonl"
    run cmp -s "$BATS_TEST_TMPDIR/c.jsonl" "$BATS_TEST_TMPDIR/a.jsonl"
    assert_failure
    run ra-tok --gen-kv 3 --seed 1 --words "$W"
    assert_failure 64
    assert_output --partial "reserved"
    run ra-tok --gen-kv 3 --seed 1000003 --words "$W"
    assert_failure 64
    run ra-tok --gen-kv 3 --seed 5 --words "$W" /nonexistent
    assert_failure 66
}

@test "ra-tok --train-bpe: a tokenizer.json ra-tok loads; text round-trips; deterministic; bad sizes refused" {
    ra-tok --gen-kv 50 --seed 5 --words "$W" "$ROOT/README.md" > "$BATS_TEST_TMPDIR/c.jsonl"
    mkdir "$BATS_TEST_TMPDIR/t"
    ra-tok --train-bpe 500 --jsonl -q -o "$BATS_TEST_TMPDIR/t/tokenizer.json" "$BATS_TEST_TMPDIR/c.jsonl"
    ra-tok --train-bpe 500 --jsonl -q "$BATS_TEST_TMPDIR/c.jsonl" | cmp - "$BATS_TEST_TMPDIR/t/tokenizer.json"
    ra-tok -t "$BATS_TEST_TMPDIR/t" --jsonl --specials no -q -o "$BATS_TEST_TMPDIR/c.ra" "$BATS_TEST_TMPDIR/c.jsonl"
    ra-tok --decode --jsonl -t "$BATS_TEST_TMPDIR/t" "$BATS_TEST_TMPDIR/c.ra" > "$BATS_TEST_TMPDIR/back.jsonl"
    # the same texts (JSON escaping may differ: compare the decoded strings with ra-tok itself)
    ra-tok -t "$BATS_TEST_TMPDIR/t" --jsonl --specials no -q -o "$BATS_TEST_TMPDIR/back.ra" "$BATS_TEST_TMPDIR/back.jsonl"
    cmp <(ra-tok --to-ids "$BATS_TEST_TMPDIR/c.ra") <(ra-tok --to-ids "$BATS_TEST_TMPDIR/back.ra")
    run ra-tok --stats -t "$BATS_TEST_TMPDIR/t" "$ROOT/README.md" -o "$BATS_TEST_TMPDIR/r.ra"
    assert_success
    run ra-tok --train-bpe 257 < /dev/null
    assert_failure 64
    run ra-tok --train-bpe 300 -t "$BATS_TEST_TMPDIR/t" < /dev/null
    assert_failure 64
}

@test "teacher.mk: data -> tokenizer -> tokens streams, reproducible" {
    small "$BATS_TEST_TMPDIR/o1"
    small "$BATS_TEST_TMPDIR/o2"
    for f in train.jsonl heldout.jsonl tokenizer/tokenizer.json train.ra heldout.ra heldout-text.ra; do
        [ -s "$BATS_TEST_TMPDIR/o1/$f" ]
        cmp "$BATS_TEST_TMPDIR/o1/$f" "$BATS_TEST_TMPDIR/o2/$f"
    done
    [ "$(wc -l < "$BATS_TEST_TMPDIR/o1/heldout.jsonl")" -ge 8 ]
    # held-out and training text files are disjoint
    run grep -Fxf <(sed -n 's/^H .*\///p' "$BATS_TEST_TMPDIR/o1/text.list") <(sed -n 's/^T .*\///p' "$BATS_TEST_TMPDIR/o1/text.list")
    assert_failure
    run ra-tok --decode -t "$BATS_TEST_TMPDIR/o1/tokenizer" "$BATS_TEST_TMPDIR/o1/heldout-text.ra"
    assert_success
    assert_output --partial "<|begin_of_text|>"
    # every text file has distinct content; train.jsonl holds each T file TEXT_REPEAT (2) times
    [ "$(sed 's/^. //' "$BATS_TEST_TMPDIR/o1/text.list" | xargs md5sum | cut -d' ' -f1 | sort -u | wc -l)" -eq \
      "$(wc -l < "$BATS_TEST_TMPDIR/o1/text.list")" ]
    [ "$(wc -l < "$BATS_TEST_TMPDIR/o1/train.jsonl")" -eq $((60 + 2 * $(grep -c '^T ' "$BATS_TEST_TMPDIR/o1/text.list"))) ]
    # a second make does nothing
    run small "$BATS_TEST_TMPDIR/o1"
    assert_success
    assert_output ""
}

@test "teacher.mk: init -> ra-mohawk3 --loss ce -> HF export -> ra-eval kv,ppl (CPU, tiny)" {
    o="$BATS_TEST_TMPDIR/o"
    small "$o" eval
    # the config: the variables' shape, tied embeddings, the tokenizer's vocabulary and specials
    cfg="$o/hf/config.json"
    [ "$(jq -c '[.num_hidden_layers, .hidden_size, .num_attention_heads, .num_key_value_heads, .head_dim, .intermediate_size, .vocab_size, .tie_word_embeddings]' "$cfg")" = '[2,32,4,2,8,48,400,true]' ]
    [ "$(jq .bos_token_id "$cfg")" -eq "$(jq '.added_tokens[] | select(.content == "<|begin_of_text|>") | .id' "$o/hf/tokenizer.json")" ]
    cmp "$o/tokenizer/tokenizer.json" "$o/hf/tokenizer.json"
    # trained for TRAIN_TOKENS / (BATCH * SEQ) = 4 steps, stored in bf16, held-out loss logged
    [ "$(awk -F'\t' 'END { print $1 }' "$o/train.log")" -eq 4 ]
    [ -n "$(awk -F'\t' 'END { print $8 }' "$o/train.log")" ]
    [ "$(ra-show --json "$o/hf" | jq -r '.tensors[].dtype' | sort -u)" = bf16 ]
    # the evaluation: both scorings at both pair counts, perplexity; the second word list too
    for t in "KV retrieval, choice scoring" "KV retrieval, last-token scoring" "Language modelling"; do grep -q "$t" "$o/eval.md"; done
    [ "$(grep -c '^| 5 | 8 |' "$o/eval.md")" -eq 2 ] && [ "$(grep -c '^| 10 | 8 |' "$o/eval-kv-words2.md")" -eq 2 ]
    # the exported model is the trained one: its eval equals the stream's
    ra-eval -q -m "$o/teacher.ra" --tokenizer "$o/tokenizer" --task kv --pairs 5,10 --samples 8 --words "$W" --device cpu > "$BATS_TEST_TMPDIR/s.md"
    diff <(grep KV -A4 "$o/eval-kv-words2.md") <(grep KV -A4 "$BATS_TEST_TMPDIR/s.md")
    run small "$o" eval
    assert_output ""
}

@test "tests/gpu/train_teacher.sh rehearsed on the CPU: gpu-data -> probe -> train -> export -> eval -> summary" {
    small "$BATS_TEST_TMPDIR/prep" gpu-data
    d="$BATS_TEST_TMPDIR/prep/gpu-data"
    [ -s "$d/text.tar.gz" ] && [ -s "$d/tokenizer/tokenizer.json" ] && cmp "$d/words" "$W"
    unset TRAIN_TOKENS
    OUT="$BATS_TEST_TMPDIR/out" WORK="$BATS_TEST_TMPDIR/work" DEVICE=cpu BUILD=0 TRAIN_SECONDS=1 \
        MAKEFLAGS_TEACHER="${SMALL[*]/TRAIN_TOKENS=1024/}" run "$ROOT/tests/gpu/train_teacher.sh" "$d"
    assert_success
    assert_output --partial "probe: "
    assert_output --partial "| eval.md: KV choice, 10 pairs | acc "
    for f in config.json model.safetensors train.log eval.md eval-kv-words2.md; do [ -s "$BATS_TEST_TMPDIR/out/teacher/$f" ]; done
    [ -s "$BATS_TEST_TMPDIR/out/job.log" ]
    # the streams were made from the carried tokenizer, not a new one
    cmp "$d/tokenizer/tokenizer.json" "$BATS_TEST_TMPDIR/work/tokenizer/tokenizer.json"
}

@test "the committed teacher (tests/fixtures/teacher): HF layout, at most 20 MB, the tokenizer's vocabulary, retrieves on the CPU" {
    F="$ROOT/tests/fixtures/teacher"
    [ -e "$F/model.safetensors" ] || skip "no committed teacher yet"
    for f in config.json model.safetensors tokenizer.json tokenizer_config.json train.log eval.md REBUILD.md; do [ -s "$F/$f" ]; done
    [ "$(cat "$F"/* | wc -c)" -le 20000000 ]
    ra-show --verify "$F"
    [ "$(jq -c '[.model_type, .tie_word_embeddings, .num_hidden_layers * .num_attention_heads >= 32]' "$F/config.json")" = '["llama",true,true]' ]
    [ "$(jq .vocab_size "$F/config.json")" -eq "$(jq '(.model.vocab | length) + (.added_tokens | length)' "$F/tokenizer.json")" ]
    # KV retrieval at 20 pairs with prompts of another seed than eval.md's (1000003), choice scoring
    acc=$(ra-eval -q -m "$F" --task kv --pairs 20 --samples 64 --seed 4242 --score choice --words "$W" --device cpu \
        --format json | jq .kv_choice_20_acc)
    echo "kv choice acc at 20 pairs: $acc"
    awk -v a="$acc" 'BEGIN { exit !(a >= 0.9) }'
}

#!/usr/bin/env bats
# ra-eval: flags, --task logits against the Hugging Face golden fixtures,
# model streams, exit codes and error messages; the table tasks (kv, ppl,
# kd, mc, gen, mem, speed), --ablate, -o, --format json and --plot.

load '/usr/lib/bats/bats-support/load'
load '/usr/lib/bats/bats-assert/load'

setup() {
    ROOT="$BATS_TEST_DIRNAME/../.."
    TD="$ROOT/build/tests/ra-testdata"
    GOLDEN="$ROOT/tests/fixtures/golden"
    G="$GOLDEN/llama3_gqa"
    [ -d "$G" ] || skip "golden fixtures absent"
    T="$BATS_TEST_TMPDIR"
    "$TD" golden-tokens -o "$T/tok.ra" "$G/expected.safetensors"
}

# a copy of fixture $1 that a test may break
copy_fixture() {
    mkdir -p "$T/m"
    cp "$GOLDEN/$1"/config.json "$GOLDEN/$1"/*.safetensors* "$T/m/"
    rm -f "$T/m/expected.safetensors"
}

@test "--help and --version exit 0 on stdout" {
    run ra-eval --help
    assert_success
    assert_output --partial "usage: ra-eval"
    assert_output --partial "--ablate"
    run ra-eval --version
    assert_success
    assert_output --regexp '^ra-eval \(ra\) [0-9]'
}

@test "usage errors exit 64" {
    run ra-eval --task logits -d "$T/tok.ra"
    assert_failure 64
    assert_output --partial "no model"
    run ra-eval -m "$G" -d "$T/tok.ra" -o "$T/out"
    assert_failure 64
    assert_output --partial "no task"
    run ra-eval -m "$G" --task nonsense -d "$T/tok.ra" -o "$T/out"
    assert_failure 64
    assert_output --partial "--task 'nonsense'"
    run ra-eval -m "$G" --task logits -o "$T/out"
    assert_failure 64
    assert_output --partial "needs -d TOKENS"
    run ra-eval -m "$G" --task logits -d "$T/tok.ra" --device tpu -o "$T/out"
    assert_failure 64
    assert_output --partial "expected cpu or cuda"
    run ra-eval -m "$G" --task logits -d "$T/tok.ra" --bogus
    assert_failure 64
    run ra-eval -m - --task logits -d - -o "$T/out"
    assert_failure 64
    assert_output --partial "stdin"
    [ ! -e "$T/out" ]
}

@test "--ablate is checked: syntax and ranges exit 64" {
    for bad in "1" "1:x" "a:1" ":" "1:2,"; do
        run ra-eval -m "$G" --task logits -d "$T/tok.ra" --ablate "$bad" -o "$T/out"
        [ "$status" -eq 64 ] || { echo "--ablate '$bad' gave $status: $output"; false; }
    done
    run ra-eval -m "$G" --task logits -d "$T/tok.ra" --ablate 2:0 -o "$T/out"
    assert_failure 64
    assert_output --partial "layers 0..1 and heads 0..3"
    run ra-eval -m "$G" --task logits -d "$T/tok.ra" --ablate 0:4 -o "$T/out"
    assert_failure 64
    [ ! -e "$T/out" ]
}

@test "logits match Hugging Face on every golden fixture, with and without ablation" {
    for dir in "$GOLDEN"/*/; do
        name=$(basename "$dir")
        "$TD" golden-tokens -o "$T/$name.tok" "$dir/expected.safetensors"
        run ra-eval -q -m "$dir" --task logits -d "$T/$name.tok" --device cpu -o "$T/$name.out"
        assert_success
        run "$TD" compare "$T/$name.out" logits/0 "$dir/expected.safetensors" logits/short 1e-4
        assert_success
        run "$TD" compare "$T/$name.out" logits/1 "$dir/expected.safetensors" logits/long 1e-4
        assert_success
        # first ablation listed in expected.json
        lh=$(tr -d ' \n' <"$dir/expected.json" | grep -o '"ablations":\[\[[0-9]*,[0-9]*' | grep -o '[0-9]*,[0-9]*$')
        l=${lh%,*} h=${lh#*,}
        run ra-eval -q -m "$dir" --task logits -d "$T/$name.tok" --ablate "$l:$h" -o "$T/$name.abl"
        assert_success
        run "$TD" compare "$T/$name.abl" logits/1 "$dir/expected.safetensors" "ablate/${l}_${h}/long" 1e-4
        assert_success
        # and the ablation is not a no-op
        run "$TD" compare "$T/$name.abl" logits/1 "$dir/expected.safetensors" logits/long 1e-3
        assert_failure
    done
}

@test "results stream: kind, meta, one logits/<i> per document, deterministic" {
    run ra-eval -q -m "$G" --task logits -d "$T/tok.ra" --ablate 1:3,0:1 -o "$T/a.ra"
    assert_success
    assert_output ""
    run "$TD" describe "$T/a.ra"
    assert_success
    assert_line "kind results"
    assert_line --regexp '^meta .*"ablate":\[\[1,3\],\[0,1\]\].*"device":"cpu","documents":2.*"task":"logits".*"vocab_size":320'
    assert_line "tensor logits/0 f32 7x320"
    assert_line "tensor logits/1 f32 80x320"
    id1=$(echo "$output" | sed -n 's/^id //p')
    # the meta names the model's content id
    mid=$("$TD" id "$G")
    assert_line --partial "\"model\":\"$mid\""
    # same inputs, same bytes; to stdout as well
    ra-eval -q -m "$G" --task logits -d "$T/tok.ra" --ablate 1:3,0:1 >"$T/b.ra"
    cmp "$T/a.ra" "$T/b.ra"
}

@test "progress goes to stderr, -q silences it" {
    run ra-eval -m "$G" --task logits -d "$T/tok.ra" -o "$T/out"
    assert_success
    assert_output --partial "logits"
    run ra-eval -q -m "$G" --task logits -d "$T/tok.ra" -o "$T/out"
    assert_success
    assert_output ""
}

@test "a model stream gives the same logits, and its digest as model id" {
    "$TD" model-stream -o "$T/model.ra" --dtype f32 "$G"
    run ra-eval -q -m "$T/model.ra" --task logits -d "$T/tok.ra" -o "$T/s.ra"
    assert_success
    run "$TD" compare "$T/s.ra" logits/1 "$G/expected.safetensors" logits/long 1e-4
    assert_success
    sid=$("$TD" describe "$T/model.ra" | sed -n 's/^id //p')
    run "$TD" describe "$T/s.ra"
    assert_line --partial "\"model\":\"$sid\""
    # from stdin too
    run bash -c "ra-eval -q -m - --task logits -d '$T/tok.ra' -o '$T/s2.ra' <'$T/model.ra'"
    assert_success
    cmp "$T/s.ra" "$T/s2.ra"
    # a bf16 stream loads (rounded weights: close, not equal)
    "$TD" model-stream -o "$T/model16.ra" --dtype bf16 "$G"
    run ra-eval -q -m "$T/model16.ra" --task logits -d "$T/tok.ra" -o "$T/s16.ra"
    assert_success
}

@test "the HF content id follows the weights, not the sharding" {
    a=$("$TD" id "$GOLDEN/llama_sharded_f16")
    [ ${#a} -eq 32 ]
    copy_fixture llama_sharded_f16
    [ "$("$TD" id "$T/m")" = "$a" ]
    # one byte of one shard changed: another id
    f=$(ls "$T/m"/model-00002-*.safetensors)
    size=$(stat -c %s "$f")
    printf '\x55' | dd of="$f" bs=1 seek=$((size - 3)) conv=notrunc status=none
    b=$("$TD" id "$T/m")
    [ "$a" != "$b" ]
}

@test "missing model, config or weights exit 66" {
    run ra-eval -m "$T/nowhere" --task logits -d "$T/tok.ra" -o "$T/out"
    assert_failure 66
    assert_output --partial "nowhere"
    copy_fixture llama3_gqa
    rm "$T/m/config.json"
    run ra-eval -m "$T/m" --task logits -d "$T/tok.ra" -o "$T/out"
    assert_failure 66
    assert_output --partial "no config.json"
    cp "$G/config.json" "$T/m/"
    rm "$T/m/model.safetensors"
    run ra-eval -m "$T/m" --task logits -d "$T/tok.ra" -o "$T/out"
    assert_failure 66
    assert_output --partial "model.safetensors"
    run ra-eval -m "$G" --task logits -d "$T/missing.ra" -o "$T/out"
    assert_failure 66
    [ ! -e "$T/out" ]
}

@test "missing tensors and wrong shapes exit 65 naming the tensor" {
    copy_fixture llama3_gqa
    sed -i 's/"num_hidden_layers": 2/"num_hidden_layers": 3/' "$T/m/config.json"
    run ra-eval -m "$T/m" --task logits -d "$T/tok.ra" -o "$T/out"
    assert_failure 65
    assert_output --partial "tensor 'model.layers.2.input_layernorm.weight' missing"
    copy_fixture llama3_gqa
    sed -i 's/"intermediate_size": 128/"intermediate_size": 96/' "$T/m/config.json"
    run ra-eval -m "$T/m" --task logits -d "$T/tok.ra" -o "$T/out"
    assert_failure 65
    assert_output --partial "tensor 'model.layers.0.mlp.gate_proj.weight': expected shape [96, 64], got [128, 64]"
    # an untied model without lm_head.weight
    copy_fixture qwen2_bias_tied_bf16
    sed -i 's/"tie_word_embeddings": true/"tie_word_embeddings": false/' "$T/m/config.json"
    run ra-eval -m "$T/m" --task logits -d "$T/tok.ra" -o "$T/out"
    assert_failure 65
    assert_output --partial "lm_head.weight"
    [ ! -e "$T/out" ]
}

@test "bad tokens: id >= vocab, empty document, wrong kind or layout exit 65" {
    "$TD" tokens -o "$T/big.ra" "1,2,3" "4,5,320,6"
    run ra-eval -m "$G" --task logits -d "$T/big.ra" -o "$T/out"
    assert_failure 65
    assert_output --partial "doc/1: token 2 is 320, expected < vocab size 320"
    "$TD" tokens -o "$T/neg.ra" "1,-1"
    run ra-eval -m "$G" --task logits -d "$T/neg.ra" -o "$T/out"
    assert_failure 65
    assert_output --partial "doc/0: token 1 is -1"
    "$TD" tokens -o "$T/empty.ra" "1,2" ""
    run ra-eval -m "$G" --task logits -d "$T/empty.ra" -o "$T/out"
    assert_failure 65
    assert_output --partial "doc/1: the document is empty"
    "$TD" tokens -o "$T/none.ra"
    run ra-eval -m "$G" --task logits -d "$T/none.ra" -o "$T/out"
    assert_failure 65
    assert_output --partial "no documents"
    "$TD" tokens -o "$T/kind.ra" --kind scores "1,2"
    run ra-eval -m "$G" --task logits -d "$T/kind.ra" -o "$T/out"
    assert_failure 65
    assert_output --partial "expected 'tokens'"
    "$TD" tokens -o "$T/packed.ra" --layout packed "1,2"
    run ra-eval -m "$G" --task logits -d "$T/packed.ra" -o "$T/out"
    assert_failure 65
    assert_output --partial "layout 'packed'"
    # a truncated tokens stream is refused before anything is written
    head -c -10 "$T/tok.ra" >"$T/trunc.ra"
    run ra-eval -m "$G" --task logits -d "$T/trunc.ra" -o "$T/out"
    assert_failure 65
    [ ! -e "$T/out" ]
}

@test "documents longer than max_position_embeddings: warning, still computed" {
    ids=$(seq -s, 1 130)
    "$TD" tokens -o "$T/long.ra" "$ids"
    run ra-eval -q -m "$G" --task logits -d "$T/long.ra" -o "$T/out"
    assert_success
    assert_output --partial "warning"
    assert_output --partial "doc/0 has 130 tokens, more than max_position_embeddings 128"
    run "$TD" describe "$T/out"
    assert_line "tensor logits/0 f32 130x320"
}

@test "--device cuda: results, or exit 69 with a clear message" {
    run ra-eval -q -m "$G" --task logits -d "$T/tok.ra" --device cuda -o "$T/out"
    if [ "$status" -eq 0 ]; then
        # a CUDA build on a GPU machine: bf16 logits within DESIGN §7's 2e-2
        run "$TD" compare "$T/out" logits/1 "$G/expected.safetensors" logits/long 2e-2
        assert_success
    else
        assert_failure 69
        assert_output --partial "--device cuda"
        [ ! -e "$T/out" ]
    fi
}

# ------------------------------------------------------------------
# The table tasks, on tiny random teachers with the llama3-style
# tokenizer fixture (numbers 0-99 one token each) and a grafted student.

mk_teacher() { # DIR SEED
    "$ROOT/build/tests/mk-hf" --vocab 2048 --layers 2 --hidden 32 --heads 4 --kv-heads 2 --seed "$2" "$1" >/dev/null
    cp "$ROOT/tests/fixtures/tokenizers/llama3-style/"* "$1/"
}

setup_tasks() {
    export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
    M="$T/llama"; mk_teacher "$M" 3
    M2="$T/llama2"; mk_teacher "$M2" 4
    W="$T/words"
    printf '%s\n' apple banana cherry damson elder fig grape hazel ivy juniper kiwi lemon >"$W"
    KV=(--pairs 3,5 --samples 6 --words "$W" --device cpu -q)
    "$TD" tokens -o "$T/ho.ra" "1,2,3,4,5,6,7" "8,9,10" "11,12,13,14,15,16,17,18,19,20,21,22"
    printf '%s\n' '{"context": "The capital of France is", "choices": [" Paris", " London", " a big city"], "gold": 0}' \
        '' '{"context": "One plus one is", "choices": [" two", " three"], "gold": 1}' >"$T/mc.jsonl"
    printf '%s\n' '{"context": "apple:1\nThe value of apple is", "answers": ["1"]}' \
        '{"context": "Name:", "answer": "Bob"}' >"$T/gen.jsonl"
}

meta_of() { "$TD" describe "$1" | sed -n 's/^meta //p'; }

@test "kv: tables for both scoring modes, JSON metrics with acc keys, deterministic" {
    setup_tasks
    run ra-eval -m "$M" --task kv "${KV[@]}"
    assert_success
    assert_output --partial "### KV retrieval, choice scoring"
    assert_output --partial "### KV retrieval, last-token scoring"
    assert_line --regexp '^\| 3 \| 6 \| [0-9.]+ \| -[0-9.]+ \|$'
    run ra-eval -m "$M" --task kv "${KV[@]}" --format json
    assert_success
    for k in kv_choice_3_acc kv_choice_5_acc kv_choice_acc kv_last_token_3_acc kv_last_token_acc; do
        jq -e "has(\"$k\") and (.$k >= 0) and (.$k <= 1)" <<<"$output" >/dev/null
    done
    [ "$(jq '[keys[] | select(contains("acc"))] | length' <<<"$output")" -eq 6 ]
    a="$output"
    run ra-eval -m "$M" --task kv "${KV[@]}" --format json
    [ "$output" = "$a" ]
    # --score choice: one mode only; --seed changes the prompts
    run ra-eval -m "$M" --task kv "${KV[@]}" --score choice --format json
    [ "$(jq 'keys | map(select(startswith("kv_last"))) | length' <<<"$output")" -eq 0 ]
}

@test "kv accuracy equals ra-probe's baseline accuracy for the same seed and pairs" {
    setup_tasks
    for score in choice last-token; do
        ra-probe -m "$M" --pairs 4 --samples 8 --seed 5 --words "$W" --score "$score" --device cpu -q -o "$T/s.ra"
        base=$("$ROOT/build/tests/ra-mkstream" --dump "$T/s.ra" | sed -n 's/^meta //p' | jq .baseline.accuracy)
        key=kv_$(tr - _ <<<"$score")_4_acc
        acc=$(ra-eval -m "$M" --task kv --pairs 4 --samples 8 --seed 5 --words "$W" --score "$score" --device cpu -q \
              --format json | jq ".$key")
        awk -v a="$acc" -v b="$base" 'BEGIN { exit !((a - b) ^ 2 < 1e-18) }' || { echo "$score: $acc vs $base"; false; }
    done
}

@test "kv with --teacher: coverage = model accuracy / teacher accuracy" {
    setup_tasks
    run ra-eval -m "$M" --teacher "$M2" --task kv "${KV[@]}" --score choice --pairs 2 --samples 12 --format json
    assert_success
    s=$(jq .kv_choice_2_acc <<<"$output") t=$(jq .kv_choice_teacher_acc <<<"$output") c=$(jq .kv_choice_2_coverage <<<"$output")
    if [ "$t" != "0.0" ] && [ "$t" != "0" ]; then
        awk -v s="$s" -v t="$t" -v c="$c" 'BEGIN { exit !((s / t - c) ^ 2 < 1e-12) }'
    else
        [ "$c" = "null" ]
    fi
    # the model as its own teacher: coverage 1 (or null when accuracy is 0)
    run ra-eval -m "$M" --teacher "$M" --task kv "${KV[@]}" --score choice --pairs 2 --samples 12 --format json
    c=$(jq .kv_choice_coverage <<<"$output")
    [ "$c" = "1.0" ] || [ "$c" = "1" ] || [ "$c" = "null" ]
}

@test "--ablate applies to every task and changes the results; out of range exits 64" {
    setup_tasks
    a=$(ra-eval -m "$M" --task kv,ppl -d "$T/ho.ra" "${KV[@]}" --format json)
    b=$(ra-eval -m "$M" --task kv,ppl -d "$T/ho.ra" "${KV[@]}" --format json --ablate 0:1,1:2)
    [ "$(jq .ppl <<<"$a")" != "$(jq .ppl <<<"$b")" ]
    [ "$(jq .kv_choice_3_acc <<<"$a")$(jq .kv_last_token_3_acc <<<"$a")" != "" ]
    run ra-eval -m "$M" --task kv "${KV[@]}" --ablate 2:0
    assert_failure 64
    assert_output --partial "layers 0..1 and heads 0..3"
    run ra-eval -m "$M" --task gen:"$T/gen.jsonl" --device cpu -q --ablate 0:0
    assert_failure 64
    assert_output --partial "--ablate does not apply to --task gen"
}

@test "ppl and kd: one pass, kd 0 against itself and > 0 against another teacher" {
    setup_tasks
    run ra-eval -q -m "$M" --task ppl -d "$T/ho.ra" --device cpu --ctx 4
    assert_success
    assert_output --partial "### Language modelling"
    assert_line --regexp '^\| 3 \| 16 \| [0-9.]+ \| [0-9.]+ \|$'   # windows of 4 predict 3+2, 2, 3+3+3
    run ra-eval -q -m "$M" --teacher "$M" --task kd -d "$T/ho.ra" --device cpu --format json
    assert_success
    [ "$(jq '.kd == 0 and .ppl == .teacher_ppl' <<<"$output")" = true ]
    run ra-eval -q -m "$M" --teacher "$M2" --task ppl,kd -d "$T/ho.ra" --device cpu --format json
    jq -e '.kd > 0 and .ppl > 1 and .teacher_ppl > 1 and (.ppl | log) - .nll < 1e-9' <<<"$output" >/dev/null
}

@test "ppl and kd refusals: no tokens stream, no teacher, packed layout, stdin twice" {
    setup_tasks
    run ra-eval -m "$M" --task ppl --device cpu
    assert_failure 64
    assert_output --partial "--task ppl needs -d TOKENS"
    run ra-eval -m "$M" --task kd -d "$T/ho.ra" --device cpu
    assert_failure 64
    assert_output --partial "--task kd needs --teacher"
    run ra-eval -m "$M" --task ppl -d "$T/nothere.ra" --device cpu
    assert_failure 66
    "$TD" tokens -o "$T/packed.ra" --layout packed "1,2"
    run ra-eval -m "$M" --task ppl -d "$T/packed.ra" --device cpu
    assert_failure 65
    assert_output --partial "layout 'packed'"
    run ra-eval -m - --teacher - --task kd -d "$T/ho.ra"
    assert_failure 64
}

@test "mc: acc and acc_norm, with a teacher; bad lines name the line number" {
    setup_tasks
    run ra-eval -q -m "$M" --teacher "$M2" --task mc:"$T/mc.jsonl" --device cpu --format json
    assert_success
    jq -e '[.mc_mc_acc, .mc_mc_acc_norm, .mc_mc_teacher_acc, .mc_mc_teacher_acc_norm] | all(. == 0 or . == 0.5 or . == 1)' <<<"$output" >/dev/null
    printf '%s\n' '{"context": "a", "choices": ["b"], "gold": 0}' '{"context": "a", "choices": ["b", "c"], "gold": 2}' >"$T/gold.jsonl"
    run ra-eval -q -m "$M" --task mc:"$T/gold.jsonl" --device cpu
    assert_failure 65
    assert_output --partial "gold.jsonl:2: gold 2 is out of range"
    printf '%s\n' '{"context": "a", "choices": ["b"], "gold": 0}' '' '{"context": "a", "choices": ["b"], "gold": 0' >"$T/bad.jsonl"
    run ra-eval -q -m "$M" --task mc:"$T/bad.jsonl" --device cpu
    assert_failure 65
    assert_output --partial "bad.jsonl:3: not valid JSON"
    printf '%s\n' '{"context": "a", "gold": 0}' >"$T/nochoices.jsonl"
    run ra-eval -q -m "$M" --task mc:"$T/nochoices.jsonl" --device cpu
    assert_failure 65
    assert_output --partial "nochoices.jsonl:1: 'choices'"
    run ra-eval -q -m "$M" --task mc:"$T/absent.jsonl" --device cpu
    assert_failure 66
    run ra-eval -q -m "$M" --task mc --device cpu
    assert_failure 64
    assert_output --partial "needs a file"
}

@test "gen: contains and exact, tokens bounded by --max-new-tokens" {
    setup_tasks
    run ra-eval -q -m "$M" --task gen:"$T/gen.jsonl" --device cpu --max-new-tokens 5 --until ''
    assert_success
    assert_output --partial "### Generation: gen"
    assert_line --regexp '^\| 2 \| [01.0-9]+ \| [01.0-9]+ \| [0-5](\.[0-9]+)? \|$'
    printf '%s\n' '{"context": "x", "answers": [1]}' >"$T/badgen.jsonl"
    run ra-eval -q -m "$M" --task gen:"$T/badgen.jsonl" --device cpu
    assert_failure 65
    assert_output --partial "badgen.jsonl:1: 'answers'[0] must be a string"
}

@test "mem and speed work for a teacher and a grafted hybrid; -o stream verifies" {
    setup_tasks
    "$ROOT/build/tests/mk-scores" -L 2 -H 4 -G 2 -d 8 -i "$("$TD" id "$M")" -o "$T/sc.ra" <<<$'0.1 0.5\n0.3 0.2\n0.1 0.5\n0.0 0.9\n0.3 0.7\n0.2 -0.1\n0.0 0.0\n0.5 0.1'
    ra-rank -q --top 2 -o "$T/plan.ra" "$T/sc.ra"
    ra-graft -q -m "$M" -p "$T/plan.ra" --layout parallel --d-state 4 -o "$T/st.ra"
    run ra-eval -q -m "$T/st.ra" --teacher "$M" --task mem,speed --device cpu --lengths 16,64 --max-batch 2 \
        --prompt-len 8 --gen-len 3 -o "$T/r.ra" --format json
    assert_success
    # 2 kept heads x 2 x hd 8 values per token, 2 layers x 4 heads x P 8 x N 4 state, bf16
    jq -e '.mem_16_mb == (2*2*8*16 + 2*4*8*4) * 2 / 1e6 and .mem_16_teacher_mb == 2*2*2*8*16*2/1e6' <<<"$output" >/dev/null
    jq -e '.speed_b1_decode_tok_s > 0 and .speed_b2_prefill_tok_s > 0 and .speed_max_batch == 2' <<<"$output" >/dev/null
    # no GPU: no peak GPU memory metric (the table's column is NaN)
    jq -e 'has("speed_b1_peak_gpu_bytes") | not' <<<"$output" >/dev/null
    run ra-eval -q -m "$T/st.ra" --task speed --device cpu --max-batch 2 --prompt-len 8 --gen-len 3
    assert_success
    assert_line "| batch | prefill_tok_s | decode_tok_s | state_bytes | peak_rss_bytes | peak_gpu_bytes |"
    assert_line --regexp '^\| 2 \| [0-9.]+ \| [0-9.]+ \| [0-9]+ \| [0-9]+ \| – \|$'
    run ra-show --verify "$T/r.ra"
    assert_success
    run "$TD" describe "$T/r.ra"
    assert_line "kind results"
    assert_line "tensor table/mem f64 2x8"
    assert_line "tensor table/speed f64 2x6"
    m=$(meta_of "$T/r.ra")
    [ "$(jq -r .tables[0].name <<<"$m")" = mem ]
    [ "$(jq -r .teacher <<<"$m")" = "$("$TD" id "$M")" ]
    jq -e '.metrics.mem_64_ratio < 1' <<<"$m" >/dev/null
    # the hybrid needs a tokenizer from elsewhere for kv: --tokenizer or the teacher's directory
    run ra-eval -q -m "$T/st.ra" --task kv "${KV[@]}"
    assert_failure 66
    assert_output --partial "--tokenizer"
    run ra-eval -q -m "$T/st.ra" --task kv "${KV[@]}" --tokenizer "$M" --format json
    assert_success
}

@test "usage: unknown task, logits not alone, bad --format, lists" {
    setup_tasks
    run ra-eval -m "$M" --task kv,bogus
    assert_failure 64
    assert_output --partial "--task 'bogus'"
    run ra-eval -m "$M" --task logits,mem -d "$T/ho.ra"
    assert_failure 64
    assert_output --partial "logits runs alone"
    run ra-eval -m "$M" --task mem --format xml
    assert_failure 64
    run ra-eval -m "$M" --task kv --pairs 0
    assert_failure 64
    run ra-eval -m "$M" --task kv --pairs 3,x
    assert_failure 64
    run ra-eval -m "$M" --task mem --teacher "$T/nowhere"
    assert_failure 66
}

@test "--plot writes PNGs when gnuplot exists; exit 69 without it; --plot-log loss curves" {
    setup_tasks
    command -v gnuplot >/dev/null || skip "no gnuplot"
    run ra-eval -q -m "$M" --task kv,mem "${KV[@]}" --plot "$T/plots"
    assert_success
    for p in kv mem; do
        [ "$(head -c 8 "$T/plots/$p.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ]
    done
    printf 'step\ttokens\tloss\tlr\n1\t64\t5.5\t0.001\n2\t128\t4.25\t0.001\n3\t192\t3.0\t0.001\n' >"$T/train.tsv"
    run ra-eval --plot-log "$T/train.tsv" --plot "$T/p2" -q
    assert_success
    [ -s "$T/p2/loss.png" ]
    printf 'step\ttokens\tlr\n1\t64\t0.1\n' >"$T/noloss.tsv"
    run ra-eval --plot-log "$T/noloss.tsv" --plot "$T/p3"
    assert_failure 65
    assert_output --partial "noloss.tsv:1: header has no 'loss' column"
    printf 'step\ttokens\tloss\n1\t64\n' >"$T/short.tsv"
    run ra-eval --plot-log "$T/short.tsv" --plot "$T/p3"
    assert_failure 65
    assert_output --partial "short.tsv:2: 2 fields, expected 3"
    run ra-eval --plot-log "$T/train.tsv"
    assert_failure 64
    RA_GNUPLOT=/nonexistent/gnuplot run ra-eval -q -m "$M" --task mem --plot "$T/p4"
    assert_failure 69
    assert_output --partial "gnuplot"
    [ ! -e "$T/p4" ]
}

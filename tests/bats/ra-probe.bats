#!/usr/bin/env bats
# ra-probe: prompts, scores streams, methods, determinism, errors.  Tiny random
# teachers (build/tests/mk-hf) with the trained tokenizer fixtures.

load '/usr/lib/bats/bats-support/load'
load '/usr/lib/bats/bats-assert/load'

ROOT="$BATS_TEST_DIRNAME/../.."
T="$ROOT/build/tests"
FIX="$ROOT/tests/fixtures/tokenizers"

# A Llama-3 style teacher (BOS, numbers 0-99 one token each) in $1.
mk_llama() {
    "$T/mk-hf" --vocab 2048 --layers 2 --hidden 32 --heads 4 --kv-heads 2 --seed 3 "$1" >/dev/null
    cp "$FIX/llama3-style/"* "$1/"
}

setup() {
    export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
    M="$BATS_TEST_TMPDIR/llama"
    mk_llama "$M"
    W="$BATS_TEST_TMPDIR/words"
    printf '%s\n' apple banana cherry damson elder fig grape hazel ivy juniper kiwi lemon > "$W"
    P=(--pairs 3 --samples 6 --words "$W" --device cpu -q)
}

dump() { "$T/ra-mkstream" --dump "$1"; }
meta() { dump "$1" | sed -n 's/^meta //p'; }

@test "--help and --version" {
    run ra-probe --help
    assert_success
    assert_output --partial "Usage: ra-probe -m TEACHER"
    run ra-probe --version
    assert_success
    assert_output --regexp '^ra-probe \(ra\) [0-9]'
}

@test "--dump-prompts without a model writes the prompts, byte for byte" {
    run ra-probe --pairs 3 --samples 2 --words "$W" --dump-prompts -
    assert_success
    [ "${#lines[@]}" -eq 12 ]
    assert_line --index 0 --regexp '^# prompt 1 of 2: answer [0-9]+$'
    assert_line --index 1 "Memorize the following dictionary:"
    assert_line --index 2 --regexp '^[a-z]+:[0-9]+$'
    assert_line --index 4 --regexp '^[a-z]+:[0-9]+$'
    assert_line --index 5 --regexp "^The value of the key '[a-z]+' is\$"
    # the queried key is one of the keys and the answer is its value
    key=$(sed -n "6s/.*'\\(.*\\)'.*/\\1/p" <<<"$output")
    ans=$(sed -n '1s/.*answer //p' <<<"$output")
    sed -n 3,5p <<<"$output" | grep -qx "$key:$ans"
    # "... is" + the newline the dump adds, then a blank line; to a file as well
    ra-probe --pairs 3 --samples 2 --words "$W" --dump-prompts "$BATS_TEST_TMPDIR/p.txt"
    [ "$(sed -n 6p "$BATS_TEST_TMPDIR/p.txt" | tail -c 4 | od -An -c | tr -d ' ')" = "is\\n" ]
    [ -z "$(sed -n 7p "$BATS_TEST_TMPDIR/p.txt")" ]
}

@test "prompts are reproducible from the seed and change with it" {
    a=$(ra-probe --pairs 5 --samples 4 --seed 7 --words "$W" --dump-prompts -)
    b=$(ra-probe --pairs 5 --samples 4 --seed 7 --words "$W" --dump-prompts -)
    c=$(ra-probe --pairs 5 --samples 4 --seed 8 --words "$W" --dump-prompts -)
    [ "$a" = "$b" ]
    [ "$a" != "$c" ]
}

@test "keys come from the default word list: lower-case, 3-10 letters, distinct per prompt" {
    [ -r /usr/share/dict/words ] || skip "no /usr/share/dict/words"
    run ra-probe --pairs 50 --samples 3 --dump-prompts -
    assert_success
    keys=$(grep -E '^[^ #]+:[0-9]+$' <<<"$output" | cut -d: -f1)
    [ "$(wc -l <<<"$keys")" -eq 150 ]
    ! grep -vqE '^[a-z]{3,10}$' <<<"$keys"
    vals=$(grep -E '^[a-z]+:[0-9]+$' <<<"$output" | head -50 | cut -d: -f2 | sort -n | uniq | wc -l)
    [ "$vals" -eq 50 ]
}

@test "exact: a scores stream with the documented header and tensors, accepted by ra-rank" {
    ra-probe -m "$M" "${P[@]}" -o "$BATS_TEST_TMPDIR/s.ra"
    run dump "$BATS_TEST_TMPDIR/s.ra"
    assert_line "kind scores"
    assert_line --regexp '^tensor acc_drop f32 2x4 '
    assert_line --regexp '^tensor logprob_drop f32 2x4 '
    assert_line --regexp '^tensor exact u8 2x4 '
    m=$(meta "$BATS_TEST_TMPDIR/s.ra")
    [[ $m == *'"method":"exact"'* && $m == *'"pairs":3'* && $m == *'"samples":6'* && $m == *'"score":"choice"'* ]]
    [[ $m == *'"exact_heads":8'* && $m == *'"accuracy":'* && $m == *'"num_hidden_layers":2'* ]]
    [[ $m =~ \"id\":\"[0-9a-f]{32}\" ]]
    ra-rank -q --top 3 -o "$BATS_TEST_TMPDIR/p.ra" "$BATS_TEST_TMPDIR/s.ra"
    run "$T/plan-info" "$BATS_TEST_TMPDIR/p.ra"
    assert_line "kept 3"
}

@test "the same seed gives the same scores, byte for byte; stdout works too" {
    ra-probe -m "$M" "${P[@]}" -o "$BATS_TEST_TMPDIR/a.ra"
    ra-probe -m "$M" "${P[@]}" > "$BATS_TEST_TMPDIR/b.ra"
    cmp "$BATS_TEST_TMPDIR/a.ra" "$BATS_TEST_TMPDIR/b.ra"
    ra-probe -m "$M" "${P[@]}" --seed 2 -o "$BATS_TEST_TMPDIR/c.ra"
    ! cmp -s "$BATS_TEST_TMPDIR/a.ra" "$BATS_TEST_TMPDIR/c.ra"
}

@test "--score last-token" {
    ra-probe -m "$M" "${P[@]}" --score last-token -o "$BATS_TEST_TMPDIR/s.ra"
    [[ $(meta "$BATS_TEST_TMPDIR/s.ra") == *'"score":"last-token"'* ]]
}

@test "multi-token candidates (Qwen2-style digits) get their own rows" {
    Q="$BATS_TEST_TMPDIR/qwen"
    "$T/mk-hf" --model qwen2 --vocab 1536 --layers 2 --hidden 32 --heads 4 --kv-heads 2 --tied "$Q" >/dev/null
    cp "$FIX/qwen2-style/"* "$Q/"
    ra-probe -m "$Q" "${P[@]}" --pairs 6 -o "$BATS_TEST_TMPDIR/s.ra"
    m=$(meta "$BATS_TEST_TMPDIR/s.ra")
    rows=$(sed 's/.*"rows":\([0-9]*\).*/\1/' <<<"$m")
    [ "$rows" -gt 6 ]
}

@test "--method attribution: log-prob estimates, no exact heads" {
    ra-probe -m "$M" "${P[@]}" --method attribution -o "$BATS_TEST_TMPDIR/s.ra"
    run dump "$BATS_TEST_TMPDIR/s.ra"
    assert_line --regexp '^tensor attribution f32 2x4 '
    [[ $(meta "$BATS_TEST_TMPDIR/s.ra") == *'"exact_heads":0'* ]]
    run ra-rank -q --top 2 --by logprob --table "$BATS_TEST_TMPDIR/s.ra"
    assert_success
    assert_line --index 1 --regexp '^1 [0-9] [0-9] nan '
}

@test "--method hybrid confirms --confirm heads exactly and reports the rank correlation" {
    ra-probe -m "$M" "${P[@]}" --method hybrid --confirm 3 -o "$BATS_TEST_TMPDIR/s.ra"
    m=$(meta "$BATS_TEST_TMPDIR/s.ra")
    [[ $m == *'"exact_heads":3'* && $m == *'"confirm":3'* && $m == *'"rank_correlation"'* ]]
    run ra-rank -q --top 8 --table "$BATS_TEST_TMPDIR/s.ra"
    # the 3 confirmed heads rank first, with measured accuracy drops
    for i in 1 2 3; do refute_line --index $i --regexp ' nan '; done
    for i in 4 5 6 7 8; do assert_line --index $i --regexp ' nan '; done
}

@test "--compare adds attribution and the rank correlation to an exact run" {
    ra-probe -m "$M" "${P[@]}" --compare -o "$BATS_TEST_TMPDIR/s.ra"
    m=$(meta "$BATS_TEST_TMPDIR/s.ra")
    [[ $m == *'"spearman_logprob":'* && $m == *'"heads":8'* && $m == *'"exact_heads":8'* ]]
}

@test "hybrid and exact agree on the confirmed heads" {
    ra-probe -m "$M" "${P[@]}" -o "$BATS_TEST_TMPDIR/e.ra"
    ra-probe -m "$M" "${P[@]}" --method hybrid --confirm 8 -o "$BATS_TEST_TMPDIR/h.ra"
    a=$(ra-rank -q --top 1 --table "$BATS_TEST_TMPDIR/e.ra")
    b=$(ra-rank -q --top 1 --table "$BATS_TEST_TMPDIR/h.ra")
    [ "$a" = "$b" ]
}

@test "progress and summary on stderr, silenced by -q" {
    run ra-probe -m "$M" --pairs 3 --samples 6 --words "$W" --device cpu -o "$BATS_TEST_TMPDIR/s.ra"
    assert_success
    assert_output --partial "ablations/s"
    assert_output --partial "baseline accuracy"
    run ra-probe -m "$M" "${P[@]}" -o "$BATS_TEST_TMPDIR/s.ra"
    assert_output ""
}

@test "no -m is a usage error" {
    run ra-probe --pairs 3
    assert_failure 64
    assert_output --partial "-m TEACHER"
}

@test "bad flag values are usage errors" {
    for args in "--pairs 101" "--pairs 0" "--samples 0" "--score bogus" "--method bogus" "--device tpu" \
                "--confirm 3" "--method hybrid --compare" "--bogus"; do
        run ra-probe -m "$M" $args
        assert_failure 64
    done
}

@test "more pairs than usable words is bad data naming the word list" {
    run ra-probe -m "$M" --pairs 13 --samples 2 --words "$W" --device cpu -o /dev/null
    assert_failure 65
    assert_output --partial "$W"
    assert_output --partial "12 usable words"
}

@test "a missing word list, teacher or tokenizer.json is a missing input" {
    run ra-probe -m "$M" --words "$BATS_TEST_TMPDIR/nowords" --device cpu -o /dev/null
    assert_failure 66
    run ra-probe -m "$BATS_TEST_TMPDIR/nomodel" "${P[@]}" -o /dev/null
    assert_failure 66
    rm "$M/tokenizer.json"
    run ra-probe -m "$M" "${P[@]}" -o /dev/null
    assert_failure 66
    assert_output --partial "tokenizer"
}

@test "a model stream needs --tokenizer" {
    "$T/mk-hf" --vocab 2048 --layers 2 --hidden 32 --heads 4 --kv-heads 2 --ra "$BATS_TEST_TMPDIR/m.ra" "$BATS_TEST_TMPDIR/d" >/dev/null
    run ra-probe -m "$BATS_TEST_TMPDIR/m.ra" "${P[@]}" -o /dev/null
    assert_failure 66
    assert_output --partial "--tokenizer"
    ra-probe -m "$BATS_TEST_TMPDIR/m.ra" --tokenizer "$FIX/llama3-style" "${P[@]}" -o "$BATS_TEST_TMPDIR/s.ra"
    run dump "$BATS_TEST_TMPDIR/s.ra"
    assert_line "kind scores"
}

@test "a tokenizer larger than the model's vocabulary is refused" {
    S="$BATS_TEST_TMPDIR/small"
    "$T/mk-hf" --vocab 64 --layers 2 --hidden 32 --heads 4 --kv-heads 2 "$S" >/dev/null
    cp "$FIX/llama3-style/"* "$S/"
    run ra-probe -m "$S" "${P[@]}" -o /dev/null
    assert_failure 65
    assert_output --partial "vocab"
}

@test "--device cuda without CUDA is unavailable (69)" {
    if ra-probe --help >/dev/null && [ -e /dev/nvidia0 ]; then skip "a GPU is present"; fi
    run ra-probe -m "$M" --pairs 3 --samples 2 --words "$W" --device cuda -o /dev/null
    assert_failure 69
    assert_output --partial "cuda"
}

@test "--dump-tokens writes the rows and targets it scores" {
    ra-probe -m "$M" "${P[@]}" --dump-tokens "$BATS_TEST_TMPDIR/t.json" -o /dev/null
    run python3 -c "
import json, sys
d = json.load(open('$BATS_TEST_TMPDIR/t.json'))
assert d['mode'] == 'choice' and len(d['items']) == 6, d.keys()
for it in d['items']:
    assert len(it['candidates']) == 3 and 0 <= it['correct'] < 3
    for cand in it['candidates']:
        for r, p, tok in cand:
            assert it['first_row'] <= r < it['first_row'] + it['n_rows'] and p < len(d['rows'][r])
print('ok')"
    assert_success
    assert_output "ok"
}

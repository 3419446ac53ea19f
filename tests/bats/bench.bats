#!/usr/bin/env bats
# The benchmark plumbing (never timings): pipelines/bench.mk names every
# bench script, bench/torch_ref/train.py's shapes and FLOP count, and
# bench/train.sh end to end at the smoke shape on the CPU (its table, its
# "not available" rows when a tool exits 69).

load '/usr/lib/bats/bats-support/load'
load '/usr/lib/bats/bats-assert/load'

setup() {
    ROOT="$BATS_TEST_DIRNAME/../.."
    T="$BATS_TEST_TMPDIR"
    PY="$ROOT/bench/torch_ref/train.py"
    export OMP_NUM_THREADS=1
}

@test "bench.mk: one target per bench script, each writing its bench/results table" {
    run make -s -f "$ROOT/pipelines/bench.mk" list
    assert_success
    # every runnable script of bench/ has a target, and every target's script exists
    for s in "$ROOT"/bench/*.sh; do
        assert_line --regexp " bench/$(basename "$s") +bench/results/[a-z]+\.md$"
    done
    [ "$(wc -l <<<"$output")" -eq "$(ls "$ROOT"/bench/*.sh | wc -l)" ]
    while read -r target script result; do
        [ -x "$ROOT/$script" ]
        grep -q "bench/results/$target.md\|$result" "$ROOT/$script"
    done <<<"$output"
    run make -n -f "$ROOT/pipelines/bench.mk" tokenize
    assert_success
    assert_output --partial "bench/tokenize.sh"
}

@test "train_profile.sh REPORT_ONLY=1: bench/results/profile.md is what the committed run's logs make" {
    cd "$ROOT"
    RESULT="$T/profile.md" REPORT_ONLY=1 OUT=bench/results/profile-run run bench/train_profile.sh
    assert_success
    assert_output --partial "tokens/s after step 2: 38147" # what the H200 run printed from the same log
    # everything but the hand-written reading at the end
    diff "$T/profile.md" <(sed '/^## Reading (added by hand/,$d' bench/results/profile.md)
}

@test "train.py --print: the Llama-3.2-1B config, 10 heads spread over the layers" {
    run python3 "$PY" --print config
    assert_success
    jq -e '.hidden_size == 2048 and .num_hidden_layers == 16 and .num_attention_heads == 32 and
           .num_key_value_heads == 8 and .vocab_size == 128256 and .tie_word_embeddings' <<<"$output" >/dev/null
    run python3 "$PY" --print heads --heads 10
    assert_success
    [ "${#lines[@]}" -eq 10 ]
    # distinct layers in 0..15, heads in 0..31
    [ "$(cut -d' ' -f1 <<<"$output" | sort -u | wc -l)" -eq 10 ]
    awk '$1 < 0 || $1 > 15 || $2 < 0 || $2 > 31 { exit 1 }' <<<"$output"
}

@test "train.py --print flops: stage 3 adds the two LM heads to stage 2; linear in B" {
    f() { python3 "$PY" --print flops --kept 0:0,3:5,3:9 --d-state 16 --seq-len 256 "$@"; }
    s3=$(f --stage 3 --batch 2) s2=$(f --stage 2 --batch 2) s3b=$(f --stage 3 --batch 6)
    s1=$(f --stage 1 --batch 2) s1b=$(f --stage 1 --batch 6)
    # stage 1: the teacher forward and the matrices, all linear in B; less than stage 2's training
    awk -v a="$s1" -v b="$s1b" -v c="$s2" 'BEGIN { r = b / a - 3; exit !(r * r < 1e-12 && a > 0 && a < c) }'
    # the LM head: 2 (teacher forward) + 6 (student forward + backward) FLOPs per weight and token
    awk -v a="$s3" -v b="$s2" 'BEGIN { d = a - b - 8 * 2 * 256 * 128256 * 2048; exit !(d * d < 1e6) }'
    awk -v a="$s3" -v b="$s3b" 'BEGIN { r = b / a - 3; exit !(r * r < 1e-12) }'
    # more kept heads: fewer SSM in_proj weights, more attention weights; the total changes
    [ "$(f --stage 3 --batch 2 --kept 0:0)" != "$s3" ]
    run python3 "$PY" --print flops --seq-len 100
    assert_failure
    assert_output --partial "multiple of the SSD chunk"
}

@test "train.sh SMOKE=1 DEVICE=cpu: the table with ra's rows measured" {
    OUT="$T/out" WORK="$T/work" SMOKE=1 DEVICE=cpu STEPS=2 WARMUP=1 run "$ROOT/bench/train.sh"
    assert_success
    [ -f "$T/out/train.md" ]
    run cat "$T/out/train.md"
    assert_line --regexp '^\| ra-mohawk3 --device cpu \| 3 \(kd\) \| [0-9,]+ \| [0-9.]+% \| '
    assert_line --regexp '^\| ra-mohawk2 --device cpu \| 2 \(all layers\) \| [0-9,]+ \| '
    assert_line --regexp '^\| ra-mohawk1 --device cpu \| 1 \(all layers\) \| [0-9,]+ \| '
    assert_line --regexp '^\| PyTorch \(train.py\) \| 3 \(kd\) \| '
    assert_line --regexp '^\| ra-mohawk3 --device cpu \| 3 \(kd\), teacher-shaped student \| [0-9,]+ \| '
    assert_output --partial "0:0, 1:3 as layer:head"
    # both sides read the same rows: ra's packed stream, back as ids
    [ "$(wc -l <"$T/work/rows.txt")" -eq $(( (1 + 2) * 2 + 4 * 2 )) ]
    [ "$(head -n 1 "$T/work/rows.txt" | wc -w)" -eq 256 ]
    # ra trained WARMUP + STEPS steps
    [ "$(tail -n 1 "$T/out/ra-s3.tsv" | cut -f1)" -eq 3 ]
}

@test "train.sh: a tool exiting 69 gets a 'not available' row and the table is still written" {
    mkdir -p "$T/bin"
    for t in graft rank tok show; do ln -s "$(command -v ra-$t)" "$T/bin/ra-$t"; done
    for t in mohawk1 mohawk2 mohawk3; do
        printf '#!/bin/sh\necho "ra-%s: --device cuda: training runs on the CPU backend only so far" >&2\nexit 69\n' \
            "$t" >"$T/bin/ra-$t"
        chmod +x "$T/bin/ra-$t"
    done
    OUT="$T/out" WORK="$T/work" SMOKE=1 RA_BIN="$T/bin" MK_SCORES="$ROOT/build/tests/mk-scores" \
        run "$ROOT/bench/train.sh"
    assert_success
    run cat "$T/out/train.md"
    assert_line --partial "| ra-mohawk3 --device cuda | 3 (kd) | not available (exit 69"
    assert_line --partial "| ra-mohawk2 --device cuda | 2 (all layers) | not available (exit 69"
    assert_line --partial "| ra-mohawk1 --device cuda | 1 (all layers) | not available (exit 69"
    assert_line --partial "| ra-mohawk3 --device cuda | 3 (kd), teacher-shaped student | not available (exit 69: ra-mohawk3: --device cuda: training runs on the CPU backend only so far) |"
}

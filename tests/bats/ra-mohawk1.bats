#!/usr/bin/env bats
# ra-mohawk1: flags and refusals, the loss falling on a tiny teacher, what
# trains (checkpoint tensors), exact resume after kill -9, the NaN guard and
# atomic output.

load '/usr/lib/bats/bats-support/load'
load '/usr/lib/bats/bats-assert/load'
load train_stop

setup() {
    ROOT="$BATS_TEST_DIRNAME/../.."
    H="$ROOT/build/tests"
    T="$BATS_TEST_TMPDIR"
    # teacher: 3 layers x 4 heads (2 KV groups), head_dim 8, hidden 32, vocab 64
    "$H/mk-hf" --layers 3 --seed 7 "$T/m" >/dev/null
    TID=$("$H/ra-testdata" id "$T/m")
    scores "$TID" "$T/s.ra"
    ra-rank -q --top 4 -o "$T/p.ra" "$T/s.ra" # kept: 0:[1] 1:[0,3] 2:[2]
    ra-graft -q -m "$T/m" -p "$T/p.ra" -o "$T/st.ra"
    # 30 documents of 5..39 tokens (fixed pseudo-random ids below 64)
    docs=()
    x=17
    for d in $(seq 1 30); do
        n=$((5 + (d * 7) % 35)) ids=""
        for i in $(seq 1 $n); do
            x=$(((x * 1103515245 + 12345) % 2147483648))
            ids="$ids${ids:+,}$(((x / 65536) % 64))"
        done
        docs+=("$ids")
    done
    "$H/ra-testdata" tokens -o "$T/tok.ra" "${docs[@]}"
}

scores() {
    printf '0.1 0.5\n0.3 0.2\n0.1 0.5\n0.0 0.9\n0.3 0.7\n0.2 -0.1\n0.0 0.0\n0.5 0.1\n0.0 1.5\n0.1 0.6\n0.2 0.3\n0.0 0.05\n' |
        "$H/mk-scores" -L 3 -H 4 -G 2 -d 8 -i "$1" -o "$2"
}

# common tiny-run flags
RUN=(--seq-len 32 --batch 2 --lr 1e-2 -q)

@test "--help and --version exit 0 on stdout" {
    run ra-mohawk1 --help
    assert_success
    assert_output --partial "Usage: ra-mohawk1 -m TEACHER -s STUDENT -d TOKENS"
    assert_output --partial "--layers SPEC"
    assert_output --partial "--ckpt-dir DIR"
    assert_output --partial "1e-4"
    run ra-mohawk1 --version
    assert_success
    assert_output --regexp '^ra-mohawk1 \(ra\) [0-9]'
}

@test "usage errors exit 64" {
    run ra-mohawk1 -s "$T/st.ra" -d "$T/tok.ra" -o "$T/o.ra"
    assert_failure 64
    assert_output --partial "need -m TEACHER and -s STUDENT"
    run ra-mohawk1 -m "$T/m" -s "$T/st.ra" -o "$T/o.ra"
    assert_failure 64
    run ra-mohawk1 -m "$T/m" -s "$T/st.ra" -d "$T/tok.ra" --bogus -o "$T/o.ra"
    assert_failure 64
    assert_output --partial "unknown option '--bogus'"
    run ra-mohawk1 -m "$T/m" -s "$T/st.ra" -d "$T/tok.ra" --layers 1-x -o "$T/o.ra"
    assert_failure 64
    assert_output --partial "--layers"
    run ra-mohawk1 -m "$T/m" -s "$T/st.ra" -d "$T/tok.ra" --layers 0,3 -o "$T/o.ra"
    assert_failure 64
    assert_output --partial "the model has layers 0-2"
    run ra-mohawk1 -m "$T/m" -s "$T/st.ra" -d "$T/tok.ra" --dtype i32 -o "$T/o.ra"
    assert_failure 64
    run ra-mohawk1 -m "$T/m" -s "$T/st.ra" -d "$T/tok.ra" --lr -1 -o "$T/o.ra"
    assert_failure 64
    run ra-mohawk1 -m "$T/m" -s "$T/st.ra" -d "$T/tok.ra" --layers
    assert_failure 64
    assert_output --partial "missing value"
    [ ! -e "$T/o.ra" ]
}

@test "missing inputs exit 66" {
    run ra-mohawk1 -m "$T/nope" -s "$T/st.ra" -d "$T/tok.ra" -o "$T/o.ra"
    assert_failure 66
    run ra-mohawk1 -m "$T/m" -s "$T/st.ra" -d "$T/nope.ra" "${RUN[@]}" --steps 1 -o "$T/o.ra"
    assert_failure 66
    [ ! -e "$T/o.ra" ]
}

@test "--device cuda without CUDA or a GPU exits 69 with a clear message" {
    if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then skip "a GPU is present"; fi
    run ra-mohawk1 -m "$T/m" -s "$T/st.ra" -d "$T/tok.ra" "${RUN[@]}" --steps 1 --device cuda -o "$T/o.ra"
    assert_failure 69
    assert_output --partial "--device cuda"
    assert_output --partial "use --device cpu"
    [ ! -e "$T/o.ra" ]
}

@test "teacher/student mismatches exit 65" {
    # the teacher as the student
    run ra-mohawk1 -m "$T/m" -s "$T/m" -d "$T/tok.ra" -o "$T/o.ra"
    assert_failure 65
    assert_output --partial "not a hybrid student"
    # the student as the teacher
    run ra-mohawk1 -m "$T/st.ra" -s "$T/st.ra" -d "$T/tok.ra" -o "$T/o.ra"
    assert_failure 65
    # same architecture, other weights: the student records another teacher
    "$H/mk-hf" --layers 3 --seed 8 "$T/m2" >/dev/null
    run ra-mohawk1 -m "$T/m2" -s "$T/st.ra" -d "$T/tok.ra" -o "$T/o.ra"
    assert_failure 65
    assert_output --partial "meta.hybrid.teacher"
    # another architecture
    "$H/mk-hf" --layers 2 --seed 7 "$T/m3" >/dev/null
    run ra-mohawk1 -m "$T/m3" -s "$T/st.ra" -d "$T/tok.ra" -o "$T/o.ra"
    assert_failure 65
    assert_output --partial "not a student of"
    [ ! -e "$T/o.ra" ]
}

@test "nothing to train (every head kept) and a too long --seq-len exit 64" {
    ra-rank -q --top 12 -o "$T/all.ra" "$T/s.ra"
    ra-graft -q -m "$T/m" -p "$T/all.ra" -o "$T/stall.ra"
    run ra-mohawk1 -m "$T/m" -s "$T/stall.ra" -d "$T/tok.ra" -o "$T/o.ra"
    assert_failure 64
    assert_output --partial "has an SSM head (nothing to train)"
    run ra-mohawk1 -m "$T/m" -s "$T/st.ra" -d "$T/tok.ra" --seq-len 4096 --max-matrix-gb 0.01 -o "$T/o.ra"
    assert_failure 64
    assert_output --partial "use a shorter --seq-len"
    [ ! -e "$T/o.ra" ]
}

@test "the loss falls on a tiny run; the output is a student of the same shape" {
    run ra-mohawk1 -m "$T/m" -s "$T/st.ra" -d "$T/tok.ra" "${RUN[@]}" --steps 20 --log "$T/log.tsv" -o "$T/o.ra"
    assert_success
    head -1 "$T/log.tsv" | grep -q $'^step\ttokens\tloss\tlr'
    [ "$(tail -n +2 "$T/log.tsv" | wc -l)" -eq 20 ]
    first=$(sed -n 2p "$T/log.tsv" | cut -f3)
    last=$(tail -1 "$T/log.tsv" | cut -f3)
    awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < 0.7 * a) }'
    # same tensors, shapes and meta as the input student
    diff <("$H/ra-testdata" describe "$T/st.ra" | grep -v '^id ') <("$H/ra-testdata" describe "$T/o.ra" | grep -v '^id ')
    # and it runs through the other tools
    run ra-eval -m "$T/o.ra" --task logits -d "$T/tok.ra" --device cpu -q -o "$T/logits.ra"
    assert_success
}

@test "what trains: the B, C, A_log, conv B/C and D slices of the chosen layers only" {
    run ra-mohawk1 -m "$T/m" -s "$T/st.ra" -d "$T/tok.ra" "${RUN[@]}" --steps 2 --layers 1-2 --ckpt-dir "$T/ck" -o "$T/o.ra"
    assert_success
    run "$H/ra-testdata" describe "$T/ck/ckpt-000000000002.ra"
    assert_success
    # layer 1: 2 SSM heads, N 8 (2 groups): B,C rows 32, A_log rows 2
    assert_line "tensor param/model.layers.1.mixer.in_proj.weight[BC] f32 32x32"
    assert_line "tensor param/model.layers.1.mixer.in_proj.weight[A_log] f32 2x32"
    assert_line "tensor param/model.layers.1.mixer.conv1d.weight[BC] f32 32x4"
    assert_line "tensor param/model.layers.1.mixer.conv1d.bias[BC] f32 32"
    assert_line "tensor param/model.layers.1.mixer.D f32 2"
    assert_line --partial "tensor param/model.layers.2.mixer.D"
    refute_line --partial "model.layers.0."
    refute_line --partial "z_bias"
    refute_line --regexp "^tensor .*norm"
    [ "$(grep -c '^tensor param/' <<<"$output")" -eq 10 ]
}

@test "kill -9 mid-run, then --resume: bit-identical output" {
    A=(-m "$T/m" -s "$T/st.ra" -d "$T/tok.ra" "${RUN[@]}" --steps 30 --ckpt-every 5)
    ra-mohawk1 "${A[@]}" --ckpt-dir "$T/a" -o "$T/full.ra"
    # stopped after step 12, two steps past its last checkpoint, and killed there
    stop_and_kill 12 ra-mohawk1 "${A[@]}" --ckpt-dir "$T/b" -o "$T/resumed.ra"
    [ -e "$T/b/ckpt-000000000010.ra" ]
    [ ! -e "$T/b/ckpt-000000000015.ra" ]
    [ ! -e "$T/resumed.ra" ] # killed before the end: no output, not even a partial one
    run ra-mohawk1 "${A[@]}" --ckpt-dir "$T/b" --resume -o "$T/resumed.ra"
    assert_success
    cmp "$T/full.ra" "$T/resumed.ra"
}

@test "a checkpoint of another run is refused on --resume" {
    ra-mohawk1 -m "$T/m" -s "$T/st.ra" -d "$T/tok.ra" "${RUN[@]}" --steps 2 --ckpt-dir "$T/c" -o "$T/o.ra"
    run ra-mohawk1 -m "$T/m" -s "$T/st.ra" -d "$T/tok.ra" "${RUN[@]}" --steps 4 --layers 2 --ckpt-dir "$T/c" --resume \
        -o "$T/o2.ra"
    assert_failure 65
    [ ! -e "$T/o2.ra" ]
}

@test "NaN guard (RA_TEST_NAN_AT_STEP): exit 70, last good checkpoint kept, -o untouched" {
    echo "previous" >"$T/o.ra"
    RA_TEST_NAN_AT_STEP=3 run ra-mohawk1 -m "$T/m" -s "$T/st.ra" -d "$T/tok.ra" "${RUN[@]}" --steps 6 \
        --ckpt-every 1 --ckpt-dir "$T/n" -o "$T/o.ra"
    assert_failure 70
    assert_output --partial "step 3"
    [ "$(cat "$T/o.ra")" = "previous" ]
    [ -e "$T/n/ckpt-000000000002.ra" ]
    [ ! -e "$T/n/ckpt-000000000003.ra" ]
    [ -z "$(ls -A "$T" | grep '\.tmp\.')" ]
}

@test "held-out evaluation adds eval_loss to the log" {
    run ra-mohawk1 -m "$T/m" -s "$T/st.ra" -d "$T/tok.ra" "${RUN[@]}" --steps 4 --eval-every 2 --eval-batches 1 \
        --log "$T/log.tsv" -o "$T/o.ra"
    assert_success
    head -1 "$T/log.tsv" | grep -q 'eval_loss$'
    [ -n "$(sed -n 3p "$T/log.tsv" | cut -f8)" ]
}

@test "a parallel-layout student: every query head has an SSM head, the loss falls" {
    ra-graft -q -m "$T/m" -p "$T/p.ra" --layout parallel -o "$T/par.ra"
    run ra-mohawk1 -m "$T/m" -s "$T/par.ra" -d "$T/tok.ra" "${RUN[@]}" --steps 12 --layers 0 --ckpt-dir "$T/pc" \
        --log "$T/log.tsv" -o "$T/o.ra"
    assert_success
    run "$H/ra-testdata" describe "$T/pc/ckpt-000000000012.ra"
    assert_line "tensor param/model.layers.0.mixer.D f32 4"
    refute_line --partial "model.layers.1."
    first=$(sed -n 2p "$T/log.tsv" | cut -f3)
    last=$(tail -1 "$T/log.tsv" | cut -f3)
    awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < 0.9 * a) }'
}

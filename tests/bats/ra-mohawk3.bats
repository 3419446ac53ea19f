#!/usr/bin/env bats
# ra-mohawk3: flags and errors, teacher/student checks, --loss ce lowers the
# loss of a random-init model, kd lowers the KL to the teacher, --freeze,
# provenance, resume exactness after kill -9, the NaN guard, atomic -o.

load '/usr/lib/bats/bats-support/load'
load '/usr/lib/bats/bats-assert/load'
load train_stop

setup() {
    ROOT="$BATS_TEST_DIRNAME/../.."
    H="$ROOT/build/tests"
    T="$BATS_TEST_TMPDIR"
    # a config: 2 layers x 4 heads (2 KV groups), head_dim 8, hidden 32, vocab 64
    "$H/mk-hf" --layers 2 --seed 3 "$T/m" >/dev/null
    ra-graft -q --random-init "$T/m" --seed 1 -o "$T/r.ra"
    # 30 documents of 13 consecutive ids (a learnable pattern), 390 tokens
    local docs=() i s
    for i in $(seq 1 30); do s=$((i % 7 + 1)); docs+=("$(seq -s, $s $((s + 12)))"); done
    "$H/ra-testdata" tokens -o "$T/tok.ra" "${docs[@]}"
    TRAIN=(--seq-len 16 --batch 4 --lr 3e-3 -q)
    # tiny models: OpenMP threads only add contention on a loaded machine
    export OMP_NUM_THREADS=1
}

# a student of teacher $1 keeping 2 of its 8 heads, into $2
student() {
    local tid
    tid=$("$H/ra-testdata" id "$1")
    printf '0.1 0.5\n0.3 0.2\n0.1 0.5\n0.0 0.9\n0.3 0.7\n0.2 -0.1\n0.0 0.0\n0.5 0.1\n' |
        "$H/mk-scores" -L 2 -H 4 -G 2 -d 8 -i "$tid" -o "$T/sc.ra"
    ra-rank -q --top 2 -o "$T/plan.ra" "$T/sc.ra"
    ra-graft -q -m "$1" -p "$T/plan.ra" --d-state 4 -o "$2"
}

# column $2 (by header name) of row $3 (1-based data row; "last" = the last) of TSV $1
col() {
    awk -F'\t' -v c="$2" -v r="$3" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == c) k = i; next }
        { v[NR - 1] = $k } END { print (r == "last" ? v[NR - 1] : v[r]) }' "$1"
}

@test "--help and --version exit 0 on stdout" {
    run ra-mohawk3 --help
    assert_success
    assert_output --partial "Usage: ra-mohawk3 -m TEACHER -s STUDENT -d TOKENS"
    assert_output --partial "--temperature T"
    assert_output --partial "--ckpt-dir DIR"
    run ra-mohawk3 --version
    assert_success
    assert_output --regexp '^ra-mohawk3 \(ra\) [0-9]'
}

@test "usage errors exit 64 naming the flag" {
    run ra-mohawk3 -s "$T/r.ra" -d "$T/tok.ra" -o "$T/x.ra"
    assert_failure 64
    assert_output --partial "--loss kd needs -m TEACHER"
    run ra-mohawk3 --loss ce -d "$T/tok.ra" -o "$T/x.ra"
    assert_failure 64
    assert_output --partial "need -s STUDENT"
    run ra-mohawk3 --loss ce -m "$T/r.ra" -s "$T/r.ra" -d "$T/tok.ra" -o "$T/x.ra"
    assert_failure 64
    assert_output --partial "takes no -m TEACHER"
    run ra-mohawk3 --loss mse -s "$T/r.ra" -d "$T/tok.ra" -o "$T/x.ra"
    assert_failure 64
    assert_output --partial "--loss: 'mse', expected kd or ce"
    for t in 0 -1 abc nan; do
        run ra-mohawk3 -m "$T/r.ra" -s "$T/r.ra" -d "$T/tok.ra" --temperature "$t" -o "$T/x.ra"
        assert_failure 64
        assert_output --partial "--temperature"
    done
    run ra-mohawk3 --loss ce --temperature 2 -s "$T/r.ra" -d "$T/tok.ra" -o "$T/x.ra"
    assert_failure 64
    run ra-mohawk3 --loss ce -s "$T/r.ra" -d "$T/tok.ra" --dtype f8 -o "$T/x.ra"
    assert_failure 64
    run ra-mohawk3 --loss ce -s "$T/r.ra" -d "$T/tok.ra" --bogus -o "$T/x.ra"
    assert_failure 64
    assert_output --partial "unknown option '--bogus'"
    run ra-mohawk3 --loss ce -s "$T/r.ra" -d "$T/tok.ra" --freeze nosuchparam "${TRAIN[@]}" -o "$T/x.ra"
    assert_failure 64
    assert_output --partial "nosuchparam"
}

@test "--device cuda without CUDA or a GPU exits 69 with a clear message" {
    if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then skip "a GPU is present"; fi
    run ra-mohawk3 --loss ce -s "$T/r.ra" -d "$T/tok.ra" "${TRAIN[@]}" --steps 1 --device cuda -o "$T/x.ra"
    assert_failure 69
    assert_output --partial "--device cuda"
    assert_output --partial "use --device cpu"
    [ ! -e "$T/x.ra" ]
}

@test "missing inputs exit 66, bad data 65" {
    run ra-mohawk3 --loss ce -s "$T/nothere.ra" -d "$T/tok.ra" "${TRAIN[@]}" -o "$T/x.ra"
    assert_failure 66
    run ra-mohawk3 --loss ce -s "$T/r.ra" -d "$T/nothere.ra" "${TRAIN[@]}" -o "$T/x.ra"
    assert_failure 66
    "$H/ra-testdata" tokens -o "$T/big.ra" "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,64,1,2,3,4,5,6,7,8,9"
    run ra-mohawk3 --loss ce -s "$T/r.ra" -d "$T/big.ra" "${TRAIN[@]}" -o "$T/x.ra"
    assert_failure 65
    assert_output --partial "64"
    head -c 200 "$T/r.ra" > "$T/cut.ra"
    run ra-mohawk3 --loss ce -s "$T/cut.ra" -d "$T/tok.ra" "${TRAIN[@]}" -o "$T/x.ra"
    assert_failure 65
    [ ! -e "$T/x.ra" ]
}

@test "teacher/student mismatches are refused with exit 65" {
    student "$T/r.ra" "$T/st.ra"
    # vocabulary
    "$H/mk-hf" --layers 2 --vocab 80 --seed 3 "$T/m80" >/dev/null
    run ra-mohawk3 -m "$T/m80" -s "$T/st.ra" -d "$T/tok.ra" "${TRAIN[@]}" -o "$T/x.ra"
    assert_failure 65
    assert_output --partial "vocabulary of 64 tokens"
    # hidden size
    "$H/mk-hf" --layers 2 --hidden 48 --heads 4 --seed 3 "$T/m48" >/dev/null
    run ra-mohawk3 -m "$T/m48" -s "$T/st.ra" -d "$T/tok.ra" "${TRAIN[@]}" -o "$T/x.ra"
    assert_failure 65
    assert_output --partial "hidden size 32"
    # same shape, but not the teacher the student was grafted from
    ra-graft -q --random-init "$T/m" --seed 2 -o "$T/r2.ra"
    run ra-mohawk3 -m "$T/r2.ra" -s "$T/st.ra" -d "$T/tok.ra" "${TRAIN[@]}" -o "$T/x.ra"
    assert_failure 65
    assert_output --partial "meta.hybrid.teacher is $("$H/ra-testdata" id "$T/r.ra")"
    # a hybrid as teacher
    run ra-mohawk3 -m "$T/st.ra" -s "$T/st.ra" -d "$T/tok.ra" "${TRAIN[@]}" -o "$T/x.ra"
    assert_failure 65
    assert_output --partial "-m takes the teacher"
    [ ! -e "$T/x.ra" ]
}

@test "--loss ce lowers the held-out loss of a random-init model; output and provenance" {
    run ra-mohawk3 --loss ce -s "$T/r.ra" -d "$T/tok.ra" "${TRAIN[@]}" --steps 60 --eval-every 10 \
        --eval-batches 2 --log "$T/log.tsv" -o "$T/ce.ra"
    assert_success
    first=$(col "$T/log.tsv" eval_loss 10) last=$(col "$T/log.tsv" eval_loss last)
    echo "held-out ce: step 10 $first, step 60 $last"
    # random init: ~ln 64 = 4.16; the pattern is learnable
    awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < 0.6 * a) }'
    [ "$(col "$T/log.tsv" step last)" = 60 ]
    run "$H/ra-testdata" describe "$T/ce.ra"
    assert_line "kind model"
    assert_line "tensor lm_head.weight f32 64x32"
    ra-show -q --json "$T/ce.ra" > "$T/ce.json"
    jq -e --arg s "$("$H/ra-testdata" id "$T/r.ra")" --arg d "$(ra-show -q --id "$T/tok.ra")" '
        .provenance.tool == "ra-mohawk3" and .provenance.inputs.student == $s and .provenance.inputs.data == $d
        and .provenance.inputs.teacher == null and .provenance.parameters.loss == "ce"
        and .provenance.result.steps == 60' "$T/ce.json"
    # the trained model changed and loads in the other tools
    ! cmp -s "$T/r.ra" "$T/ce.ra"
    run ra-eval -q -m "$T/ce.ra" --task logits -d "$T/tok.ra" --device cpu -o "$T/ev.ra"
    assert_success
    # stdout works and is the same model
    ra-mohawk3 --loss ce -s "$T/r.ra" -d "$T/tok.ra" "${TRAIN[@]}" --steps 60 --eval-every 10 --eval-batches 2 > "$T/ce2.ra"
    cmp "$T/ce.ra" "$T/ce2.ra"
}

@test "kd lowers the KL to the teacher (held-out kd loss at fixed teacher entropy)" {
    ra-mohawk3 --loss ce -s "$T/r.ra" -d "$T/tok.ra" "${TRAIN[@]}" --steps 60 -o "$T/teacher.ra"
    student "$T/teacher.ra" "$T/st.ra"
    run ra-mohawk3 -m "$T/teacher.ra" -s "$T/st.ra" -d "$T/tok.ra" "${TRAIN[@]}" --steps 40 --temperature 1.5 \
        --eval-every 1 --eval-batches 2 --log "$T/kd.tsv" -o "$T/st3.ra"
    assert_success
    first=$(col "$T/kd.tsv" eval_loss 1) last=$(col "$T/kd.tsv" eval_loss last)
    echo "held-out kd: step 1 $first, step 40 $last"
    # same held-out rows, same teacher: the drop is the KL's drop
    awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a - 0.05) }'
    ra-show -q --json "$T/st3.ra" > "$T/st3.json"
    jq -e --arg t "$("$H/ra-testdata" id "$T/teacher.ra")" --arg s "$("$H/ra-testdata" id "$T/st.ra")" '
        .provenance.inputs.teacher == $t and .provenance.inputs.student == $s
        and .provenance.parameters.loss == "kd" and .provenance.parameters.temperature == 1.5
        and .meta.hybrid.teacher == $t' "$T/st3.json"
}

@test "--freeze keeps the named parameters bit for bit" {
    student "$T/r.ra" "$T/st.ra"
    ra-mohawk3 -m "$T/r.ra" -s "$T/st.ra" -d "$T/tok.ra" "${TRAIN[@]}" --steps 5 --freeze mlp,embed -o "$T/f.ra"
    ra-show -q --json --values "$T/st.ra" > "$T/a.json"
    ra-show -q --json --values "$T/f.ra" > "$T/b.json"
    vals() { jq -c --arg n "$2" '.tensors[] | select(.name == $n) | .values' "$1"; }
    for n in model.embed_tokens.weight model.layers.0.mlp.up_proj.weight model.layers.1.mlp.down_proj.weight; do
        [ "$(vals "$T/a.json" "$n")" = "$(vals "$T/b.json" "$n")" ]
    done
    for n in model.norm.weight lm_head.weight model.layers.0.mixer.in_proj.weight; do
        [ "$(vals "$T/a.json" "$n")" != "$(vals "$T/b.json" "$n")" ]
    done
}

@test "resume after kill -9 ends with the same bits as an uninterrupted run" {
    student "$T/r.ra" "$T/st.ra"
    args=(-m "$T/r.ra" -s "$T/st.ra" -d "$T/tok.ra" "${TRAIN[@]}" --steps 50 --grad-accum 2)
    ra-mohawk3 "${args[@]}" -o "$T/full.ra"
    # stopped after step 42, two steps past its last checkpoint, and killed there
    stop_and_kill 42 ra-mohawk3 "${args[@]}" --ckpt-dir "$T/ck" --ckpt-every 20 --keep 0 -o "$T/out.ra"
    [ -e "$T/ck/ckpt-000000000040.ra" ]
    [ ! -e "$T/ck/ckpt-000000000050.ra" ]
    [ ! -e "$T/out.ra" ]
    ra-mohawk3 "${args[@]}" --ckpt-dir "$T/ck" --ckpt-every 20 --keep 0 --resume -o "$T/out.ra"
    cmp "$T/full.ra" "$T/out.ra"
}

@test "the NaN guard stops the run (exit 70), writes nothing, and resume from the last good checkpoint is exact" {
    args=(--loss ce -s "$T/r.ra" -d "$T/tok.ra" "${TRAIN[@]}" --steps 12)
    ra-mohawk3 "${args[@]}" -o "$T/full.ra"
    echo "old contents" > "$T/out.ra"
    RA_TEST_NAN_AT_STEP=7 run ra-mohawk3 "${args[@]}" --ckpt-dir "$T/ck" --ckpt-every 5 -o "$T/out.ra"
    assert_failure 70
    assert_output --partial "step 7"
    assert_output --partial "ckpt-000000000005.ra"
    # atomic -o: the old file is untouched
    [ "$(cat "$T/out.ra")" = "old contents" ]
    run ra-mohawk3 "${args[@]}" --ckpt-dir "$T/ck" --ckpt-every 5 --resume -o "$T/out.ra"
    assert_success
    cmp "$T/full.ra" "$T/out.ra"
    # a checkpoint of another run is refused
    run ra-mohawk3 "${args[@]}" --temperature 1 --lr 1e-3 --ckpt-dir "$T/ck" --ckpt-every 5 --resume -o "$T/o2.ra"
    assert_failure 65
    assert_output --partial "lr"
}

@test "--freeze with a NaN stop and --resume: still bit-exact (frozen parameters carry no gradients)" {
    student "$T/r.ra" "$T/st.ra"
    args=(-m "$T/r.ra" -s "$T/st.ra" -d "$T/tok.ra" "${TRAIN[@]}" --steps 12 --freeze mlp,embed,lm_head)
    ra-mohawk3 "${args[@]}" -o "$T/full.ra"
    RA_TEST_NAN_AT_STEP=7 run ra-mohawk3 "${args[@]}" --ckpt-dir "$T/ck" --ckpt-every 5 -o "$T/out.ra"
    assert_failure 70
    [ ! -e "$T/out.ra" ]
    ra-mohawk3 "${args[@]}" --ckpt-dir "$T/ck" --ckpt-every 5 --resume -o "$T/out.ra"
    cmp "$T/full.ra" "$T/out.ra"
}

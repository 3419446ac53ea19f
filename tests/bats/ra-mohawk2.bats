#!/usr/bin/env bats
# ra-mohawk2: stage 2 on a tiny teacher (3 layers, hidden 32) and its routed
# student; flags, exit codes, messages, the per-layer parts merged, exact
# resume after kill -9, the NaN guard, atomic output, the TSV log.

load '/usr/lib/bats/bats-support/load'
load '/usr/lib/bats/bats-assert/load'
load train_stop

setup_file() {
    export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
    H="$BATS_TEST_DIRNAME/../../build/tests"
    F="$BATS_FILE_TMPDIR"
    "$H/mk-hf" --layers 3 --seed 7 "$F/m" >/dev/null
    "$H/mk-hf" --layers 3 --seed 8 "$F/other" >/dev/null
    "$H/mk-hf" --layers 2 --seed 7 "$F/small" >/dev/null
    tid=$("$H/ra-testdata" id "$F/m")
    printf '0.1 0.5\n0.3 0.2\n0.1 0.5\n0.0 0.9\n0.3 0.7\n0.2 -0.1\n0.0 0.0\n0.5 0.1\n0.0 1.5\n0.1 0.6\n0.2 0.3\n0.0 0.05\n' |
        "$H/mk-scores" -L 3 -H 4 -G 2 -d 8 -i "$tid" -o "$F/s.ra"
    ra-rank -q --top 4 -o "$F/p.ra" "$F/s.ra"
    ra-graft -q -m "$F/m" -p "$F/p.ra" -o "$F/st.ra"
    # 60 documents of 3..40 ids below the vocabulary (64), deterministic
    awk 'BEGIN { srand(1); for (d = 0; d < 60; d++) { n = 3 + int(rand() * 38); s = "";
         for (i = 0; i < n; i++) s = s (i ? " " : "") int(rand() * 64); print s } }' >"$F/ids.txt"
    ra-tok --ids -q -o "$F/tok.ra" "$F/ids.txt"
    awk 'BEGIN { srand(2); for (d = 0; d < 10; d++) { s = ""; for (i = 0; i < 20; i++) s = s (i ? " " : "") int(rand() * 64); print s } }' |
        ra-tok --ids -q -o "$F/held.ra"
    echo "5 900 3" | ra-tok --ids -q -o "$F/bigid.ra"
}

setup() {
    export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
    H="$BATS_TEST_DIRNAME/../../build/tests"
    F="$BATS_FILE_TMPDIR"
    T="$BATS_TEST_TMPDIR"
    C=(-m "$F/m" -s "$F/st.ra" -d "$F/tok.ra" --batch 2 --seq-len 16 --lr 1e-2)
}

tensors() { ra-show --json --values "$1" | jq -c '[.tensors[] | {name, dtype, shape, values}]'; }
names() { ra-show --json "$1" | jq -r '.tensors[].name'; }

@test "--help and --version exit 0 on stdout" {
    run ra-mohawk2 --help
    assert_success
    assert_output --partial "Usage: ra-mohawk2 -m TEACHER -s STUDENT -d TOKENS"
    assert_output --partial "--grad-accum K"
    assert_output --partial "--ckpt-dir DIR"
    run ra-mohawk2 --version
    assert_success
    assert_output --regexp '^ra-mohawk2 \(ra\) [0-9]'
}

@test "trains the listed layers and writes only them, with the student's meta and provenance" {
    run ra-mohawk2 "${C[@]}" --steps 6 --layers 1 -o "$T/p1.ra"
    assert_success
    assert_output --partial "ra-mohawk2: step 6/6"
    assert_output --partial "wrote layers 1 of 3"
    ra-show -q --verify "$T/p1.ra"
    [ -z "$(names "$T/p1.ra" | grep -v '^model\.layers\.1\.')" ]
    [ "$(names "$T/p1.ra" | wc -l)" -gt 5 ]
    names "$T/p1.ra" | grep -qx 'model.layers.1.mlp.up_proj.weight'
    m1=$(ra-show --json "$T/p1.ra" | jq -c .meta)
    ms=$(ra-show --json "$F/st.ra" | jq -c .meta)
    [ "$m1" = "$ms" ]
    prov=$(ra-show --json "$T/p1.ra" | jq -c .provenance)
    [ "$(jq -r .tool <<<"$prov")" = ra-mohawk2 ]
    [ "$(jq -r .inputs.student <<<"$prov")" = "$(ra-show --id "$F/st.ra")" ]
    [ "$(jq -r .inputs.teacher <<<"$prov")" = "$(ra-show --id "$F/m")" ]
    [ "$(jq -r .inputs.tokens <<<"$prov")" = "$(ra-show --id "$F/tok.ra")" ]
    [ "$(jq -c .parameters.layers <<<"$prov")" = "[1]" ]
    [ "$(jq -r .parameters.train <<<"$prov")" = block ]
    # the layer changed, and the trained weights differ from the student's
    a=$(ra-show --json --values "$T/p1.ra" | jq -c '.tensors[] | select(.name == "model.layers.1.mixer.D") | .values')
    b=$(ra-show --json --values "$F/st.ra" | jq -c '.tensors[] | select(.name == "model.layers.1.mixer.D") | .values')
    [ "$a" != "$b" ]
}

@test "per-layer parts merged equal the all-layers run (tensors bit for bit)" {
    ra-mohawk2 -q "${C[@]}" --steps 5 -o "$T/all.ra"
    ra-mohawk2 -q "${C[@]}" --steps 5 --layers 0-2 -o "$T/all2.ra"
    cmp "$T/all.ra" "$T/all2.ra" # no --layers means all
    for l in 0 1 2; do ra-mohawk2 -q "${C[@]}" --steps 5 --layers $l -o "$T/p$l.ra"; done
    ra-merge -q -o "$T/mA.ra" "$F/st.ra" "$T/all.ra"
    ra-merge -q -o "$T/mB.ra" "$F/st.ra" "$T/p2.ra" "$T/p0.ra" "$T/p1.ra"
    [ "$(tensors "$T/mA.ra")" = "$(tensors "$T/mB.ra")" ]
    [ "$(tensors "$T/mA.ra")" != "$(tensors "$F/st.ra")" ]
    # the merged student loads and trains further (it is a whole model)
    run ra-mohawk2 -q -m "$F/m" -s "$T/mA.ra" -d "$F/tok.ra" --batch 2 --seq-len 16 --steps 1 -o "$T/again.ra"
    assert_success
}

@test "--layers lists: 1,2 and 2,1 are the same; bad lists exit 64" {
    ra-mohawk2 -q "${C[@]}" --steps 2 --layers 1,2 -o "$T/a.ra"
    ra-mohawk2 -q "${C[@]}" --steps 2 --layers 2,1 -o "$T/b.ra"
    cmp "$T/a.ra" "$T/b.ra"
    for bad in 3 2-1 1,,2 x 0-3 1,1 ""; do
        run ra-mohawk2 "${C[@]}" --steps 2 --layers "$bad" -o "$T/c.ra"
        assert_failure 64
        assert_output --partial "--layers"
    done
    [ ! -e "$T/c.ra" ]
}

@test "--train mixer keeps the norms and MLP; --train other exits 64" {
    ra-mohawk2 -q "${C[@]}" --steps 4 --layers 0 --train mixer -o "$T/mx.ra"
    pick() { ra-show --json --values "$1" | jq -c --arg n "$2" '.tensors[] | select(.name == $n) | .values'; }
    [ "$(pick "$T/mx.ra" model.layers.0.mlp.down_proj.weight)" = "$(pick "$F/st.ra" model.layers.0.mlp.down_proj.weight)" ]
    [ "$(pick "$T/mx.ra" model.layers.0.input_layernorm.weight)" = "$(pick "$F/st.ra" model.layers.0.input_layernorm.weight)" ]
    [ "$(pick "$T/mx.ra" model.layers.0.mixer.in_proj.weight)" != "$(pick "$F/st.ra" model.layers.0.mixer.in_proj.weight)" ]
    run ra-mohawk2 "${C[@]}" --train all -o "$T/x.ra"
    assert_failure 64
    assert_output --partial "--train: 'all', expected block or mixer"
}

@test "usage errors exit 64" {
    run ra-mohawk2 -s "$F/st.ra" -d "$F/tok.ra" -o "$T/x.ra"
    assert_failure 64
    assert_output --partial "need -m TEACHER and -s STUDENT"
    run ra-mohawk2 -m "$F/m" -s "$F/st.ra" -o "$T/x.ra"
    assert_failure 64
    assert_output --partial "need -d TOKENS"
    run ra-mohawk2 "${C[@]}" --steps 2 --tokens 100 -o "$T/x.ra"
    assert_failure 64
    run ra-mohawk2 "${C[@]}" --resume -o "$T/x.ra"
    assert_failure 64
    assert_output --partial "--resume needs --ckpt-dir"
    run ra-mohawk2 "${C[@]}" --batch 0 -o "$T/x.ra"
    assert_failure 64
    run ra-mohawk2 "${C[@]}" --lr -1 -o "$T/x.ra"
    assert_failure 64
    run ra-mohawk2 "${C[@]}" --warmup 0.7 --decay 0.5 -o "$T/x.ra"
    assert_failure 64
    run ra-mohawk2 "${C[@]}" --bogus 1 -o "$T/x.ra"
    assert_failure 64
    assert_output --partial "unknown option '--bogus'"
    run ra-mohawk2 "${C[@]}" --steps
    assert_failure 64
    assert_output --partial "--steps: missing value"
    run ra-mohawk2 "${C[@]}" --steps 2 --freeze nomatch -o "$T/x.ra"
    assert_failure 64
    run ra-mohawk2 "${C[@]}" --device tpu -o "$T/x.ra"
    assert_failure 64
    [ ! -e "$T/x.ra" ]
}

@test "--device cuda without CUDA or a GPU exits 69 with a clear message" {
    if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then skip "a GPU is present"; fi
    run ra-mohawk2 "${C[@]}" --device cuda -o "$T/x.ra"
    assert_failure 69
    assert_output --partial "--device cuda"
    assert_output --partial "use --device cpu"
    [ ! -e "$T/x.ra" ]
}

@test "missing inputs exit 66" {
    run ra-mohawk2 -m "$T/none" -s "$F/st.ra" -d "$F/tok.ra" -o "$T/x.ra"
    assert_failure 66
    run ra-mohawk2 -m "$F/m" -s "$T/none.ra" -d "$F/tok.ra" -o "$T/x.ra"
    assert_failure 66
    run ra-mohawk2 -m "$F/m" -s "$F/st.ra" -d "$T/none.ra" -o "$T/x.ra"
    assert_failure 66
    assert_output --partial "none.ra"
}

@test "a teacher that is not the student's is refused (exit 65)" {
    run ra-mohawk2 -m "$F/other" -s "$F/st.ra" -d "$F/tok.ra" --steps 1 -o "$T/x.ra"
    assert_failure 65
    assert_output --partial "meta.hybrid.teacher"
    run ra-mohawk2 -m "$F/small" -s "$F/st.ra" -d "$F/tok.ra" --steps 1 -o "$T/x.ra"
    assert_failure 65
    assert_output --partial "not a student of"
    run ra-mohawk2 -m "$F/st.ra" -s "$F/st.ra" -d "$F/tok.ra" --steps 1 -o "$T/x.ra"
    assert_failure 65
    [ ! -e "$T/x.ra" ]
}

@test "corrupt, truncated or out-of-vocabulary tokens are refused (exit 65)" {
    size=$(stat -c %s "$F/tok.ra")
    head -c $((size - 9)) "$F/tok.ra" >"$T/trunc.ra"
    run ra-mohawk2 "${C[@]/$F\/tok.ra/$T/trunc.ra}" --steps 1 -o "$T/x.ra"
    assert_failure 65
    assert_output --partial "trunc.ra"
    cp "$F/tok.ra" "$T/flip.ra"
    printf '\x01' | dd of="$T/flip.ra" bs=1 seek=$((size - 40)) conv=notrunc 2>/dev/null
    run ra-mohawk2 "${C[@]/$F\/tok.ra/$T/flip.ra}" --steps 1 -o "$T/x.ra"
    assert_failure 65
    run ra-mohawk2 -m "$F/m" -s "$F/st.ra" -d "$F/bigid.ra" --seq-len 2 --batch 1 --steps 1 -o "$T/x.ra"
    assert_failure 65
    assert_output --partial "900"
    run ra-mohawk2 "${C[@]}" --seq-len 100000 --steps 1 -o "$T/x.ra"
    assert_failure 65
    assert_output --partial "fewer than one row"
    [ ! -e "$T/x.ra" ]
}

@test "kill -9 mid-run, then --resume: output identical to an uninterrupted run" {
    ra-mohawk2 -q "${C[@]}" --steps 80 -o "$T/u.ra"
    # stopped after step 52, two steps past its last checkpoint, and killed there
    stop_and_kill 52 ra-mohawk2 -q "${C[@]}" --steps 80 --ckpt-dir "$T/ck" --ckpt-every 25 -o "$T/r.ra"
    [ -e "$T/ck/ckpt-000000000050.ra" ]
    [ ! -e "$T/r.ra" ]
    [ ! -e "$T/ck/ckpt-000000000075.ra" ]
    run ra-mohawk2 "${C[@]}" --steps 80 --ckpt-dir "$T/ck" --ckpt-every 25 --resume -o "$T/r.ra"
    assert_success
    assert_output --partial "resuming from $T/ck/ckpt-000000000050.ra"
    cmp "$T/u.ra" "$T/r.ra"
    # --keep 2: the final checkpoint and one before it
    [ "$(ls "$T/ck" | grep -c '^ckpt-')" = 2 ]
    [ -e "$T/ck/ckpt-000000000080.ra" ]
}

@test "--resume refuses a checkpoint of another run; a used --ckpt-dir needs --resume" {
    ra-mohawk2 -q "${C[@]}" --steps 3 --ckpt-dir "$T/ck" -o "$T/a.ra"
    run ra-mohawk2 "${C[@]}" --steps 3 --ckpt-dir "$T/ck" -o "$T/a.ra"
    assert_failure 64
    assert_output --partial "already holds checkpoints"
    run ra-mohawk2 "${C[@]/1e-2/2e-2}" --steps 3 --ckpt-dir "$T/ck" --resume -o "$T/b.ra"
    assert_failure 65
    assert_output --partial "'train.lr'"
    run ra-mohawk2 "${C[@]}" --steps 3 --layers 1 --ckpt-dir "$T/ck" --resume -o "$T/b.ra"
    assert_failure 65
    assert_output --partial "'tool.layers'"
    # --resume with an empty directory starts from the beginning
    run ra-mohawk2 "${C[@]}" --steps 3 --ckpt-dir "$T/fresh" --resume -o "$T/c.ra"
    assert_success
    assert_output --partial "no checkpoint in $T/fresh, starting from the beginning"
    cmp "$T/a.ra" "$T/c.ra"
}

@test "RA_TEST_NAN_AT_STEP: exit 70, last good checkpoint kept and valid, no output" {
    RA_TEST_NAN_AT_STEP=5 run ra-mohawk2 "${C[@]}" --steps 10 --ckpt-dir "$T/ck" --ckpt-every 2 -o "$T/n.ra"
    assert_failure 70
    assert_output --partial "step 5: gradient of"
    assert_output --partial "NaN"
    assert_output --partial "the last good checkpoint is $T/ck/ckpt-000000000004.ra"
    [ ! -e "$T/n.ra" ]
    [ "$(ls "$T/ck")" = "$(printf 'ckpt-000000000002.ra\nckpt-000000000004.ra')" ]
    run ra-show --verify "$T/ck/ckpt-000000000004.ra"
    assert_success
    # resuming without the hook finishes the run like an uninterrupted one
    ra-mohawk2 -q "${C[@]}" --steps 10 --ckpt-dir "$T/ck" --ckpt-every 2 --resume -o "$T/n.ra"
    ra-mohawk2 -q "${C[@]}" --steps 10 -o "$T/u.ra"
    cmp "$T/n.ra" "$T/u.ra"
}

@test "-o is atomic: a failed run leaves an existing output untouched and no temporary file" {
    echo keep >"$T/out.ra"
    RA_TEST_NAN_AT_STEP=2 run ra-mohawk2 "${C[@]}" --steps 4 -o "$T/out.ra"
    assert_failure 70
    [ "$(cat "$T/out.ra")" = keep ]
    [ "$(ls -A "$T")" = "out.ra" ]
    ra-mohawk2 -q "${C[@]}" --steps 2 -o "$T/out.ra"
    ra-show -q --verify "$T/out.ra"
    [ "$(ls -A "$T")" = "out.ra" ]
}

@test "stdout output, and --log writes a TSV with a loss column, one row per step" {
    ra-mohawk2 -q "${C[@]}" --steps 7 --grad-accum 2 --log "$T/log.tsv" >"$T/o.ra"
    ra-show -q --verify "$T/o.ra"
    [ "$(head -1 "$T/log.tsv")" = "$(printf 'step\ttokens\tloss\tlr\tgrad_norm\ttokens_per_s\telapsed_s')" ]
    [ "$(tail -n +2 "$T/log.tsv" | wc -l)" = 7 ]
    col=$(head -1 "$T/log.tsv" | tr '\t' '\n' | grep -nx loss | cut -d: -f1)
    [ "$col" = 3 ]
    # tokens = steps x batch x seq-len x grad-accum; the loss falls
    [ "$(tail -1 "$T/log.tsv" | cut -f2)" = $((7 * 2 * 16 * 2)) ]
    first=$(sed -n 2p "$T/log.tsv" | cut -f3)
    last=$(tail -1 "$T/log.tsv" | cut -f3)
    awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a) }'
}

@test "--eval-every with --heldout: eval_loss column and lines" {
    run ra-mohawk2 "${C[@]}" --steps 4 --eval-every 2 --eval-batches 2 --heldout "$F/held.ra" --log "$T/log.tsv" -o "$T/e.ra"
    assert_success
    assert_output --partial "step 2  eval loss"
    [ "$(head -1 "$T/log.tsv" | cut -f8)" = eval_loss ]
    [ -n "$(sed -n 3p "$T/log.tsv" | cut -f8)" ]
    [ -z "$(sed -n 2p "$T/log.tsv" | cut -f8)" ]
    prov=$(ra-show --json "$T/e.ra" | jq -r .provenance.inputs.heldout)
    [ "$prov" = "$(ra-show --id "$F/held.ra")" ]
    # without --heldout, the last rows of -d are held out
    run ra-mohawk2 "${C[@]}" --steps 2 --eval-every 1 -o "$T/e2.ra"
    assert_success
    assert_output --partial "eval loss"
}

@test "-q silences progress; without it there are progress lines with ETA" {
    run ra-mohawk2 -q "${C[@]}" --steps 2 -o "$T/a.ra"
    assert_success
    assert_output ""
    run ra-mohawk2 "${C[@]}" --steps 2 -o "$T/a.ra"
    assert_success
    assert_output --regexp "step 2/2  tokens 64  loss [0-9.e+-]+  lr [0-9.e+-]+  [0-9]+ tok/s  ETA 0:00:00"
}

@test "--tokens sets the steps; --seed changes the data order" {
    run ra-mohawk2 "${C[@]}" --tokens 100 -o "$T/a.ra"
    assert_success
    assert_output --partial "step 4/4" # ceil(100 / (2 x 16))
    ra-mohawk2 -q "${C[@]}" --steps 2 --seed 1 -o "$T/s1.ra"
    ra-mohawk2 -q "${C[@]}" --steps 2 --seed 2 -o "$T/s2.ra"
    [ "$(tensors "$T/s1.ra")" != "$(tensors "$T/s2.ra")" ]
}

#!/usr/bin/env bats
# pipelines/distill.mk on a tiny teacher (2 layers, a trained tokenizer
# fixture): probe -> rank -> graft -> ra-mohawk2 per layer with GNU parallel
# -> ra-merge; a second make does nothing; changing a stage's parameter
# reruns that stage only; the merged student equals a single all-layers run.

load '/usr/lib/bats/bats-support/load'
load '/usr/lib/bats/bats-assert/load'

setup() {
    export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
    ROOT="$BATS_TEST_DIRNAME/../.."
    H="$ROOT/build/tests"
    T="$BATS_TEST_TMPDIR"
    "$H/mk-hf" --vocab 2048 --layers 2 --hidden 32 --heads 4 --kv-heads 2 --seed 3 "$T/m" >/dev/null
    cp "$ROOT/tests/fixtures/tokenizers/llama3-style/"* "$T/m/"
    printf '%s\n' apple banana cherry damson elder fig grape hazel ivy juniper kiwi lemon >"$T/words"
    awk 'BEGIN { srand(5); for (d = 0; d < 30; d++) { n = 4 + int(rand() * 30); s = "";
         for (i = 0; i < n; i++) s = s (i ? " " : "") int(rand() * 2048); print s } }' |
        ra-tok --ids -q -o "$T/tok.ra"
    MK=(make -s -f "$ROOT/pipelines/distill.mk" TEACHER="$T/m" TOKENS="$T/tok.ra" HEADS=2 OUT="$T/out" JOBS=2
        PROBE_FLAGS="--pairs 3 --samples 4 --words $T/words --device cpu -q"
        S2_FLAGS="--seq-len 16 --batch 2 --steps 3 --lr 1e-2")
}

@test "distill.mk: up to the merged stage-2 student; a second make does nothing" {
    run "${MK[@]}" student2
    assert_success
    s2=$("${MK[@]}" print-KEYS | sed -n 5p)
    s0=$("${MK[@]}" print-KEYS | sed -n 3p)
    [ -e "$s2" ] && [ -e "$s0" ]
    ra-show -q --verify "$s2"
    # one part per layer, each with only its layer
    [ "$(ls "$T"/out/s2-*/part-*.ra | wc -l)" = 2 ]
    # merged parts = one all-layers run with the same flags
    ra-mohawk2 -q -m "$T/m" -s "$s0" -d "$T/tok.ra" --seq-len 16 --batch 2 --steps 3 --lr 1e-2 -o "$T/all.ra"
    ra-merge -q -o "$T/ref.ra" "$s0" "$T/all.ra"
    tensors() { ra-show --json --values "$1" | jq -c '[.tensors[] | {name, values}]'; }
    [ "$(tensors "$s2")" = "$(tensors "$T/ref.ra")" ]
    # second run: nothing to do, nothing rewritten
    before=$(ls -l --time-style=+%s.%N "$T"/out/*.ra)
    run "${MK[@]}" -q student2
    assert_success
    run "${MK[@]}" student2
    assert_success
    assert_output ""
    [ "$(ls -l --time-style=+%s.%N "$T"/out/*.ra)" = "$before" ]
    # another stage-2 parameter: a new student2, the earlier artifacts reused
    MK2=("${MK[@]/--steps 3/--steps 2}")
    run "${MK2[@]}" -n student2
    assert_success
    assert_output --partial "ra-mohawk2"
    refute_output --partial "ra-probe"
    refute_output --partial "ra-graft"
    [ "$("${MK2[@]}" print-KEYS | sed -n 5p)" != "$s2" ]
    [ "$("${MK2[@]}" print-KEYS | sed -n 3p)" = "$s0" ]
}

@test "distill.mk: TEACHER is required; TOKENS is required for stage 2" {
    run make -s -f "$BATS_TEST_DIRNAME/../../pipelines/distill.mk" student2
    assert_failure
    assert_output --partial "TEACHER= is required"
    run make -s -f "$BATS_TEST_DIRNAME/../../pipelines/distill.mk" TEACHER="$T/m" OUT="$T/out" \
        PROBE_FLAGS="--pairs 3 --samples 4 --words $T/words --device cpu -q" HEADS=2 student2
    assert_failure
    assert_output --partial "TOKENS= (a tokens stream, ra-tok) is required"
}

@test "distill.mk: the whole pipeline to results (with STAGE1=1), then nothing to do" {
    ALL=("${MK[@]}" S3_FLAGS="--seq-len 16 --batch 2 --steps 2 -q" EVAL_FLAGS="--task logits --device cpu -q")
    run "${ALL[@]}" STAGE1=1 S1_FLAGS="--seq-len 16 --batch 2 --steps 2 -q"
    assert_success
    keys=$("${ALL[@]}" STAGE1=1 S1_FLAGS="--seq-len 16 --batch 2 --steps 2 -q" print-KEYS)
    for f in $keys; do ra-show -q --verify "$f" >/dev/null; done
    [ "$(basename "$(sed -n 4p <<<"$keys")")" != "$(basename "$(sed -n 3p <<<"$keys")")" ] # student1 exists
    [ "$(ra-show --json "$(sed -n 7p <<<"$keys")" | jq -r .kind)" = results ]
    run "${ALL[@]}" STAGE1=1 S1_FLAGS="--seq-len 16 --batch 2 --steps 2 -q" -q
    assert_success
    # without stage 1 the stage-2 student is made from student0 directly
    run "${ALL[@]}" -n student2
    assert_output --partial "ra-mohawk2"
    refute_output --partial "ra-mohawk1"
    refute_output --partial "ra-graft"
}

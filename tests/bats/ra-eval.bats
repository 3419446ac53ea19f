#!/usr/bin/env bats
# ra-eval: flags, --task logits against the Hugging Face golden fixtures,
# model streams, exit codes and error messages.

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

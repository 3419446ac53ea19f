#!/usr/bin/env bats
# ra-show: every flag and exit code; HF ↔ ra conversions; hostile safetensors.

load '/usr/lib/bats/bats-support/load'
load '/usr/lib/bats/bats-assert/load'
bats_require_minimum_version 1.5.0

setup() {
    MKHF=${MKHF:-$BATS_TEST_DIRNAME/../../build/tests/mk-hf}
    CORPUS=$BATS_TEST_DIRNAME/../fuzz/corpus
    T=$BATS_TEST_TMPDIR
}


# Write a single-file safetensors by hand: header JSON, then data given as a
# printf format string.
write_st() { # FILE HEADER DATA_PRINTF
    local h=$2 n
    n=${#h}
    {
        printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x\\x00\\x00\\x00\\x00' $((n & 255)) $(((n >> 8) & 255)) \
            $(((n >> 16) & 255)) $(((n >> 24) & 255)))"
        printf '%s' "$h"
        printf "$3"
    } >"$1"
}

# ------------------------------------------------------------ conventions

@test "--help and --version exit 0 on stdout" {
    run ra-show --help
    assert_success
    assert_output --partial "Usage: ra-show"
    assert_output --partial "--hf-out DIR"
    assert_output --partial "--ra-out FILE"
    run ra-show --version
    assert_success
    assert_output --regexp '^ra-show \(ra\) [0-9]+\.[0-9]+\.[0-9]+$'
}

@test "usage errors exit 64" {
    "$MKHF" "$T/m"
    run ra-show
    assert_failure 64
    assert_output --partial "no input"
    run ra-show "$T/m" "$T/m"
    assert_failure 64
    assert_output --partial "one input expected"
    run ra-show --bogus "$T/m"
    assert_failure 64
    assert_output --partial "unknown option '--bogus'"
    run ra-show --values "$T/m"
    assert_failure 64
    assert_output --partial "--values needs --json"
    run ra-show --json --verify "$T/m"
    assert_failure 64
    run ra-show --id --ra-out "$T/x.ra" "$T/m"
    assert_failure 64
    run ra-show --hf-out
    assert_failure 64
    assert_output --partial "--hf-out needs a value"
    run ra-show --ra-out
    assert_failure 64
    run ra-show -o
    assert_failure 64
    run ra-show -o "$T/o.txt" --ra-out "$T/x.ra" "$T/m"
    assert_failure 64
    assert_output --partial "-o does not apply"
    [ ! -e "$T/x.ra" ]
}

@test "a write error on stdout exits 74" {
    "$MKHF" "$T/m"
    status=0
    ra-show "$T/m" >/dev/full 2>"$T/err" || status=$?
    [ "$status" -eq 74 ]
    grep -q "stdout" "$T/err"
}

@test "a missing input exits 66 naming it" {
    run ra-show "$T/nowhere"
    assert_failure 66
    assert_output --partial "$T/nowhere"
    run ra-show "$T/nowhere.safetensors"
    assert_failure 66
    assert_output --partial "nowhere.safetensors"
    mkdir "$T/empty"
    run ra-show "$T/empty"
    assert_failure 66
    assert_output --partial "no model.safetensors"
}

# ------------------------------------------------------ Hugging Face input

@test "summary of a Llama directory" {
    "$MKHF" --layers 3 --hidden 32 --heads 4 --kv-heads 2 --inter 48 --vocab 64 --llama3-rope "$T/m"
    run ra-show "$T/m"
    assert_success
    assert_line "format       safetensors, 1 file"
    assert_line "model_type   llama"
    assert_line "layers       3"
    assert_line "hidden       32 (intermediate 48)"
    assert_line "heads        4 query, 2 key/value, head_dim 8"
    assert_line "vocab        64"
    assert_line --partial "rope         llama3, theta 500000, factor 8, low_freq_factor 1, high_freq_factor 4"
    assert_line "tied         no"
    assert_line "biases       q/k/v no, o no"
    # 3 layers × 9 tensors + embedding + final norm + lm_head
    assert_line "tensors      30"
    # parameters from the shapes: per layer 2 norms, q, k, v, o, gate, up, down
    D=32 I=48 V=64 hd=8
    per_layer=$((2 * D + 4 * hd * D + 2 * 2 * hd * D + 4 * hd * D + 3 * I * D))
    params=$((3 * per_layer + 2 * V * D + D))
    assert_line "total        30 tensors, $params parameters, $((2 * params)) bytes"
    assert_line --regexp '^  model\.layers\.2\.mlp\.down_proj\.weight +bf16 +\[32, 48\] +3072$'
}

@test "summary of Qwen2, tied, sharded and rope_parameters checkpoints" {
    "$MKHF" --model qwen2 --tied --dtype f32 --shards 3 "$T/q"
    run ra-show "$T/q"
    assert_success
    assert_line "format       safetensors, 3 files"
    assert_line "model_type   qwen2"
    assert_line "tied         yes"
    assert_line "biases       q/k/v yes, o no"
    assert_line "rope         default, theta 1e+06"
    assert_line --regexp '^  model\.layers\.0\.self_attn\.k_proj\.bias +f32 +\[16\] +64$'
    refute_line --partial "lm_head.weight"
    "$MKHF" --attention-bias "$T/b"
    run ra-show "$T/b"
    assert_line "biases       q/k/v yes, o yes"
    "$MKHF" --llama3-rope "$T/r1"
    "$MKHF" --llama3-rope --rope-parameters "$T/r2"
    run ra-show "$T/r1"
    r1=$(echo "$output" | grep '^rope')
    run ra-show "$T/r2"
    assert_success
    assert_line "$r1"
}

@test "a single .safetensors file, with and without config.json beside it" {
    "$MKHF" "$T/m"
    run ra-show "$T/m/model.safetensors"
    assert_success
    assert_line "model_type   llama"
    mkdir "$T/alone"
    cp "$T/m/model.safetensors" "$T/alone/weights.safetensors"
    run ra-show "$T/alone/weights.safetensors"
    assert_success
    assert_line "config       none (no config.json beside the file)"
    assert_line "tensors      21"
    # a safetensors file under another name is recognised by its content
    cp "$T/m/model.safetensors" "$T/alone/weights.bin"
    run ra-show "$T/alone/weights.bin"
    assert_success
    assert_line "tensors      21"
}

@test "unsupported config.json exits 65 naming the field" {
    "$MKHF" "$T/m"
    sed -i 's/"model_type": "llama"/"model_type": "mistral"/' "$T/m/config.json"
    run ra-show "$T/m"
    assert_failure 65
    assert_output --partial "model_type 'mistral'"
    "$MKHF" "$T/y"
    sed -i 's/"rope_scaling": null/"rope_scaling": {"rope_type": "yarn", "factor": 4.0}/' "$T/y/config.json"
    run ra-show "$T/y"
    assert_failure 65
    assert_output --partial "rope_type 'yarn'"
    printf '{"model_type": ' >"$T/y/config.json"
    run ra-show "$T/y"
    assert_failure 65
    assert_output --partial "config.json"
}

@test "hostile safetensors are refused with exit 65 and a clear message" {
    C=$CORPUS/safetensors
    run ra-show "$C/header-past-eof.safetensors"
    assert_failure 65
    assert_output --partial "past the end of the file"
    run ra-show "$C/huge-header.safetensors"
    assert_failure 65
    assert_output --partial "exceeds the 100000000-byte limit"
    run ra-show "$C/overlap.safetensors"
    assert_failure 65
    assert_output --partial "overlap"
    run ra-show "$C/bad-size.safetensors"
    assert_failure 65
    assert_output --partial "tensor 'a': data_offsets span 8 bytes, but shape and dtype F32 need 12"
    run ra-show "$C/unknown-dtype.safetensors"
    assert_failure 65
    assert_output --partial "tensor 'a': dtype 'F8_E4M3' is not supported"
    write_st "$T/badjson.safetensors" '{"a": {"dtype": "F32",,}}' ''
    run ra-show "$T/badjson.safetensors"
    assert_failure 65
    assert_output --partial "header is not valid JSON"
    write_st "$T/range.safetensors" '{"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}' '\x01\x02'
    run ra-show "$T/range.safetensors"
    assert_failure 65
    assert_output --partial "tensor 'w': data_offsets end 4 is past the data buffer (2 bytes)"
    printf '\x01\x02\x03' >"$T/tiny.safetensors"
    run ra-show "$T/tiny.safetensors"
    assert_failure 65
    assert_output --partial "too short"
    # a shard missing from a sharded checkpoint
    "$MKHF" --shards 2 "$T/s"
    rm "$T/s/model-00002-of-00002.safetensors"
    run ra-show "$T/s"
    assert_failure 66
    assert_output --partial "model-00002-of-00002.safetensors"
}

@test "--json of a checkpoint: values decoded from the bytes, NaN and Inf as strings" {
    # f32 1.5, -2.25, NaN, +Inf, -Inf, 0; bf16 0x3fc0 (1.5), 0xc0a0 (-5)
    write_st "$T/v.safetensors" \
        '{"__metadata__":{"format":"pt"},"f":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"h":{"dtype":"BF16","shape":[2],"data_offsets":[24,28]},"i":{"dtype":"I64","shape":[1],"data_offsets":[28,36]}}' \
        '\x00\x00\xc0\x3f\x00\x00\x10\xc0\x00\x00\xc0\x7f\x00\x00\x80\x7f\x00\x00\x80\xff\x00\x00\x00\x00\xc0\x3f\xa0\xc0\xfe\xff\xff\xff\xff\xff\xff\xff'
    run ra-show --json "$T/v.safetensors"
    assert_success
    echo "$output" | jq -e . >/dev/null
    [ "$(echo "$output" | jq -c '.kind, .meta.metadata, .meta.config, .provenance')" = '"hf"
{"format":"pt"}
null
null' ]
    [ "$(echo "$output" | jq -r .content_id)" = "$(ra-show --id "$T/v.safetensors")" ]
    [ "$(echo "$output" | jq -c '.tensors[0]')" = '{"name":"f","dtype":"f32","shape":[2,3],"bytes":24,"values":[1.5,-2.25,"nan","inf","-inf",0]}' ]
    [ "$(echo "$output" | jq -c '.tensors[1].values')" = '[1.5,-5]' ]
    [ "$(echo "$output" | jq -c '.tensors[2].values')" = '[-2]' ]
}

@test "--json includes values up to 1,000,000 elements, all with --values" {
    # embedding 15700 × 64 = 1,004,800 elements; everything else is small
    "$MKHF" --vocab 15700 --hidden 64 --heads 4 --kv-heads 4 --inter 16 --layers 1 --tied "$T/big"
    run ra-show --json "$T/big"
    assert_success
    [ "$(echo "$output" | jq '[.tensors[] | select(.values == null)] | map(.name)' -c)" = '["model.embed_tokens.weight"]' ]
    [ "$(echo "$output" | jq '.tensors[] | select(.name == "model.norm.weight") | .values | length')" = 64 ]
    run ra-show --json --values "$T/big"
    assert_success
    [ "$(echo "$output" | jq '.tensors[] | select(.name == "model.embed_tokens.weight") | .values | length')" = 1004800 ]
    [ "$(echo "$output" | jq '[.tensors[] | select(.values == null)] | length')" = 0 ]
}

@test "bf16 values in --json match the stored bits (decoded independently)" {
    "$MKHF" --seed 7 "$T/m"
    run ra-show --json "$T/m"
    assert_success
    json=$output
    # model.norm.weight is [32] bf16; find its offset from the header with jq
    hl=$(od -An -tu4 -N4 "$T/m/model.safetensors" | tr -d ' ')
    off=$(head -c $((8 + hl)) "$T/m/model.safetensors" | tail -c "$hl" | jq '.["model.norm.weight"].data_offsets[0]')
    bits=$(od -An -tu2 -j $((8 + hl + off)) -N 64 "$T/m/model.safetensors")
    want=$(for b in $bits; do
        awk -v b="$b" 'BEGIN { s = int(b / 32768); e = int(b / 128) % 256; m = b % 128;
                       v = (1 + m / 128) * 2 ^ (e - 127); if (s) v = -v; printf "%.10g\n", v }'
    done)
    got=$(echo "$json" | jq '.tensors[] | select(.name == "model.norm.weight") | .values[]' |
        awk '{ printf "%.10g\n", $1 }')
    [ "$want" = "$got" ]
}

@test "--verify and --id of a checkpoint" {
    "$MKHF" --seed 5 "$T/m"
    run ra-show --verify "$T/m"
    assert_success
    assert_output "$T/m: ok (21 tensors in 1 file; safetensors carry no digest)"
    run ra-show --id "$T/m"
    assert_success
    assert_output --regexp '^[0-9a-f]{32}$'
    id=$output
    # the id ignores sharding and storage order, and is the JSON content_id
    "$MKHF" --seed 5 --shards 3 --shuffle "$T/s"
    run ra-show --id "$T/s"
    assert_output "$id"
    [ "$(ra-show --json "$T/s" | jq -r .content_id)" = "$id" ]
    # it covers config.json bytes and every weight byte
    sed -i 's/"vocab_size": 64/"vocab_size":  64/' "$T/s/config.json"
    run ra-show --id "$T/s"
    assert_success
    refute_output "$id"
    "$MKHF" --seed 6 "$T/other"
    run ra-show --id "$T/other"
    refute_output "$id"
}

@test "-o writes the result to a file" {
    "$MKHF" "$T/m"
    run ra-show -o "$T/summary.txt" "$T/m"
    assert_success
    assert_output ""
    grep -q '^model_type   llama$' "$T/summary.txt"
    run ra-show -o "$T/s.json" --json "$T/m"
    assert_success
    jq -e '.kind == "hf"' "$T/s.json"
    # a failure leaves neither the file nor a temporary beside it
    mkdir "$T/o"
    ra-show -q --ra-out "$T/m.ra" "$T/m"
    head -c $(($(stat -c %s "$T/m.ra") - 5)) "$T/m.ra" >"$T/bad.ra"
    run ra-show -o "$T/o/out.txt" "$T/bad.ra"
    assert_failure 65
    [ -z "$(ls -A "$T/o")" ]
}

# ------------------------------------------------------------ conversions

@test "--ra-out makes a model stream; summary, --json, --id and --verify agree" {
    "$MKHF" --llama3-rope "$T/m"
    run ra-show --ra-out "$T/m.ra" "$T/m"
    assert_success
    assert_output --regexp "wrote $T/m.ra: 21 tensors, content id [0-9a-f]{32}"
    id=$(echo "$output" | grep -o 'content id [0-9a-f]*' | cut -d' ' -f3)
    run ra-show --id "$T/m.ra"
    assert_success
    assert_output "$id"
    run ra-show --verify "$T/m.ra"
    assert_success
    assert_output "$T/m.ra: ok, content id $id"
    run ra-show - <"$T/m.ra"
    assert_success
    assert_line "content id   $id"
    run ra-show "$T/m.ra"
    assert_success
    assert_line "kind         model"
    assert_line "version      1"
    assert_line "content id   $id"
    assert_line --partial '"source": "hf"'
    assert_line --partial '"tool": "ra-show"'
    assert_line "tensors      21"
    assert_line --regexp '^  model\.embed_tokens\.weight +bf16 +\[64, 32\] +4096$'
    run ra-show --json "$T/m.ra"
    assert_success
    [ "$(echo "$output" | jq -r '.kind, .version, .content_id, .meta.source, .meta.config.rope_scaling.rope_type, .provenance.inputs[0].path, .provenance.inputs[0].id')" = "model
1
$id
hf
llama3
$T/m
$(ra-show --id "$T/m")" ]
    # same tensors, same values as the checkpoint
    diff <(ra-show --json "$T/m" | jq -c '.tensors') <(echo "$output" | jq -c '.tensors')
    run ra-show -q --ra-out "$T/m2.ra" "$T/m"
    assert_success
    assert_output ""
}

@test "--ra-out - writes to stdout; a file checkpoint needs config.json" {
    "$MKHF" "$T/m"
    ra-show -q --ra-out - "$T/m" >"$T/piped.ra"
    run ra-show --verify "$T/piped.ra"
    assert_success
    id=$(ra-show --id - <"$T/piped.ra")
    [ ${#id} -eq 32 ]
    mkdir "$T/alone"
    cp "$T/m/model.safetensors" "$T/alone/"
    run ra-show --ra-out "$T/x.ra" "$T/alone/model.safetensors"
    assert_failure 66
    assert_output --partial "config.json"
    [ ! -e "$T/x.ra" ]
    run ra-show --ra-out "$T/y.ra" "$T/m/model.safetensors"
    assert_success
}

@test "HF -> ra -> HF gives back the same bytes and an equivalent config" {
    "$MKHF" --llama3-rope --seed 3 "$T/m"
    ra-show -q --ra-out "$T/m.ra" "$T/m"
    run ra-show --hf-out "$T/out" "$T/m.ra"
    assert_success
    assert_output --partial "wrote $T/out/config.json and $T/out/model.safetensors (21 tensors)"
    cmp "$T/m/model.safetensors" "$T/out/model.safetensors"
    diff <(ra-show "$T/m" | tail -n +2) <(ra-show "$T/out" | tail -n +2)
    for k in model_type hidden_size intermediate_size num_hidden_layers num_attention_heads num_key_value_heads \
             vocab_size max_position_embeddings rms_norm_eps rope_theta rope_scaling tie_word_embeddings \
             bos_token_id eos_token_id torch_dtype; do
        [ "$(jq -cS ".$k" "$T/m/config.json")" = "$(jq -cS ".$k" "$T/out/config.json")" ] || {
            echo "config key $k differs"; return 1; }
    done
}

@test "sharded, shuffled Qwen2 and f16 checkpoints survive HF -> ra -> HF" {
    "$MKHF" --model qwen2 --shards 3 --shuffle --dtype f16 --head-dim 12 "$T/q"
    ra-show -q --ra-out "$T/q.ra" "$T/q"
    ra-show -q --hf-out "$T/out" "$T/q.ra"
    [ "$(ra-show --json --values "$T/q" | jq -c '.tensors | sort_by(.name)')" = \
      "$(ra-show --json --values "$T/out" | jq -c '.tensors | sort_by(.name)')" ]
    run ra-show "$T/out"
    assert_line "heads        4 query, 2 key/value, head_dim 12"
    assert_line "biases       q/k/v yes, o no"
    # a second round trip is byte-stable
    ra-show -q --ra-out "$T/q2.ra" "$T/out"
    ra-show -q --hf-out "$T/out2" "$T/q2.ra"
    cmp "$T/out/model.safetensors" "$T/out2/model.safetensors"
    cmp "$T/out/config.json" "$T/out2/config.json"
}

@test "--hf-out of a stream made elsewhere, with a hybrid plan, from a file and from stdin" {
    "$MKHF" --hybrid --ra "$T/h.ra" "$T/m"
    run ra-show --hf-out "$T/out" "$T/h.ra"
    assert_success
    cmp "$T/m/model.safetensors" "$T/out/model.safetensors"
    [ "$(jq -c '.ra_hybrid' "$T/out/config.json")" = '{"attention_heads":[[0,2],[1]],"ssm":{"state_size":16,"head_dim":8}}' ]
    [ "$(jq -c 'del(.ra_hybrid)' "$T/out/config.json")" = "$(jq -c . "$T/m/config.json")" ]
    run ra-show -q --hf-out "$T/out-stdin" - <"$T/h.ra"
    assert_success
    cmp "$T/m/model.safetensors" "$T/out-stdin/model.safetensors"
    cmp "$T/out/config.json" "$T/out-stdin/config.json"
}

@test "tensors split into parts: --json values and --hf-out are unchanged" {
    "$MKHF" --ra "$T/whole.ra" "$T/m"
    "$MKHF" --ra "$T/split.ra" --split-bytes 100 "$T/m2"
    run ra-show "$T/whole.ra"
    assert_line "records      21"
    # the 4096-byte embedding alone takes 41 parts of at most 100 bytes
    run ra-show "$T/split.ra"
    assert_success
    records=$(echo "$output" | awk '/^records/ { print $2 }')
    [ "$records" -gt 100 ]
    [ "$(ra-show --json --values "$T/split.ra" | jq -c .tensors)" = "$(ra-show --json --values "$T/whole.ra" | jq -c .tensors)" ]
    ra-show -q --hf-out "$T/out" "$T/split.ra"
    cmp "$T/m/model.safetensors" "$T/out/model.safetensors"
    ra-show -q --hf-out "$T/out2" - <"$T/split.ra"
    cmp "$T/m/model.safetensors" "$T/out2/model.safetensors"
}

@test "--hf-out of a trained tied-embedding model (the teacher's path): ra-eval logits of the export equal the stream's bit for bit" {
    # the small teacher's recipe in miniature (pipelines/teacher.mk): random init, ra-mohawk3 --loss ce, bf16 out
    printf '{"model_type": "llama", "vocab_size": 50, "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 64, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": true, "hidden_act": "silu"}\n' >"$T/config.json"
    ra-graft -q --random-init "$T/config.json" --seed 3 -o "$T/init.ra"
    awk 'BEGIN { srand(7); for (d = 0; d < 12; d++) { n = 5 + int(rand() * 30); s = ""; for (i = 0; i < n; i++) s = s int(rand() * 50) " "; print s } }' >"$T/ids.txt"
    ra-tok --ids -o "$T/docs.ra" "$T/ids.txt"
    ra-mohawk3 -q --loss ce -s "$T/init.ra" -d "$T/docs.ra" --seq-len 16 --batch 2 --steps 3 --lr 1e-2 --dtype bf16 -o "$T/m.ra"
    ra-show -q --hf-out "$T/hf" "$T/m.ra"
    # the export holds the stream's tensors (no lm_head: tied) and its config
    [ "$(ra-show --json --values "$T/m.ra" | jq -c '[.tensors[] | {name, dtype, shape, values}] | sort_by(.name)')" = \
      "$(ra-show --json --values "$T/hf" | jq -c '[.tensors[] | {name, dtype, shape, values}] | sort_by(.name)')" ]
    run ra-show --json "$T/hf"
    refute_output --partial '"lm_head.weight"'
    [ "$(jq -c .tie_word_embeddings "$T/hf/config.json")" = true ]
    ra-eval -q -m "$T/m.ra" --task logits -d "$T/docs.ra" --device cpu -o "$T/l-stream.ra"
    ra-eval -q -m "$T/hf" --task logits -d "$T/docs.ra" --device cpu -o "$T/l-hf.ra"
    a=$(ra-show --json --values "$T/l-stream.ra" | jq -c '.tensors')
    b=$(ra-show --json --values "$T/l-hf.ra" | jq -c '.tensors')
    [ "$(echo "$a" | jq length)" -eq 12 ]
    [ "$a" = "$b" ]
    # and the logits depend on the weights: another model's differ
    ra-eval -q -m "$T/init.ra" --task logits -d "$T/docs.ra" --device cpu -o "$T/l-init.ra"
    [ "$(ra-show --json --values "$T/l-init.ra" | jq -c '.tensors')" != "$a" ]
}

@test "--hf-out refuses other kinds, bad configs, checkpoints and stale indexes" {
    "$MKHF" --kind scores --ra "$T/s.ra" "$T/m"
    run ra-show --hf-out "$T/out" "$T/s.ra"
    assert_failure 65
    assert_output --partial "a 'scores' stream, --hf-out needs a 'model' stream"
    [ ! -e "$T/out" ]
    "$MKHF" --no-meta-config --ra "$T/n.ra" "$T/m2"
    run ra-show --hf-out "$T/out" "$T/n.ra"
    assert_failure 65
    assert_output --partial "meta.config"
    run ra-show --hf-out "$T/out" "$T/m"
    assert_failure 65
    assert_output --partial "needs a model ra stream"
    run ra-show --ra-out "$T/x.ra" "$T/s.ra"
    assert_failure 65
    assert_output --partial "needs a Hugging Face checkpoint"
    "$MKHF" --ra "$T/ok.ra" "$T/m3"
    mkdir "$T/stale"
    echo '{}' >"$T/stale/model.safetensors.index.json"
    run ra-show --hf-out "$T/stale" "$T/ok.ra"
    assert_failure 64
    assert_output --partial "model.safetensors.index.json"
    touch "$T/plainfile"
    run ra-show --hf-out "$T/plainfile" "$T/ok.ra"
    assert_failure 73
}

# ------------------------------------------------------ corrupt ra streams

@test "a corrupt or truncated stream: exit 65, nothing on stdout, nothing exported" {
    "$MKHF" "$T/m"
    ra-show -q --ra-out "$T/m.ra" "$T/m"
    size=$(stat -c %s "$T/m.ra")
    cp "$T/m.ra" "$T/flip.ra"
    # flip one byte in the middle of the tensor data
    pos=$((size / 2))
    byte=$(od -An -tu1 -j $pos -N1 "$T/m.ra" | tr -d ' ')
    printf "$(printf '\\x%02x' $(((byte + 1) % 256)))" | dd of="$T/flip.ra" bs=1 seek=$pos conv=notrunc 2>/dev/null
    head -c $((size - 10)) "$T/m.ra" >"$T/trunc.ra"
    for f in flip trunc; do
        run ra-show --verify "$T/$f.ra"
        assert_failure 65
        assert_output --partial "$T/$f.ra"
        run ra-show --id "$T/$f.ra"
        assert_failure 65
        run --separate-stderr ra-show "$T/$f.ra"
        [ "$status" -eq 65 ]
        [ -z "$output" ]
        run --separate-stderr ra-show --json "$T/$f.ra"
        [ "$status" -eq 65 ]
        [ -z "$output" ]
        run ra-show --hf-out "$T/out-$f" "$T/$f.ra"
        assert_failure 65
        [ ! -e "$T/out-$f/model.safetensors" ]
        [ ! -e "$T/out-$f/config.json" ]
    done
    echo "not a stream" >"$T/text.ra"
    run ra-show "$T/text.ra"
    assert_failure 65
    assert_output --partial "$T/text.ra"
}

#!/usr/bin/env bats
# ra-graft: the student it writes, the summary, the plan/teacher check, option
# refusals, determinism, and the student going through the other tools.

load '/usr/lib/bats/bats-support/load'
load '/usr/lib/bats/bats-assert/load'

setup() {
    ROOT="$BATS_TEST_DIRNAME/../.."
    H="$ROOT/build/tests"
    T="$BATS_TEST_TMPDIR"
    # teacher: 3 layers x 4 heads (2 KV groups), head_dim 8, hidden 32
    "$H/mk-hf" --layers 3 --seed 7 "$T/m" >/dev/null
    TID=$("$H/ra-testdata" id "$T/m")
    scores "$TID" "$T/s.ra"
    ra-rank -q --top 4 -o "$T/p.ra" "$T/s.ra"  # kept: 0:[1] 1:[0,3] 2:[2]
}

# a scores stream for teacher id $1 (3 x 4 heads, 2 KV groups, head_dim 8) into $2
scores() {
    printf '0.1 0.5\n0.3 0.2\n0.1 0.5\n0.0 0.9\n0.3 0.7\n0.2 -0.1\n0.0 0.0\n0.5 0.1\n0.0 1.5\n0.1 0.6\n0.2 0.3\n0.0 0.05\n' |
        "$H/mk-scores" -L 3 -H 4 -G 2 -d 8 -i "$1" -o "$2"
}

meta() { "$H/ra-testdata" describe "$1" | sed -n 's/^meta //p'; }

@test "--help and --version exit 0 on stdout" {
    run ra-graft --help
    assert_success
    assert_output --partial "Usage: ra-graft -m TEACHER -p PLAN"
    assert_output --partial "--init I"
    run ra-graft --version
    assert_success
    assert_output --regexp '^ra-graft \(ra\) [0-9]'
}

@test "writes a model stream with meta.hybrid, the teacher's config and the documented tensors" {
    run ra-graft -m "$T/m" -p "$T/p.ra" -o "$T/st.ra"
    assert_success
    run "$H/ra-testdata" describe "$T/st.ra"
    assert_line "kind model"
    assert_line "tensor model.layers.1.self_attn.k_proj.weight f32 16x32"
    assert_line "tensor model.layers.1.self_attn.o_proj.weight f32 32x32"
    # layer 0: 3 SSM heads, N 8: in_proj 2*24 + 2*3*8 + 3 rows, conv 24 + 48 channels
    assert_line "tensor model.layers.0.mixer.in_proj.weight f32 99x32"
    assert_line "tensor model.layers.0.mixer.conv1d.weight f32 72x4"
    assert_line "tensor model.layers.0.mixer.D f32 3"
    refute_line --partial "mixer.out_proj"
    refute_line --partial "attn_adapter"
    m=$(meta "$T/st.ra")
    pid=$("$H/ra-testdata" describe "$T/p.ra" | sed -n 's/^id //p')
    [ "$(jq -c .hybrid.kept_heads <<<"$m")" = "[[1],[0,3],[2]]" ]
    [ "$(jq -r '.hybrid | "\(.layout) \(.adapter) \(.d_state) \(.qk_groups) \(.init) \(.seed) \(.chunk) \(.conv_kernel)"' <<<"$m")" = "routed static 8 0 mohawk 0 128 4" ]
    [ "$(jq -r .hybrid.teacher <<<"$m")" = "$TID" ]
    [ "$(jq -r .hybrid.plan <<<"$m")" = "$pid" ]
    [ "$(jq -r '.config | "\(.num_hidden_layers) \(.num_attention_heads) \(.num_key_value_heads) \(.hidden_size) \(.head_dim)"' <<<"$m")" = "3 4 2 32 8" ]
}

@test "the summary: parameters, kept heads per layer, KV-cache and SSM state bytes" {
    run ra-graft -m "$T/m" -p "$T/p.ra" -o "$T/st.ra"
    assert_success
    assert_output --partial "routed layout, adapter static, d_state 8"
    assert_output --partial "kept heads per layer: 0:[1] 1:[0,3] 2:[2] (4 of 12 heads)"
    # 4 kept heads x 2 x 8 values x 2 bytes; teacher 3 layers x 2 KV heads x 2 x 8 x 2
    assert_output --partial "KV cache 128 bytes/token in bf16 (128 with --share-kv; teacher 192)"
    # 8 SSM heads x P 8 x N 8 values
    assert_output --partial "SSM state 1024 bytes/sequence in bf16 (2048 in fp32"
    assert_output --regexp "parameters [0-9]+ \(teacher [0-9]+\)"
    id=$("$H/ra-testdata" describe "$T/st.ra" | sed -n 's/^id //p')
    assert_output --partial "student content id $id"
    run ra-graft -q -m "$T/m" -p "$T/p.ra" -o "$T/st2.ra"
    assert_success
    assert_output ""
}

@test "--share-kv figure: two kept heads of one KV group count once" {
    printf '0.9 0\n0.8 0\n0 0\n0 0\n0 0\n0 0\n0 0\n0 0\n0 0\n0 0\n0 0\n0 0\n' |
        "$H/mk-scores" -L 3 -H 4 -G 2 -d 8 -i "$TID" -o "$T/s2.ra"
    ra-rank -q --top 2 -o "$T/p2.ra" "$T/s2.ra"
    run ra-graft -m "$T/m" -p "$T/p2.ra" -o "$T/st.ra"
    assert_success
    assert_output --partial "KV cache 64 bytes/token in bf16 (32 with --share-kv; teacher 192)"
}

@test "parallel layout: full-width SSM with out_proj, kept heads' o_proj slice, learned adapter" {
    run ra-graft -m "$T/m" -p "$T/p.ra" --layout parallel --d-state 3 -o "$T/par.ra"
    assert_success
    assert_output --partial "parallel layout, adapter linear, d_state 3"
    run "$H/ra-testdata" describe "$T/par.ra"
    assert_line "tensor model.layers.1.self_attn.o_proj.weight f32 32x16"
    assert_line "tensor model.layers.1.mixer.out_proj.weight f32 32x32"
    assert_line "tensor model.layers.1.attn_adapter.weight f32 32x32"
    assert_line "tensor model.layers.1.mixer.in_proj.weight f32 92x32"
    [ "$(jq -r .hybrid.adapter <<<"$(meta "$T/par.ra")")" = linear ]
}

@test "a plan made for another teacher is refused, naming both" {
    "$H/mk-hf" --layers 3 --seed 8 "$T/other" >/dev/null
    OID=$("$H/ra-testdata" id "$T/other")
    run ra-graft -m "$T/other" -p "$T/p.ra" -o "$T/x.ra"
    assert_failure 65
    assert_output --partial "plan is for teacher $TID"
    assert_output --partial "content id $OID"
    [ ! -e "$T/x.ra" ]
    # same id, other shape: a plan for 2 layers
    printf '0 0\n0 0\n0 0\n0 0\n0 0\n0 0\n0 0\n0 0\n' | "$H/mk-scores" -L 2 -H 4 -G 2 -d 8 -i "$TID" -o "$T/s3.ra"
    ra-rank -q --top 1 -o "$T/p3.ra" "$T/s3.ra"
    run ra-graft -m "$T/m" -p "$T/p3.ra" -o "$T/x.ra"
    assert_failure 65
    assert_output --partial "plan is for a teacher of 2 layers"
}

@test "a student is not a teacher" {
    ra-graft -q -m "$T/m" -p "$T/p.ra" -o "$T/st.ra"
    run ra-graft -m "$T/st.ra" -p "$T/p.ra" -o "$T/x.ra"
    assert_failure 65
    assert_output --partial "already a hybrid student"
}

@test "options the teacher cannot take are usage errors naming the flag" {
    run ra-graft -m "$T/m" -p "$T/p.ra" --init attention --d-state 4 -o "$T/x.ra"
    assert_failure 64
    assert_output --partial "--init attention needs --d-state equal to head_dim (8), got 4"
    run ra-graft -m "$T/m" -p "$T/p.ra" --init svd --d-state 9 -o "$T/x.ra"
    assert_failure 64
    assert_output --partial "--init svd needs --d-state <= 8"
    run ra-graft -m "$T/m" -p "$T/p.ra" --init attention --qk-groups 1 -o "$T/x.ra"
    assert_failure 64
    assert_output --partial "--qk-groups"
    # layer 1 has 2 SSM heads, layer 0 has 3
    run ra-graft -m "$T/m" -p "$T/p.ra" --qk-groups 2 -o "$T/x.ra"
    assert_failure 64
    assert_output --partial "qk_groups = 2 does not divide layer 0's 3 SSM heads"
    run ra-graft -m "$T/m" -p "$T/p.ra" --layout parallel --adapter static -o "$T/x.ra"
    assert_failure 64
    assert_output --partial "--adapter"
    [ ! -e "$T/x.ra" ]
    for bad in "--layout diagonal" "--adapter linear" "--init random" "--d-state 0" "--seed -1" "--dtype i32" "--bogus"; do
        run ra-graft -m "$T/m" -p "$T/p.ra" $bad -o "$T/x.ra"
        assert_failure 64
    done
    run ra-graft -p "$T/p.ra"
    assert_failure 64
    assert_output --partial "need -m TEACHER and -p PLAN"
}

@test "missing and corrupt inputs" {
    run ra-graft -m "$T/nope" -p "$T/p.ra" -o "$T/x.ra"
    assert_failure 66
    run ra-graft -m "$T/m" -p "$T/nope.ra" -o "$T/x.ra"
    assert_failure 66
    head -c 300 "$T/p.ra" > "$T/cut.ra"
    run ra-graft -m "$T/m" -p "$T/cut.ra" -o "$T/x.ra"
    assert_failure 65
    [ ! -e "$T/x.ra" ]
}

@test "every init, every layout: deterministic per seed, different across seeds" {
    for args in "--init mohawk" "--init attention" "--init svd --d-state 3" "--layout parallel --init svd" \
                "--adapter none --qk-groups 1"; do
        ra-graft -q -m "$T/m" -p "$T/p.ra" $args --seed 5 -o "$T/a.ra"
        ra-graft -q -m "$T/m" -p "$T/p.ra" $args --seed 5 -o "$T/b.ra"
        ra-graft -q -m "$T/m" -p "$T/p.ra" $args --seed 6 -o "$T/c.ra"
        cmp "$T/a.ra" "$T/b.ra"
        ! cmp -s "$T/a.ra" "$T/c.ra"
    done
}

@test "the student goes through the other tools: stdout, --dtype, ra-show --hf-out and back, ra-eval" {
    ra-graft -q -m "$T/m" -p "$T/p.ra" --dtype bf16 > "$T/st.ra"
    run "$H/ra-testdata" describe "$T/st.ra"
    assert_line "tensor model.layers.0.mixer.in_proj.weight bf16 99x32"
    ra-show -q --hf-out "$T/hf" "$T/st.ra"
    [ "$(jq -c .ra_hybrid.kept_heads "$T/hf/config.json")" = "[[1],[0,3],[2]]" ]
    # the exported directory loads back as the same student
    "$H/ra-testdata" model-stream --dtype bf16 -o "$T/back.ra" "$T/hf"
    diff <("$H/ra-testdata" describe "$T/st.ra" | grep -v '^id') <("$H/ra-testdata" describe "$T/back.ra" | grep -v '^id')
    "$H/ra-testdata" tokens -o "$T/tok.ra" "1,2,3,4,5,6,7" "8,9,10"
    run ra-eval -q -m "$T/st.ra" --task logits -d "$T/tok.ra" --device cpu -o "$T/r.ra"
    assert_success
    run "$H/ra-testdata" describe "$T/r.ra"
    assert_line "tensor logits/0 f32 7x64"
}

@test "ra-probe refuses a hybrid student (it scores a teacher's heads)" {
    ra-graft -q -m "$T/m" -p "$T/p.ra" -o "$T/st.ra"
    run ra-probe -q -m "$T/st.ra" --tokenizer "$ROOT/tests/fixtures/tokenizers/llama3-style" \
        --pairs 3 --samples 2 --words "$ROOT/tests/fixtures/words.txt" --device cpu -o "$T/s2.ra"
    assert_failure 65
    assert_output --partial "hybrid student"
    [ ! -e "$T/s2.ra" ]
}

@test "--random-init: a teacher-shaped model of a config, deterministic per seed, usable as a teacher" {
    ra-graft -q --random-init "$T/m/config.json" --seed 3 -o "$T/r1.ra"
    ra-graft -q --random-init "$T/m" --seed 3 -o "$T/r2.ra"   # the directory works too
    ra-graft -q --random-init "$T/m" --seed 4 -o "$T/r3.ra"
    cmp "$T/r1.ra" "$T/r2.ra"
    ! cmp -s "$T/r1.ra" "$T/r3.ra"
    run "$H/ra-testdata" describe "$T/r1.ra"
    assert_line "kind model"
    assert_line "tensor model.layers.2.self_attn.k_proj.weight f32 16x32"
    assert_line "tensor lm_head.weight f32 64x32"
    refute_output --partial "hybrid"
    [ "$(meta "$T/r1.ra" | jq -c '.config.hidden_size, .config.num_hidden_layers')" = "$(printf '32\n3')" ]
    # norms 1, matrices small and centred (normal, std 0.02)
    ra-show -q --json "$T/r1.ra" > "$T/r1.json"
    [ "$(jq -c '[.tensors[] | select(.name == "model.norm.weight") | .values[]] | unique' "$T/r1.json")" = "[1]" ]
    jq -e '[.tensors[] | select(.name == "model.embed_tokens.weight") | .values[]] as $v
           | ($v | add / length | fabs < 0.002) and ($v | map(. * .) | add / length | sqrt | . > 0.018 and . < 0.022)' \
        "$T/r1.json"
    # it grafts like any teacher (its plan names its own content id)
    RID=$("$H/ra-testdata" id "$T/r1.ra")
    scores "$RID" "$T/rs.ra"
    ra-rank -q --top 4 -o "$T/rp.ra" "$T/rs.ra"
    run ra-graft -q -m "$T/r1.ra" -p "$T/rp.ra" -o "$T/rst.ra"
    assert_success
}

@test "--random-init: refusals" {
    run ra-graft --random-init "$T/m" -m "$T/m" -o "$T/x.ra"
    assert_failure 64
    assert_output --partial "--random-init: takes no -m"
    run ra-graft --random-init "$T/nothere" -o "$T/x.ra"
    assert_failure 66
    echo '{"model_type": "gpt2", "hidden_size": 8}' > "$T/bad.json"
    run ra-graft --random-init "$T/bad.json" -o "$T/x.ra"
    assert_failure 65
    assert_output --partial "model_type"
    [ ! -e "$T/x.ra" ]
}

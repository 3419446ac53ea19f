#!/usr/bin/env bats
# ra-merge: flags, exit codes, messages, and the overlay itself (checked with
# the test helper ra-mkstream, which writes streams and dumps their tensors'
# XXH64 so the expected result comes from the inputs, not from ra-merge).

load '/usr/lib/bats/bats-support/load'
load '/usr/lib/bats/bats-assert/load'

MK="$BATS_TEST_DIRNAME/../../build/tests/ra-mkstream"

setup() {
    cd "$BATS_TEST_TMPDIR"
    "$MK" -o base.ra <<'EOF'
kind model
meta {"config": {"hidden_size": 8, "layers": 2}, "note": "base"}
provenance {"tool": "test"}
tensor a f32 2x3 1
tensor b bf16 4 1
tensor c u8 5x2 1
EOF
    "$MK" -o part1.ra <<'EOF'
kind model
meta {"config": {"hidden_size": 8, "layers": 2}, "note": "part1"}
tensor b bf16 4 2
tensor d i32 3 2
EOF
    "$MK" -o part2.ra <<'EOF'
kind model
meta {"config": {"hidden_size": 8, "layers": 2}}
split 3
tensor d i32 3 3
tensor c u8 5x2 3
EOF
}

# hash of tensor NAME in stream FILE, from the helper's dump
hash_of() { "$MK" --dump "$2" | awk -v n="$1" '$1 == "tensor" && $2 == n { print $5 }'; }
id_of() { "$MK" --dump "$1" | awk '$1 == "id" { print $2 }'; }

@test "--help and --version exit 0 on stdout" {
    run ra-merge --help
    assert_success
    assert_output --partial "usage: ra-merge [-o OUT] [-q] BASE PART..."
    run ra-merge --version
    assert_success
    assert_output --regexp '^ra-merge \(ra\) [0-9]+\.[0-9]+\.[0-9]+$'
}

@test "usage errors exit 64" {
    run ra-merge
    assert_failure 64
    assert_output --partial "need BASE and at least one PART"
    run ra-merge base.ra
    assert_failure 64
    run ra-merge -x base.ra part1.ra
    assert_failure 64
    assert_output --partial "unknown option -x"
    run ra-merge base.ra part1.ra -o
    assert_failure 64
    assert_output --partial "-o needs a file name"
    run ra-merge - part1.ra
    assert_failure 64
    assert_output --partial "cannot be read twice"
}

@test "missing input exits 66 naming it" {
    run ra-merge -o out.ra base.ra nope.ra
    assert_failure 66
    assert_output --partial "nope.ra"
    [ ! -e out.ra ]
}

@test "a pipe as input is refused with 66" {
    run bash -c 'ra-merge -o out.ra base.ra <(cat part1.ra)'
    assert_failure 66
    assert_output --partial "not a regular file"
}

@test "overlay: later parts win, BASE order kept, new tensors appended in part order" {
    run ra-merge -q -o out.ra base.ra part1.ra part2.ra
    assert_success
    assert_output ""
    run "$MK" --dump out.ra
    assert_success
    # order and descriptions
    run bash -c "'$MK' --dump out.ra | awk '\$1 == \"tensor\" { print \$2, \$3, \$4 }'"
    assert_output "a f32 2x3
b bf16 4
c u8 5x2
d i32 3"
    # data from the winners
    [ "$(hash_of a out.ra)" = "$(hash_of a base.ra)" ]
    [ "$(hash_of b out.ra)" = "$(hash_of b part1.ra)" ]
    [ "$(hash_of c out.ra)" = "$(hash_of c part2.ra)" ]
    [ "$(hash_of d out.ra)" = "$(hash_of d part2.ra)" ]
    [ "$(hash_of b out.ra)" != "$(hash_of b base.ra)" ]
    [ "$(hash_of d out.ra)" != "$(hash_of d part1.ra)" ]
    # meta is BASE's; provenance records the inputs with their content ids
    run bash -c "'$MK' --dump out.ra | grep '^meta '"
    assert_output 'meta {"config":{"hidden_size":8,"layers":2},"note":"base"}'
    run bash -c "'$MK' --dump out.ra | grep '^provenance '"
    assert_output "provenance {\"inputs\":[{\"id\":\"$(id_of base.ra)\",\"path\":\"base.ra\"},{\"id\":\"$(id_of part1.ra)\",\"path\":\"part1.ra\"},{\"id\":\"$(id_of part2.ra)\",\"path\":\"part2.ra\"}],\"params\":{},\"tool\":\"ra-merge\",\"version\":\"$(ra-merge --version | awk '{print $3}')\"}"
    run bash -c "'$MK' --dump out.ra | grep '^kind '"
    assert_output "kind model"
}

@test "stdout by default, same bytes as -o, and deterministic" {
    ra-merge -q base.ra part1.ra part2.ra > stdout.ra
    ra-merge -q -o file.ra base.ra part1.ra part2.ra
    cmp stdout.ra file.ra
    ra-merge -q -o again.ra base.ra part1.ra part2.ra
    cmp file.ra again.ra
}

@test "without -q a summary goes to stderr, never to stdout" {
    ra-merge base.ra part1.ra part2.ra > out.ra 2> err.txt
    run cat err.txt
    assert_output --partial "4 tensors (2 replaced, 1 added) from 3 inputs, content id $(id_of out.ra)"
    "$MK" --dump out.ra > /dev/null
}

@test "a part in a different order than BASE (inputs re-read) and multi-part tensors" {
    "$MK" -o big.ra <<'EOF'
kind model
meta {"config": {"hidden_size": 8, "layers": 2}}
split 5
tensor z f32 40 1
tensor y f64 9x3 1
tensor x u8 100 1
EOF
    "$MK" -o rev.ra <<'EOF'
kind model
meta {"config": {"hidden_size": 8, "layers": 2}}
split 7
tensor x u8 100 5
tensor y f64 9x3 5
tensor z f32 40 5
EOF
    run ra-merge -q -o out.ra big.ra rev.ra
    assert_success
    for n in x y z; do
        [ "$(hash_of $n out.ra)" = "$(hash_of $n rev.ra)" ]
    done
    run bash -c "'$MK' --dump out.ra | awk '\$1 == \"tensor\" { print \$2 }' | tr '\n' ' '"
    assert_output "z y x "
}

@test "a corrupt input exits 65 naming it, and nothing is written" {
    cp part1.ra bad.ra
    size=$(stat -c %s bad.ra)
    printf '\x5a' | dd of=bad.ra bs=1 seek=$((size - 70)) conv=notrunc status=none
    echo old > out.ra
    run ra-merge -o out.ra base.ra bad.ra
    assert_failure 65
    assert_output --partial "bad.ra"
    assert_output --partial "bad digest"
    [ "$(cat out.ra)" = old ]
    [ -z "$(ls -A | grep '\.tmp\.')" ]
}

@test "a truncated input exits 65 naming it" {
    head -c 150 part2.ra > cut.ra
    run ra-merge -o out.ra base.ra cut.ra
    assert_failure 65
    assert_output --partial "cut.ra"
    assert_output --partial "truncated"
    [ ! -e out.ra ]
    head -c 150 base.ra > cutbase.ra
    run ra-merge -o out.ra cutbase.ra part1.ra
    assert_failure 65
    assert_output --partial "cutbase.ra"
}

@test "not a ra stream exits 65" {
    echo '{"format": "ra"}' > text.ra
    run ra-merge -o out.ra base.ra text.ra
    assert_failure 65
    assert_output --partial "text.ra: header: not a ra stream"
}

@test "kind mismatch exits 65 naming both files and kinds" {
    printf 'kind scores\nmeta {"config": {"hidden_size": 8, "layers": 2}}\ntensor b bf16 4\n' | "$MK" -o scores.ra
    run ra-merge -o out.ra base.ra scores.ra
    assert_failure 65
    assert_output --partial "scores.ra: kind 'scores' differs from base.ra's kind 'model'"
    [ ! -e out.ra ]
}

@test "config mismatch exits 65 naming the key" {
    printf 'kind model\nmeta {"config": {"hidden_size": 16, "layers": 2}}\n' | "$MK" -o wide.ra
    run ra-merge -o out.ra base.ra wide.ra
    assert_failure 65
    assert_output --partial "wide.ra: meta.config.hidden_size is 16 but base.ra has 8"
    printf 'kind model\nmeta {"config": {"hidden_size": 8, "layers": 2, "extra": true}}\n' | "$MK" -o extra.ra
    run ra-merge -o out.ra base.ra extra.ra
    assert_failure 65
    assert_output --partial "meta.config.extra is true but base.ra has (absent)"
    printf 'kind model\n' | "$MK" -o noconf.ra
    run ra-merge -o out.ra base.ra noconf.ra
    assert_failure 65
    assert_output --partial "noconf.ra: meta.config is (absent)"
}

@test "hybrid structure mismatch exits 65 naming the key" {
    printf 'kind model\nmeta {"config": {"hidden_size": 8, "layers": 2}, "hybrid": {"layout": "routed", "d_state": 8}}\n' | "$MK" -o h1.ra
    printf 'kind model\nmeta {"config": {"hidden_size": 8, "layers": 2}, "hybrid": {"layout": "routed", "d_state": 4}}\n' | "$MK" -o h2.ra
    run ra-merge -o out.ra h1.ra h2.ra
    assert_failure 65
    assert_output --partial "h2.ra: meta.hybrid.d_state is 4 but h1.ra has 8"
    [ ! -e out.ra ]
    run ra-merge -o out.ra base.ra h1.ra
    assert_failure 65
    assert_output --partial "h1.ra: meta.hybrid is"
    run ra-merge -o out.ra h1.ra h1.ra
    assert_success
}

@test "dtype or shape mismatch of a tensor exits 65 naming it" {
    printf 'kind model\nmeta {"config": {"hidden_size": 8, "layers": 2}}\ntensor a f32 3x2\n' | "$MK" -o shape.ra
    run ra-merge -o out.ra base.ra shape.ra
    assert_failure 65
    assert_output --partial "shape.ra: tensor 'a' is f32 [3,2] but base.ra has f32 [2,3]"
    printf 'kind model\nmeta {"config": {"hidden_size": 8, "layers": 2}}\ntensor b f16 4\n' | "$MK" -o dtype.ra
    run ra-merge -o out.ra base.ra dtype.ra
    assert_failure 65
    assert_output --partial "tensor 'b' is f16 [4] but base.ra has bf16 [4]"
    # a tensor only parts have must agree between the parts too
    printf 'kind model\nmeta {"config": {"hidden_size": 8, "layers": 2}}\ntensor d i32 4\n' | "$MK" -o d4.ra
    run ra-merge -o out.ra base.ra part1.ra d4.ra
    assert_failure 65
    assert_output --partial "d4.ra: tensor 'd' is i32 [4] but part1.ra has i32 [3]"
    [ ! -e out.ra ]
}

@test "an output that cannot be created exits 73 naming it" {
    run ra-merge -q -o /nonexistent-dir/out.ra base.ra part1.ra
    assert_failure 73
    assert_output --partial "/nonexistent-dir/out.ra"
}

@test "binary output to a terminal is refused with 64" {
    command -v script >/dev/null || skip "script(1) not installed"
    run script -qec "ra-merge base.ra part1.ra" /dev/null
    assert_failure 64
    assert_output --partial "terminal"
}

@test "a write error on stdout exits 74" {
    [ -w /dev/full ] || skip "no /dev/full"
    run bash -c 'ra-merge -q base.ra part1.ra > /dev/full'
    assert_failure 74
    assert_output --partial "write failed"
}

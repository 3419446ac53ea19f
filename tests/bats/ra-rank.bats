#!/usr/bin/env bats
# ra-rank: ranking, selection modes, the plan it writes, the table, the plot, errors.

load '/usr/lib/bats/bats-support/load'
load '/usr/lib/bats/bats-assert/load'

HELPERS="$BATS_TEST_DIRNAME/../../build/tests"

# 3 layers x 4 heads (2 KV groups of 2), head_dim 16.  Lines: acc_drop logprob_drop [exact],
# (layer, head) order.  Ties: (0,1)/(1,0) on acc (log-prob decides), (0,0)/(0,2) on both
# (position decides).
scores_values() {
    cat <<'EOF'
0.1 0.5
0.3 0.2
0.1 0.5
0.0 0.9
0.3 0.7
0.2 -0.1
0.0 0.0
0.5 0.1
0.0 1.5
0.1 0.6
0.2 0.3
0.0 0.05
EOF
}

setup() {
    S="$BATS_TEST_TMPDIR/s.ra"
    scores_values | "$HELPERS/mk-scores" -L 3 -H 4 -G 2 -d 16 -o "$S"
}

# "rank layer head" of the table, one line per head
ranking() { awk 'NR > 1 { print $1, $2, $3 }'; }

@test "--help and --version exit 0 on stdout" {
    run ra-rank --help
    assert_success
    assert_output --partial "Usage: ra-rank"
    run ra-rank --version
    assert_success
    assert_output --regexp '^ra-rank \(ra\) [0-9]'
}

@test "--table: header line, then every head ranked by accuracy drop, ties by log-prob drop, then position" {
    run ra-rank -q --top 3 --table "$S"
    assert_success
    assert_line --index 0 "rank layer head acc_drop logprob_drop"
    [ "${#lines[@]}" -eq 13 ]
    got=$(printf '%s\n' "${lines[@]}" | ranking | tr '\n' ';')
    assert_equal "$got" "1 1 3;2 1 0;3 0 1;4 2 2;5 1 1;6 2 1;7 0 0;8 0 2;9 2 0;10 0 3;11 2 3;12 1 2;"
    assert_line --index 1 "1 1 3 0.5 0.1"
    assert_line --index 12 "12 1 2 0 0"
}

@test "--by logprob ranks by log-prob drop, ties by accuracy drop, then position" {
    run ra-rank -q --top 1 --by logprob --table "$S"
    assert_success
    got=$(printf '%s\n' "${lines[@]}" | ranking | tr '\n' ';')
    assert_equal "$got" "1 2 0;2 0 3;3 1 0;4 2 1;5 0 0;6 0 2;7 2 2;8 0 1;9 1 3;10 2 3;11 1 2;12 1 1;"
}

@test "--top K writes a plan with the K best heads, sorted per layer, and the totals" {
    ra-rank -q --top 7 -o "$BATS_TEST_TMPDIR/p.ra" "$S"
    run "$HELPERS/plan-info" "$BATS_TEST_TMPDIR/p.ra"
    assert_success
    assert_line "teacher 0123456789abcdef0123456789abcdef"
    assert_line "shape 3 4 2 16"
    assert_line "kept 7"
    # 7 heads x 2 x 16 x 2 bytes; shared: 5 distinct (layer, KV group)
    assert_line "kv 448 320"
    assert_line "layer 0: 0 1"
    assert_line "layer 1: 0 1 3"
    assert_line "layer 2: 1 2"
    assert_line --partial '"by":"acc"'
    assert_line --partial '"mode":"top"'
    assert_line --partial '"value":7'
}

@test "the plan goes to stdout, scores come from stdin" {
    ra-rank -q --top 2 < "$S" > "$BATS_TEST_TMPDIR/p.ra"
    run "$HELPERS/plan-info" "$BATS_TEST_TMPDIR/p.ra"
    assert_line "layer 0:"
    assert_line "layer 1: 0 3"
}

@test "--top 0 is a pure-SSM plan" {
    ra-rank -q --top 0 -o "$BATS_TEST_TMPDIR/p.ra" "$S"
    run "$HELPERS/plan-info" "$BATS_TEST_TMPDIR/p.ra"
    assert_line "kept 0"
    assert_line "kv 0 0"
}

@test "--fraction 1 keeps every head; --fraction rounds to the nearest count" {
    ra-rank -q --fraction 1 -o "$BATS_TEST_TMPDIR/p.ra" "$S"
    run "$HELPERS/plan-info" "$BATS_TEST_TMPDIR/p.ra"
    assert_line "kept 12"
    assert_line "kv 768 384"
    ra-rank -q --fraction 0.3 -o "$BATS_TEST_TMPDIR/p.ra" "$S"   # 3.6 -> 4
    run "$HELPERS/plan-info" "$BATS_TEST_TMPDIR/p.ra"
    assert_line "kept 4"
    assert_line "layer 2: 2"
}

@test "--threshold keeps every head whose score is at least T" {
    ra-rank -q --threshold 0.2 -o "$BATS_TEST_TMPDIR/p.ra" "$S"
    run "$HELPERS/plan-info" "$BATS_TEST_TMPDIR/p.ra"
    assert_line "kept 5"
    assert_line "layer 0: 1"
    assert_line "layer 1: 0 1 3"
    assert_line "layer 2: 2"
    ra-rank -q --threshold 0.6 --by logprob -o "$BATS_TEST_TMPDIR/p.ra" "$S"
    run "$HELPERS/plan-info" "$BATS_TEST_TMPDIR/p.ra"
    assert_line "kept 4"
    assert_line "layer 2: 0 1"
}

@test "heads measured exactly rank before heads only estimated (hybrid scores)" {
    # head (0,3) estimated: NaN accuracy drop, the largest log-prob estimate
    scores_values | sed '4s/.*/nan 9.0 0/' | "$HELPERS/mk-scores" -L 3 -H 4 -G 2 -o "$BATS_TEST_TMPDIR/h.ra"
    run ra-rank -q --top 1 --table "$BATS_TEST_TMPDIR/h.ra"
    assert_line --index 12 "12 0 3 nan 9"
    run ra-rank -q --top 1 --by logprob --table "$BATS_TEST_TMPDIR/h.ra"
    assert_line --index 1 "1 2 0 0 1.5"
    assert_line --index 12 "12 0 3 nan 9"
}

@test "summary on stderr names the count and KV bytes; -q silences it" {
    run ra-rank --top 3 -o "$BATS_TEST_TMPDIR/p.ra" "$S"
    assert_success
    assert_output --partial "kept 3 of 12 heads"
    assert_output --partial "192 bytes/token"
    run ra-rank -q --top 3 -o "$BATS_TEST_TMPDIR/p.ra" "$S"
    assert_output ""
}

@test "--plot draws an SVG and a PNG heatmap" {
    ra-rank -q --top 3 --plot "$BATS_TEST_TMPDIR/h.svg" -o /dev/null "$S"
    grep -q '<svg' "$BATS_TEST_TMPDIR/h.svg"
    ra-rank -q --top 3 --plot "$BATS_TEST_TMPDIR/h.png" -o /dev/null "$S"
    run head -c 4 "$BATS_TEST_TMPDIR/h.png"
    assert_output --partial "PNG"
    # no temporary files left beside the plots
    run ls -A "$BATS_TEST_TMPDIR"
    refute_output --partial ".tmp."
}

@test "--plot without gnuplot on PATH fails clearly" {
    mkdir -p "$BATS_TEST_TMPDIR/nognuplot"
    run env PATH="$BATS_TEST_TMPDIR/nognuplot" "$(command -v ra-rank)" --top 3 --plot "$BATS_TEST_TMPDIR/x.png" -o /dev/null "$S"
    assert_failure 69
    assert_output --partial "gnuplot"
    [ ! -e "$BATS_TEST_TMPDIR/x.png" ]
}

@test "--plot with another extension is a usage error" {
    run ra-rank --top 3 --plot "$BATS_TEST_TMPDIR/x.jpg" "$S"
    assert_failure 64
    assert_output --partial ".png or .svg"
}

@test "no selection, or two, is a usage error" {
    run ra-rank "$S"
    assert_failure 64
    assert_output --partial "exactly one of"
    run ra-rank --top 2 --threshold 0.1 "$S"
    assert_failure 64
    assert_output --partial "exactly one of"
}

@test "bad flag values are usage errors" {
    run ra-rank --top -1 "$S"
    assert_failure 64
    run ra-rank --fraction 1.5 "$S"
    assert_failure 64
    run ra-rank --top 2 --by speed "$S"
    assert_failure 64
    assert_output --partial "acc or logprob"
    run ra-rank --top 2 --bogus "$S"
    assert_failure 64
    run ra-rank --top
    assert_failure 64
}

@test "K larger than the number of heads is a usage error" {
    run ra-rank --top 13 -o "$BATS_TEST_TMPDIR/p.ra" "$S"
    assert_failure 64
    assert_output --partial "only 12 heads"
    [ ! -e "$BATS_TEST_TMPDIR/p.ra" ]
}

@test "empty, truncated or foreign input is bad data (65); a missing file is 66" {
    : > "$BATS_TEST_TMPDIR/empty.ra"
    run ra-rank --top 1 -o /dev/null "$BATS_TEST_TMPDIR/empty.ra"
    assert_failure 65
    assert_output --partial "empty.ra"
    run ra-rank --top 1 -o /dev/null < "$BATS_TEST_TMPDIR/empty.ra"
    assert_failure 65
    head -c 200 "$S" > "$BATS_TEST_TMPDIR/trunc.ra"
    run ra-rank --top 1 -o /dev/null "$BATS_TEST_TMPDIR/trunc.ra"
    assert_failure 65
    scores_values | "$HELPERS/mk-scores" -L 3 -H 4 -k plan -o "$BATS_TEST_TMPDIR/kind.ra"
    run ra-rank --top 1 -o /dev/null "$BATS_TEST_TMPDIR/kind.ra"
    assert_failure 65
    assert_output --partial "expected 'scores'"
    run ra-rank --top 1 -o /dev/null "$BATS_TEST_TMPDIR/missing.ra"
    assert_failure 66
}

@test "scores whose exact heads have no accuracy drop are refused" {
    scores_values | sed '2s/.*/nan 0.2 1/' | "$HELPERS/mk-scores" -L 3 -H 4 -o "$BATS_TEST_TMPDIR/bad.ra"
    run ra-rank --top 1 -o /dev/null "$BATS_TEST_TMPDIR/bad.ra"
    assert_failure 65
    assert_output --partial "acc_drop"
    assert_output --partial "layer 0 head 1"
}

@test "same input, same plan (content id)" {
    ra-rank -q --top 4 -o "$BATS_TEST_TMPDIR/a.ra" "$S"
    ra-rank -q --top 4 -o "$BATS_TEST_TMPDIR/b.ra" "$S"
    cmp "$BATS_TEST_TMPDIR/a.ra" "$BATS_TEST_TMPDIR/b.ra"
}

# keep tensor of a plan as one line of 0/1 (layer-major)
keep_bits() { "$HELPERS/plan-info" "$1" | sed -n 's/^layer [0-9]*://p' | tr '\n' ';'; }

@test "--random K keeps K heads, the same ones for a seed, whatever the scores" {
    ra-rank -q --random 3 --seed 7 -o "$BATS_TEST_TMPDIR/a.ra" "$S"
    ra-rank -q --random 3 --seed 7 -o "$BATS_TEST_TMPDIR/b.ra" "$S"
    cmp "$BATS_TEST_TMPDIR/a.ra" "$BATS_TEST_TMPDIR/b.ra"
    run "$HELPERS/plan-info" "$BATS_TEST_TMPDIR/a.ra"
    assert_line "kept 3"
    assert_line --partial '"mode":"random"'
    assert_line --partial '"seed":7'
    assert_line --partial '"value":3'
    # other scores of the same shape (reversed): the same random heads
    scores_values | tac | "$HELPERS/mk-scores" -L 3 -H 4 -G 2 -d 16 -o "$BATS_TEST_TMPDIR/rev.ra"
    ra-rank -q --random 3 --seed 7 -o "$BATS_TEST_TMPDIR/c.ra" "$BATS_TEST_TMPDIR/rev.ra"
    [ "$(keep_bits "$BATS_TEST_TMPDIR/a.ra")" = "$(keep_bits "$BATS_TEST_TMPDIR/c.ra")" ]
    # --random 0 and --random all
    ra-rank -q --random 0 -o "$BATS_TEST_TMPDIR/z.ra" "$S"
    run "$HELPERS/plan-info" "$BATS_TEST_TMPDIR/z.ra"
    assert_line "kept 0"
    ra-rank -q --random 12 -o "$BATS_TEST_TMPDIR/all.ra" "$S"
    run "$HELPERS/plan-info" "$BATS_TEST_TMPDIR/all.ra"
    assert_line "kept 12"
    assert_line "layer 1: 0 1 2 3"
}

@test "--random: seeds give different heads, every head about equally often" {
    # 240 seeds x 3 of 12 heads: each head is expected 60 times (binomial sd 6.7)
    for seed in $(seq 1 240); do
        ra-rank -q --random 3 --seed "$seed" -o "$BATS_TEST_TMPDIR/p.ra" "$S"
        "$HELPERS/plan-info" "$BATS_TEST_TMPDIR/p.ra" | sed -n 's/^layer \([0-9]*\):/\1/p' |
            awk '{ for (i = 2; i <= NF; i++) print $1 ":" $i }'
    done | sort | uniq -c >"$BATS_TEST_TMPDIR/counts"
    [ "$(wc -l <"$BATS_TEST_TMPDIR/counts")" -eq 12 ]
    [ "$(awk '{ s += $1 } END { print s }' "$BATS_TEST_TMPDIR/counts")" -eq 720 ]
    run awk '$1 < 35 || $1 > 85' "$BATS_TEST_TMPDIR/counts"
    assert_output ""
    # not the ranking: the 3 best heads (1:3 1:0 0:1) are not always the kept ones
    ra-rank -q --random 3 --seed 1 -o "$BATS_TEST_TMPDIR/r1.ra" "$S"
    ra-rank -q --random 3 --seed 2 -o "$BATS_TEST_TMPDIR/r2.ra" "$S"
    [ "$(keep_bits "$BATS_TEST_TMPDIR/r1.ra")" != "$(keep_bits "$BATS_TEST_TMPDIR/r2.ra")" ]
}

@test "--random: summary names the seed; K too large, --seed without --random, two selections are usage errors" {
    run ra-rank --random 2 --seed 3 -o "$BATS_TEST_TMPDIR/p.ra" "$S"
    assert_success
    assert_output --partial "kept 2 of 12 heads"
    assert_output --partial "at random (seed 3)"
    run ra-rank --random 13 -o "$BATS_TEST_TMPDIR/x.ra" "$S"
    assert_failure 64
    assert_output --partial "only 12 heads"
    run ra-rank --top 2 --seed 3 "$S"
    assert_failure 64
    assert_output --partial "--seed applies only to --random"
    run ra-rank --top 2 --random 2 "$S"
    assert_failure 64
    assert_output --partial "exactly one of"
    run ra-rank --random 2 --seed -1 "$S"
    assert_failure 64
}

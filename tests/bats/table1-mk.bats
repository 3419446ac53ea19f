#!/usr/bin/env bats
# pipelines/table1.mk end to end on CPU with tiny budgets: the whole grid
# (probe -> rank -> graft -> stage 2 per layer -> stage 3 -> eval -> report),
# every artifact verifies and is what its configuration says, ranks are
# deterministic, a second make does nothing, a stage-3 change reruns only
# stage 3 and eval, a corrupted intermediate is detected and rebuilt.
#
# TEACHER: the committed trained teacher (tests/fixtures/teacher: 8 layers
# x 8 heads, head_dim 32, vocabulary 8192; it retrieves).  On CPU a
# configuration costs a few seconds, most of it ra-eval's perplexity, so mk()
# runs a reduced grid (GRID below: every layout, both state sizes, both init
# variants and a random control, 19 configurations) on little held-out text
# (DATA_TEXT: four small files, the fourth held out; 2 KV documents).  The
# default grid's arithmetic on this teacher's shape (64 heads, head_dim 32) is
# tested against table1-configs.sh and print-CONFIGS in the last test.

load '/usr/lib/bats/bats-support/load'
load '/usr/lib/bats/bats-assert/load'

ROOT="$(cd "$BATS_TEST_DIRNAME/../.." && pwd)"
TEACHER="$ROOT/tests/fixtures/teacher"
# 64 heads, hd 32: K = 0, round(1.28) -> 1, 64; N = 32, 32/8 -> 4
GRID=(KEEP="0 2% all" LAYOUTS="routed parallel" D_STATES="hd hd/8" INIT_VARIANTS="attention svd" INIT_AT=2%
      RANDOM_AT=2% RANDOM_LAYOUTS="routed parallel")

setup() {
    export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
    O="$BATS_FILE_TMPDIR/out"
    REP="$BATS_FILE_TMPDIR/results"
}

# The pipeline with CI budgets on the reduced grid; extra arguments go to
# make (after GRID: they override it).
# (MAKEFLAGS/MAKELEVEL cleared: under `make test` the outer make's would add
# "Entering directory" lines and its flags)
mk_grid() {
    MAKEFLAGS= MFLAGS= MAKELEVEL= make --no-print-directory -f "$ROOT/pipelines/table1.mk" TEACHER="$TEACHER" OUT="${OUT_DIR:-$O}" REPORT="$REP" DEVICE=cpu JOBS=1 \
        WORDS="$ROOT/tests/fixtures/words.txt" PROBE_PAIRS=4 PROBE_SAMPLES=8 SEQ_LEN=32 BATCH=2 \
        S2_TOKENS=128 S3_TOKENS=128 EVAL_PAIRS=2,4 EVAL_SAMPLES=4 MEM_LENGTHS=128,2048,4096 \
        SPEED_FLAGS="--max-batch 1 --prompt-len 8 --gen-len 4" DATA_KV_DOCS=40 DATA_HELDOUT_DOCS=2 \
        DATA_TEXT="$ROOT/tests/fixtures/README.md $ROOT/formats/plan.md $ROOT/formats/scores.md $ROOT/tests/fixtures/words.README" "$@"
}
mk() { mk_grid "${GRID[@]}" "$@"; }

# meta of a ra stream as JSON (from ra-show's summary: no tensor values)
meta() { ra-show -q "$1" | awk '/^meta /{ p = 1; sub(/^meta +/, "") } /^provenance/{ p = 0 } p'; }

# "path mtime" of every file under $O (stamps excluded)
mtimes() { find "$O" -path "$O/.verified" -prune -o -type f -printf '%p %T@\n' | sort; }

@test "table1.mk: the grid, every artifact verifies and matches its configuration, the report" {
    run mk
    assert_success
    mk print-CONFIGS >"$BATS_FILE_TMPDIR/configs"
    # 8 layers x 8 heads, hd 32 (GRID): K in {0, 1, 64}; 2 layouts x 2 state sizes (32, 4), less
    # routed/64/4: 11; attention (N=32) and svd (N=32, 4) at 1 head, both layouts: 6; random 1 head
    # in both layouts: 2
    ncfg=$(wc -l <"$BATS_FILE_TMPDIR/configs")
    ngrid=$(awk '$2 == "grid"' "$BATS_FILE_TMPDIR/configs" | wc -l)
    hd=$(awk '{ if ($5 > m) m = $5 } END { print m }' "$BATS_FILE_TMPDIR/configs")   # the largest N is hd
    n8=$(awk '{ if (m == "" || $5 < m) m = $5 } END { print m }' "$BATS_FILE_TMPDIR/configs")
    all=$(awk '{ if ($3 > m) m = $3 } END { print m }' "$BATS_FILE_TMPDIR/configs")
    k2=$(awk '$2 == "init" { print $3; exit }' "$BATS_FILE_TMPDIR/configs")
    [ "$ncfg" -eq 19 ]
    [ "$ngrid" -eq 11 ]
    [ "$hd" -eq 32 ]
    [ "$n8" -eq 4 ]
    [ "$all" -eq 64 ]
    [ "$k2" = 1 ]
    [ "$(awk '$2 == "init"' "$BATS_FILE_TMPDIR/configs" | wc -l)" -eq 6 ]
    [ "$(awk '$2 == "random"' "$BATS_FILE_TMPDIR/configs" | wc -l)" -eq 2 ]
    # every ra artifact (scores, plans, students, stage-2 parts, results, data) verifies
    n=0
    while read -r f; do
        ra-show -q --verify "$f" >/dev/null || { echo "does not verify: $f"; return 1; }
        n=$((n + 1))
    done < <(find "$O" -name '*.ra' -not -path '*/ck-*' -not -path '*/.verified/*')
    [ "$n" -gt 100 ]
    # each configuration's student and plan are what its name says; results are results
    for f in "$O"/student3-*.ra "$O"/plan-*.ra; do echo "$(ra-show -q --id "$f") $f"; done >"$BATS_FILE_TMPDIR/ids"
    by_id() { awk -v id="$1" '$1 == id { print $2 }' "$BATS_FILE_TMPDIR/ids"; }
    while read -r name group k layout n init select res; do
        [ "$(ra-show -q --json "$res" | jq -r .kind)" = results ]
        s3=$(by_id "$(meta "$res" | jq -r .model)")
        [ -n "$s3" ] || { echo "$name: no student3 with the id its results name"; return 1; }
        h=$(meta "$s3" | jq -c '.hybrid | [.layout, .d_state, .init, ([.kept_heads[] | length] | add)]')
        [ "$h" = "[\"$layout\",$n,\"$init\",$k]" ] || { echo "$name: student3 has $h"; return 1; }
        p=$(by_id "$(meta "$s3" | jq -r .hybrid.plan)")
        [ "$(meta "$p" | jq -r .selection.mode)" = "$select" ]
    done <"$BATS_FILE_TMPDIR/configs"
    # one JSON per configuration and the teacher's
    [ "$(ls "$O"/json/*.json | wc -l)" -eq $((ncfg + 1)) ]
    # the report: a retrieval row and an LM row per grid configuration, every section, the plots
    [ -s "$REP/table1.md" ]
    [ "$(grep -cE '^\| [0-9]+ \([0-9.]+%\) \| (routed|parallel) \| [0-9]+ \|' "$REP/table1.md")" -eq "$ngrid" ]
    grep -qF "| 0 (0.0%) | routed | $hd |" "$REP/table1.md"
    grep -qF "| $all (100.0%) | parallel | $n8 |" "$REP/table1.md"
    for s in "## The teacher" "## Retrieval (the grid)" "## Language modelling, memory and speed (the grid)" \
        "## Initialisation at $k2 heads kept" "## Control: ranked heads vs the same number of random heads" \
        "## What reproduces the paper" "## Defaults"; do
        grep -qF "$s" "$REP/table1.md" || { echo "missing: $s"; return 1; }
    done
    grep -qF "| routed | $hd | attention |" "$REP/table1.md"
    grep -qF "| parallel | $n8 | svd |" "$REP/table1.md"
    # 4 prompts per pair count decide nothing (the teacher retrieves, but the criterion is 100):
    # the report must say so, not claim anything
    grep -q 'No verdict: too few prompts' "$REP/table1.md"
    for p in coverage memory kv-routed-n$hd kv-routed-n$n8 kv-parallel-n$hd kv-parallel-n$n8; do
        [ "$(head -c 4 "$REP/table1/$p.png" | tail -c 3)" = PNG ] || { echo "not a PNG: $p"; return 1; }
    done
    # the memory column is the model's own arithmetic: 0 heads = SSM state only, the same at every length
    row=$(grep -F "| 0 | routed | $hd |" "$REP/table1.md")
    [ "$(cut -d'|' -f7 <<<"$row")" = "$(cut -d'|' -f9 <<<"$row")" ]
}

@test "table1.mk: ranks are deterministic (a second probe and rank from scratch)" {
    OUT_DIR="$BATS_FILE_TMPDIR/out2" run mk plans
    assert_success
    for f in "$O"/scores-*.ra "$O"/plan-*.ra; do
        cmp "$f" "$BATS_FILE_TMPDIR/out2/$(basename "$f")"
    done
    [ "$(ls "$BATS_FILE_TMPDIR"/out2/plan-*.ra | wc -l)" -eq "$(ls "$O"/plan-*.ra | wc -l)" ]
}

@test "table1.mk: a second make does nothing" {
    before=$(mtimes)
    run mk -q
    assert_success
    run mk
    assert_success
    assert_output --partial "Nothing to be done"
    refute_output --partial "ra-"
    [ "$(mtimes)" = "$before" ]
}

@test "table1.mk: changing stage 3's budget reruns stage 3 and eval only" {
    s0s2=$(ls -l --time-style=+%s.%N "$O"/student0-*.ra "$O"/student2-*.ra "$O"/scores-*.ra "$O"/plan-*.ra)
    old3=$(ls "$O"/student3-*.ra)
    ncfg=$(mk print-CONFIGS | wc -l)
    run mk S3_TOKENS=64
    assert_success
    [ "$(grep -c '^ra-mohawk3 ' <<<"$output")" -eq "$ncfg" ]
    [ "$(grep -c '^ra-eval ' <<<"$output")" -eq "$ncfg" ]
    [ "$(grep -v '^printf ' <<<"$output" | grep -cE '(^|[ ;|])ra-(probe|rank|graft|mohawk2|merge|tok) ')" -eq 0 ]
    [ "$(ls -l --time-style=+%s.%N "$O"/student0-*.ra "$O"/student2-*.ra "$O"/scores-*.ra "$O"/plan-*.ra)" = "$s0s2" ]
    # new stage-3 students beside the old ones, which are untouched
    [ "$(ls "$O"/student3-*.ra | wc -l)" -eq $((2 * ncfg)) ]
    for f in $old3; do [ -e "$f" ]; done
    grep -q -- '--tokens 64' "$REP/table1.md"
    run mk S3_TOKENS=64 -q
    assert_success
}

@test "table1.mk: a corrupted student2 is detected, named and rebuilt" {
    f=$(ls "$O"/student2-*.ra | head -1)
    cp "$f" "$BATS_FILE_TMPDIR/good.ra"
    parts=$(ls -l --time-style=+%s.%N "$O"/s2-*/part-*.ra)
    size=$(stat -c %s "$f")
    printf '\x5a\xa5\x5a' | dd of="$f" bs=1 seek=$((size / 2)) conv=notrunc 2>/dev/null
    run ra-show -q --verify "$f"
    assert_failure 65
    run mk
    assert_success
    assert_output --partial "table1.mk: $f failed verification"
    assert_output --partial "bad digest"
    assert_output --partial "$f removed (it will be rebuilt)"
    # rebuilt from the kept stage-2 parts: the same bytes (CPU training is deterministic)
    assert_output --partial "ra-merge -q -o $f"
    [ "$(grep -cE '(^|[ ;|])ra-(probe|rank|graft|mohawk3|eval) ' <<<"$output")" -eq 0 ]
    [ "$(ls -l --time-style=+%s.%N "$O"/s2-*/part-*.ra)" = "$parts" ] # no layer retrained
    cmp "$f" "$BATS_FILE_TMPDIR/good.ra"
    run mk -q
    assert_success
}

@test "table1.mk: a corrupted stage-2 part is detected; a truncated results stream too" {
    part=$(ls "$O"/s2-*/part-0.ra | head -1)
    s2="$O/student2-$(basename "$(dirname "$part")" | sed 's/^s2-//').ra"
    cp "$part" "$BATS_FILE_TMPDIR/part.ra"
    truncate -s -7 "$part"
    rm "$s2"
    run mk
    assert_success
    assert_output --partial "table1.mk: $part failed verification"
    ra-show -q --verify "$part"
    cmp "$part" "$BATS_FILE_TMPDIR/part.ra"
    res=$(mk print-CONFIGS | awk '{ print $NF; exit }')
    head -c 100 "$res" >"$res.cut" && mv "$res.cut" "$res"
    run mk
    assert_success
    assert_output --partial "table1.mk: $res failed verification"
    ra-show -q --verify "$res"
}

@test "table1.mk: TEACHER is required; TOKENS needs EVAL_TOKENS; a bad grid is refused" {
    run make -f "$ROOT/pipelines/table1.mk"
    assert_failure
    assert_output --partial "TEACHER= is required"
    run mk TOKENS="$BATS_FILE_TMPDIR/none.ra" print-CONFIGS
    assert_failure
    assert_output --partial "needs EVAL_TOKENS="
    run mk KEEP="0 65" print-CONFIGS
    assert_failure
    assert_output --partial "'65': the teacher has only 64 heads"
    run mk LAYOUTS=sideways print-CONFIGS
    assert_failure
    assert_output --partial "expected routed or parallel"
}

@test "table1.mk: the report from the results streams alone (as table1-gpu.sh report makes it)" {
    # what a GPU run brings back: results, the teacher's evaluation, scores, plans; no students
    mkdir -p "$BATS_FILE_TMPDIR/back"
    cp "$O"/results-*.ra "$O"/teacher-eval-*.ra "$O"/scores-*.ra "$O"/plan-*.ra "$BATS_FILE_TMPDIR/back/"
    OUT_DIR="$BATS_FILE_TMPDIR/back" REP="$BATS_FILE_TMPDIR/rep2" run mk report
    assert_success
    [ "$(grep -v '^printf ' <<<"$output" | grep -cE '(^|[ ;|])ra-(probe|rank|graft|mohawk2|mohawk3|merge|eval|tok) ')" -eq 0 ]
    [ -z "$(ls "$BATS_FILE_TMPDIR"/back/student* 2>/dev/null)" ]
    # the same tables as the report made beside the students (the manifest line names another file)
    diff <(grep -v manifest "$REP/table1.md") <(grep -v manifest "$BATS_FILE_TMPDIR/rep2/table1.md")
    # and a results stream missing there is made, not silently skipped: it needs its student
    rm "$BATS_FILE_TMPDIR"/back/results-*.ra
    OUT_DIR="$BATS_FILE_TMPDIR/back" REP="$BATS_FILE_TMPDIR/rep2" run mk -n report
    assert_output --partial "student3"
}

@test "table1.mk: keys follow file contents, not paths (a moved words list reruns nothing, a changed one reruns)" {
    mk print-CONFIGS >"$BATS_TEST_TMPDIR/a"
    mkdir "$BATS_TEST_TMPDIR/elsewhere"
    cp "$ROOT/tests/fixtures/words.txt" "$BATS_TEST_TMPDIR/elsewhere/"
    mk WORDS="$BATS_TEST_TMPDIR/elsewhere/words.txt" print-CONFIGS >"$BATS_TEST_TMPDIR/b"
    [ -s "$BATS_TEST_TMPDIR/a" ]
    cmp "$BATS_TEST_TMPDIR/a" "$BATS_TEST_TMPDIR/b"
    # the same path with other bytes: every results stream gets a new name
    echo zyzzyva >>"$BATS_TEST_TMPDIR/elsewhere/words.txt"
    mk WORDS="$BATS_TEST_TMPDIR/elsewhere/words.txt" print-CONFIGS >"$BATS_TEST_TMPDIR/c"
    [ -z "$(comm -12 <(awk '{ print $NF }' "$BATS_TEST_TMPDIR/a" | sort) <(awk '{ print $NF }' "$BATS_TEST_TMPDIR/c" | sort))" ]
}

@test "results/table1.md is what the generator makes from the committed H200 run (results/table1-run)" {
    # the page's tables, verdicts and defaults are the generator's; only the hand-written sections
    # from "## How this run was made" on are not
    cd "$ROOT"
    sums() { find results/table1-run results/table1 results/table1.md -type f -print0 | sort -z | xargs -0 md5sum; }
    before=$(sums)
    REPORT_DIR="$BATS_TEST_TMPDIR/rep" MAKEFLAGS= MFLAGS= MAKELEVEL= run pipelines/table1-gpu.sh report results/table1-run
    assert_success
    assert_output --partial "reporting the full grid"
    diff <(grep -v manifest "$BATS_TEST_TMPDIR/rep/table1.md") \
        <(sed '/^## How this run was made/,$d' results/table1.md | grep -v manifest | sed '${/^$/d}')
    grep -qF -- "- The fewest ranked heads that recover >= 95% of the teacher (routed, N = 32): **3 of 64 (4.7%)**" \
        "$BATS_TEST_TMPDIR/rep/table1.md"
    # the committed run and page are left as they were
    [ "$(sums)" = "$before" ]
}

@test "table1-configs.sh: the grid of a 2x8-head teacher and of an 8x8-head one, by hand" {
    g() { KEEP="0 1 2% 5% 10% all" LAYOUTS="routed parallel" D_STATES="hd hd/8" INIT_VARIANTS="attention svd" \
          INIT_AT=2% RANDOM_AT="2% 5% 10%" RANDOM_LAYOUTS="routed parallel" "$ROOT/pipelines/table1-configs.sh" "$@"; }
    # 16 heads, hd 4: K = 0, 1, round(0.32)->1, round(0.8)->1, round(1.6)->2, 16; N = 4, 4/8->1
    run g 16 4
    assert_success
    [ "${#lines[@]}" -eq 25 ]
    # grid: 4 K x 2 layouts x 2 N, less routed/16/1 (the teacher again) = 15
    [ "$(printf '%s\n' "${lines[@]}" | awk '$2 == "grid"' | wc -l)" -eq 15 ]
    refute_line --partial "k16-routed-n1"
    assert_line "k16-routed-n4-mohawk grid 16 routed 4 mohawk top"
    # inits at 1 head: attention only at N = hd; svd at both N
    assert_line "k1-routed-n4-attention init 1 routed 4 attention top"
    refute_line --partial "k1-routed-n1-attention"
    assert_line "k1-parallel-n1-svd init 1 parallel 1 svd top"
    # random controls at 1 and 2 heads (2% and 5% both round to 1), first N
    assert_line "r1-routed-n4-mohawk random 1 routed 4 mohawk random"
    assert_line "r2-parallel-n4-mohawk random 2 parallel 4 mohawk random"
    [ "$(printf '%s\n' "${lines[@]}" | awk '$2 == "random"' | wc -l)" -eq 4 ]
    # 64 heads, hd 32: K = 0, 1, 1, round(3.2)->3, round(6.4)->6, 64; N = 32, 4
    run g 64 32
    assert_success
    [ "${#lines[@]}" -eq 31 ]
    [ "$(printf '%s\n' "${lines[@]}" | awk '$2 == "grid"' | wc -l)" -eq 19 ]
    assert_line "k6-parallel-n4-mohawk grid 6 parallel 4 mohawk top"
    assert_line "r3-routed-n32-mohawk random 3 routed 32 mohawk random"
    # table1.mk's default grid on the committed teacher (64 heads, head_dim 32) is that one
    g 64 32 >"$BATS_TEST_TMPDIR/expected"
    run mk_grid print-CONFIGS
    assert_success
    [ "${#lines[@]}" -eq 31 ]
    diff <(printf '%s\n' "${lines[@]}" | cut -d' ' -f1-7) "$BATS_TEST_TMPDIR/expected"
    # a control whose ranked twin is not in the grid gets one
    run env KEEP="0 all" LAYOUTS=routed D_STATES=hd INIT_VARIANTS= INIT_AT=2% RANDOM_AT=5% "$ROOT/pipelines/table1-configs.sh" 64 32
    assert_success
    assert_line "k3-routed-n32-mohawk ranked 3 routed 32 mohawk top"
    run env KEEP="0 65" LAYOUTS=routed D_STATES=hd "$ROOT/pipelines/table1-configs.sh" 64 32
    assert_failure 64
    run env KEEP=0 LAYOUTS=routed D_STATES=hd/0 "$ROOT/pipelines/table1-configs.sh" 64 32
    assert_failure 64
}

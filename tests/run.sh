#!/usr/bin/env bash
# Runs the C unit tests given as arguments, the bats suites and (when clang is
# present) a short fuzz run, and ends with one "N passed, N failed" line.
# RA_SKIP_UNIT / RA_SKIP_BATS / RA_SKIP_FUZZ=1 skip a part.
set -u
cd "$(dirname "$0")/.."
passed=0 failed=0
log=$(mktemp); trap 'rm -f "$log"' EXIT

count() { # count TAP lines of $log, echo them, and add to the totals
    local p f
    p=$(grep -cE '^ok ' "$log"); f=$(grep -cE '^not ok ' "$log")
    passed=$((passed + p)); failed=$((failed + f))
}

if [ "${RA_SKIP_UNIT:-0}" != 1 ]; then
    for t in "$@"; do
        echo "# $t"
        "$t" >"$log" 2>&1; rc=$?
        cat "$log"
        count
        # a crash or a non-zero exit with no "not ok" line is a failure too
        if [ $rc -ne 0 ] && ! grep -qE '^not ok ' "$log"; then
            echo "not ok - $t exited with status $rc"; failed=$((failed + 1))
        fi
    done
fi

if [ "${RA_SKIP_BATS:-0}" != 1 ] && compgen -G "tests/bats/*.bats" >/dev/null; then
    export PATH="$PWD/bin:$PATH"
    bats --tap tests/bats/*.bats >"$log" 2>&1; rc=$?
    cat "$log"
    count
    if [ $rc -ne 0 ] && ! grep -qE '^not ok ' "$log"; then
        echo "not ok - bats exited with status $rc"; failed=$((failed + 1))
    fi
fi

if [ "${RA_SKIP_FUZZ:-0}" != 1 ] && command -v clang >/dev/null && compgen -G "tests/fuzz/fuzz_*.c" >/dev/null; then
    secs=${FUZZ_SECONDS:-30}
    if make -s fuzz-build >"$log" 2>&1; then
        for src in tests/fuzz/fuzz_*.c; do
            name=$(basename "$src" .c)
            corpus=tests/fuzz/corpus/${name#fuzz_}
            work=$(mktemp -d)
            [ -d "$corpus" ] && cp -r "$corpus"/. "$work"/ 2>/dev/null
            if "build/fuzz/$name" -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 \
                 -print_final_stats=0 "$work" >"$log" 2>&1; then
                echo "ok - fuzz $name ${secs}s"; passed=$((passed + 1))
            else
                tail -n 40 "$log"; echo "not ok - fuzz $name"; failed=$((failed + 1))
            fi
            rm -rf "$work"
        done
    else
        cat "$log"; echo "not ok - fuzz targets failed to build"; failed=$((failed + 1))
    fi
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

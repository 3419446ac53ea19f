#!/usr/bin/env bash
# One GPU-machine job: build everything (CUDA), run `make test-gpu` (every CUDA
# op against its CPU twin, the CUDA forward against the CPU forward and the
# golden logits), then the forward benchmark against transformers
# (bench/run_forward.sh).  Logs go under $OUT (default /tmp/ra-gpu):
#   build.log  test-gpu.log  bench-ra.log  bench-torch.log  forward.md  summary.txt
# and a short summary table is printed last.
#
#   tests/gpu/run.sh                 (from anywhere; SKIP_BENCH=1 skips the benchmark)
#
# Uses .deps/ (tests/gpu/pack-deps.sh) as DEPS_PREFIX when present.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/gpu/env.sh
gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1); gpu=${gpu:-no nvidia-smi}
echo "GPU: $gpu"
t0=$(date +%s)

echo "== build: make ${MAKEVARS[*]} -j16 all test-gpu-bins bench-bins"
make "${MAKEVARS[@]}" -j16 all test-gpu-bins bench-bins >"$OUT/build.log" 2>&1
build_rc=$?
if [ $build_rc -ne 0 ]; then grep -E 'error|Error' "$OUT/build.log" | head -n 40; fi
t1=$(date +%s)

test_summary="not run (build failed)"
if [ $build_rc -eq 0 ]; then
    echo "== make test-gpu"
    make "${MAKEVARS[@]}" test-gpu >"$OUT/test-gpu.log" 2>&1
    test_rc=$?
    test_summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$OUT/test-gpu.log" | tail -n 1)
    [ -n "$test_summary" ] || test_summary="no summary (exit $test_rc)"
    # the measured errors, for the record
    grep -E '^#   ' "$OUT/test-gpu.log" | head -n 200
fi
t2=$(date +%s)

bench_rc=skipped
if [ $build_rc -eq 0 ] && [ "${SKIP_BENCH:-0}" != 1 ]; then
    echo "== bench/run_forward.sh"
    bench/run_forward.sh >/dev/null 2>&1
    bench_rc=$?
fi
t3=$(date +%s)

{
    echo
    echo "== summary ($gpu)"
    echo "| step | result | seconds |"
    echo "|---|---|---|"
    echo "| build (make -j16 all test-gpu-bins bench-bins) | $([ $build_rc -eq 0 ] && echo ok || echo "FAILED (exit $build_rc), see build.log") | $((t1 - t0)) |"
    echo "| make test-gpu | $test_summary | $((t2 - t1)) |"
    if [ -f "$OUT/forward.md" ]; then
        grep -E '^\| (ra|transformers)' "$OUT/forward.md" | while IFS= read -r row; do
            echo "| bench: $(echo "$row" | cut -d'|' -f2 | sed 's/^ *//;s/ *$//') | $(echo "$row" | cut -d'|' -f5 | sed 's/ //g') tokens/s, $(echo "$row" | cut -d'|' -f6 | sed 's/ //g') TFLOP/s, $(echo "$row" | cut -d'|' -f8 | sed 's/ //g') GiB peak | |"
        done
        grep -E '^ra / transformers' "$OUT/forward.md"
    else
        echo "| bench | $bench_rc | $((t3 - t2)) |"
    fi
    if [ -f "$OUT/test-gpu.log" ] && grep -qE '^not ok' "$OUT/test-gpu.log"; then
        echo
        echo "failures (test-gpu.log):"
        grep -E '^not ok|^#   tests/' "$OUT/test-gpu.log" | head -n 60
    fi
} | tee "$OUT/summary.txt"
[ $build_rc -eq 0 ] && grep -qE ' 0 failed' <<<"$test_summary"

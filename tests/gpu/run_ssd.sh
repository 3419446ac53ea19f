#!/usr/bin/env bash
# One GPU-machine job for the SSD / DiscreteMamba2 CUDA work: build
# everything (CUDA), run the SSD and dm2 GPU tests (every kernel against its
# CPU twin), the host-simulator test, then the chunk-scan benchmark
# (bench/run_ssd.sh → bench/results/ssd.md).  Logs go under $OUT (default
# /tmp/ra-gpu): build.log test-gpu-ssd.log bench-ssd-*.log ssd.md; a short
# summary is printed last.
#
#   tests/gpu/run_ssd.sh          (SKIP_BENCH=1 skips the benchmark, ALL_GPU_TESTS=1 runs make test-gpu)
#
# Uses .deps/ (tests/gpu/pack-deps.sh) as DEPS_PREFIX when present.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/gpu/env.sh
gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)
echo "GPU: ${gpu:-no nvidia-smi}"
t0=$(date +%s)
# A build/ left on the machine by an earlier call (maybe of another checkout)
# can look newer than these sources: start clean (KEEP_BUILD=1 keeps it).
[ "${KEEP_BUILD:-0}" = 1 ] || rm -rf build
make "${MAKEVARS[@]}" -j"$(nproc)" lib/libra.a build/tests/test_ssd_sim build/tests/test_gpu_ssd build/tests/test_gpu_dm2 \
    bench-bins >"$OUT/build.log" 2>&1
build_rc=$?
[ $build_rc -eq 0 ] || grep -E 'error|Error' "$OUT/build.log" | head -n 40
t1=$(date +%s)

tests=(build/tests/test_gpu_ssd build/tests/test_gpu_dm2 build/tests/test_ssd_sim)
summary="not run (build failed)"
if [ $build_rc -eq 0 ]; then
    if [ "${ALL_GPU_TESTS:-0}" = 1 ]; then
        make "${MAKEVARS[@]}" -j"$(nproc)" test-gpu >"$OUT/test-gpu-ssd.log" 2>&1
    else
        RA_SKIP_BATS=1 RA_SKIP_FUZZ=1 tests/run.sh "${tests[@]}" >"$OUT/test-gpu-ssd.log" 2>&1
    fi
    summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$OUT/test-gpu-ssd.log" | tail -n 1)
    grep -E '^not ok|^#   .*:[0-9]+:' "$OUT/test-gpu-ssd.log" | head -n 40
fi
t2=$(date +%s)

if [ $build_rc -eq 0 ] && [ "${SKIP_BENCH:-0}" != 1 ]; then
    bench/run_ssd.sh >"$OUT/bench-ssd.log" 2>&1
fi
t3=$(date +%s)

echo
echo "== measured errors (relative L2 vs the CPU twins)"
grep -E '^#   (ssd|dm2)' "$OUT/test-gpu-ssd.log" 2>/dev/null | awk '{printf "%s\n", $0}' | cut -c1-120 | head -n 90
echo
echo "== summary (${gpu:-no GPU})"
echo "build: $([ $build_rc -eq 0 ] && echo ok || echo "FAILED (exit $build_rc)") ($((t1 - t0)) s)"
echo "tests: ${summary:-no summary} ($((t2 - t1)) s)"
if [ -f bench/results/ssd.md ] && [ "${SKIP_BENCH:-0}" != 1 ]; then
    cp bench/results/ssd.md "$OUT/ssd.md"
    echo "bench ($((t3 - t2)) s):"
    grep -E '^\| [0-9]' bench/results/ssd.md
fi

#!/usr/bin/env bash
# One GPU-machine job for the hybrid forward and decoding: build (CUDA),
# `make test-gpu` (every GPU test, test_gpu_hybrid and test_gpu_decode
# included), then the decode benchmark (bench/decode.sh).  Logs under $OUT
# (default /tmp/ra-gpu): build.log test-gpu.log decode-*.log decode.md.
#
#   tests/gpu/run_decode.sh            (SKIP_BENCH=1 skips the benchmark)
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/gpu/env.sh
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader
t0=$(date +%s)
make "${MAKEVARS[@]}" -j16 all test-gpu-bins bench-bins >"$OUT/build.log" 2>&1 || {
    grep -E 'error' "$OUT/build.log" | head -n 40
    exit 1
}
echo "== build ok ($(( $(date +%s) - t0 )) s)"
t1=$(date +%s)
make "${MAKEVARS[@]}" test-gpu >"$OUT/test-gpu.log" 2>&1
grep -E '^(not ok|#   [a-z].*rel_l2|#   tests/|#   decode:)' "$OUT/test-gpu.log" | grep -vE '^#   (conv|decay|step|mixer|ssd|probe)' | head -n 80
grep -E '^[0-9]+ passed, [0-9]+ failed' "$OUT/test-gpu.log" | tail -n 1
echo "== test-gpu ($(( $(date +%s) - t1 )) s)"
# the tiled fallback kernel of the decode attention (other head dims) on the same cases
RA_DECODE_ATTENTION=simple build/tests/test_gpu_decode >"$OUT/test-gpu-decode-simple.log" 2>&1
echo "== test_gpu_decode with RA_DECODE_ATTENTION=simple: $(grep -c '^ok' "$OUT/test-gpu-decode-simple.log") ok, $(grep -c '^not ok' "$OUT/test-gpu-decode-simple.log") not ok"
[ "${SKIP_BENCH:-0}" = 1 ] || bench/decode.sh

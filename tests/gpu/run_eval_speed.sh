#!/usr/bin/env bash
# ra-eval --task speed on a small random teacher (4 layers, hidden 512, 8 heads / 4 KV, vocab 8192)
# and a routed hybrid of it keeping one head per layer (N = 16): the batch sweep with the peak GPU
# memory column (lib/eval_speed.h).  A check that the column is filled on CUDA, not a benchmark.
#
#   make CUDA=1 bin/ra-eval bin/ra-graft bin/ra-rank build/tests/mk-hf build/tests/mk-scores build/tests/ra-testdata
#   OUT=DIR MAXB=256 tests/gpu/run_eval_speed.sh        (DEV=cpu: the same on the CPU, column "–")
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/ra-gpu}; mkdir -p "$OUT"
DEV=${DEV:-cuda}; T=${TMPDIR:-/tmp}/speedcheck; rm -rf "$T"; mkdir -p "$T"
build/tests/mk-hf --layers 4 --hidden 512 --heads 8 --kv-heads 4 --head-dim 64 --inter 1024 --vocab 8192 --seed 3 "$T/m" >/dev/null
TID=$(build/tests/ra-testdata id "$T/m")
for l in 0 1 2 3; do for h in 0 1 2 3 4 5 6 7; do [ $h = $l ] && echo "1 1" || echo "0 0"; done; done |
    build/tests/mk-scores -L 4 -H 8 -G 4 -d 64 -i "$TID" -o "$T/s.ra"
bin/ra-rank -q --top 4 -o "$T/p.ra" "$T/s.ra" && bin/ra-graft -q -m "$T/m" -p "$T/p.ra" --d-state 16 -o "$T/h.ra" || exit 1
for m in teacher hybrid; do
    p=$T/m; [ $m = hybrid ] && p=$T/h.ra
    echo "== $m"
    bin/ra-eval -m "$p" --task speed --device "$DEV" --max-batch "${MAXB:-64}" --prompt-len 256 --gen-len 32 \
        -o "$T/speed-$m.ra" 2>"$OUT/speed-$m.log" | tee "$OUT/speed-$m.md"; echo "exit $?"
    grep -E 'speed: batch' "$OUT/speed-$m.log" | tail -n 3
done

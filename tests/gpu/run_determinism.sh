#!/usr/bin/env bash
# One GPU-machine job for issue 7 on hybrids: the CUDA DM2 / SSD backwards
# are bit-reproducible, and a hybrid run resumed after a kill ends with the
# same bytes as an uninterrupted one.
#   1. build (CUDA=1) the library, ra-mohawk3, ra-graft, ra-rank, helpers,
#      test_gpu_determinism, test_gpu_dm2, test_gpu_ssd, bench/dm2_backward;
#      with OLD=<dir> (a checkout of an older tree holding bench/dm2_backward.c)
#      that tree's library, ra-mohawk3 and bench too, in parallel;
#   2. the three GPU tests;
#   3. bench/dm2_backward on a Llama-3.2-1B-sized routed mixer (D 2048, 32
#      heads of 64, N 64, G 1, B 2 x T 2048) and a parallel one (out_proj):
#      backward ms and distinct results of 5 runs (before/after with OLD);
#   4. a routed hybrid student (hd 64, d_state 64) trained 6 steps with
#      ra-mohawk3 --device cuda twice (same bytes?) and stopped at step 5
#      (RA_TEST_NAN_AT_STEP, the last checkpoint kept) then --resume'd (same
#      bytes as uninterrupted?).
# Logs under $OUT (default /tmp/ra-gpu); a summary is printed last.
#
#   tests/gpu/run_determinism.sh            OLD=../old tests/gpu/run_determinism.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/gpu/env.sh
W=${WORK:-/tmp/ra-det-work}
rm -rf "$W" && mkdir -p "$W"
H=build/tests
summary=()
say() { summary+=("$1"); echo "$1"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1
t0=$(date +%s)
if [ -n "${OLD:-}" ]; then
    (cd "$OLD" && make "${MAKEVARS[@]}" -j8 lib/libra.a bin/ra-mohawk3 build/bench/dm2_backward >"$OUT/build-old.log" 2>&1) &
    old_pid=$!
fi
make "${MAKEVARS[@]}" -j8 lib/libra.a bin/ra-mohawk3 bin/ra-graft bin/ra-rank $H/mk-hf $H/mk-scores $H/ra-testdata \
    $H/test_gpu_determinism $H/test_gpu_dm2 $H/test_gpu_ssd build/bench/dm2_backward >"$OUT/build.log" 2>&1 ||
    { grep -E 'error' "$OUT/build.log" | head -n 40; say "build: FAILED"; printf '%s\n' "${summary[@]}"; exit 1; }
say "build: ok ($(( $(date +%s) - t0 )) s)"
if [ -n "${OLD:-}" ]; then
    wait "$old_pid" && say "old tree build: ok ($(( $(date +%s) - t0 )) s)" ||
        { say "old tree build: FAILED"; grep -E 'error' "$OUT/build-old.log" | head -n 20; OLD=; }
fi

for t in test_gpu_determinism test_gpu_dm2 test_gpu_ssd; do
    $H/$t >"$OUT/$t.log" 2>&1
    rc=$?
    grep -E '^not ok|values differ' "$OUT/$t.log" | grep -v ' 0 of ' | head -n 20
    say "$t: exit $rc, $(grep -c '^ok' "$OUT/$t.log") ok, $(grep -c '^not ok' "$OUT/$t.log") not ok"
done

# ---- backward time and repeatability, before / after
for shape in "--out-proj 0 --groups 1" "--out-proj 1 --groups 8 --d-state 16"; do
    for tree in . ${OLD:+"$OLD"}; do
        line=$("$tree"/build/bench/dm2_backward --batch 2 --seq-len 2048 --d-model 2048 --heads 32 --head-dim 64 \
            --d-state 64 $shape --iters 20 --repeats 5 2>&1 | grep -v '^RESULT')
        say "$([ "$tree" = . ] && echo after || echo before): $line"
    done
done

# ---- a routed hybrid: two uninterrupted runs, then a killed and resumed one
docs() { # $2 documents of $3..$4 token ids below $1
    awk -v V="$1" -v n="$2" -v lo="$3" -v hi="$4" -v seed="${5:-1}" 'BEGIN { srand(seed);
        for (d = 0; d < n; d++) { len = lo + int(rand() * (hi - lo)); s = "";
            for (i = 0; i < len; i++) s = s (i ? "," : "") int(rand() * V); print s } }'
}
$H/mk-hf --layers 2 --hidden 256 --heads 4 --kv-heads 2 --head-dim 64 --inter 512 --vocab 512 --seed 3 "$W/t" >/dev/null
tid=$($H/ra-testdata id "$W/t")
awk 'BEGIN { srand(3); for (i = 0; i < 8; i++) printf "%.4f %.4f\n", rand(), rand() }' |
    $H/mk-scores -L 2 -H 4 -G 2 -d 64 -i "$tid" -o "$W/sc.ra"
bin/ra-rank -q --top 2 -o "$W/plan.ra" "$W/sc.ra"
bin/ra-graft -q -m "$W/t" -p "$W/plan.ra" --layout routed --d-state 64 -o "$W/h.ra" || say "ra-graft failed"
mapfile -t D < <(docs 512 120 100 900 7)
$H/ra-testdata tokens -o "$W/tok.ra" "${D[@]}"
for tree in . ${OLD:+"$OLD"}; do
    tag=$([ "$tree" = . ] && echo after || echo before)
    TR=(--loss ce -s "$W/h.ra" -d "$W/tok.ra" --device cuda --seq-len 512 --batch 8 --lr 1e-3 --steps 6 --ckpt-every 2)
    M="$tree/bin/ra-mohawk3"
    $M "${TR[@]}" --ckpt-dir "$W/$tag-a" -o "$W/$tag-a.ra" 2>"$OUT/$tag-run-a.log" || say "$tag run a failed"
    $M "${TR[@]}" --ckpt-dir "$W/$tag-b" -o "$W/$tag-b.ra" 2>"$OUT/$tag-run-b.log" || say "$tag run b failed"
    RA_TEST_NAN_AT_STEP=5 $M "${TR[@]}" --ckpt-dir "$W/$tag-k" -o "$W/$tag-k.ra" 2>"$OUT/$tag-run-k.log"
    krc=$?
    $M "${TR[@]}" --ckpt-dir "$W/$tag-k" --resume -o "$W/$tag-r.ra" 2>"$OUT/$tag-run-r.log"
    rrc=$?
    same() { cmp -s "$1" "$2" && echo "identical bytes" || echo "DIFFERENT"; }
    say "$tag: hybrid (routed, hd 64, N 64) 6 steps twice: $(same "$W/$tag-a.ra" "$W/$tag-b.ra"); stopped at 5 (exit $krc) + --resume (exit $rrc) vs uninterrupted: $(same "$W/$tag-a.ra" "$W/$tag-r.ra")"
done
echo "== summary"
printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"

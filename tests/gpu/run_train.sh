#!/usr/bin/env bash
# One GPU-machine job for the CUDA training step (kernels/model_train_cuda.h):
#   1. build the library, ra-mohawk3 and the helpers (CUDA=1);
#   2. build/tests/test_gpu_train (CUDA step vs the CPU step, training,
#      resume exactness and the NaN hook through the library);
#   3. the tool on a small model: --device cuda runs; RA_TEST_NAN_AT_STEP
#      stops the run keeping the last checkpoint (exit 70); --resume from it
#      ends with the same bytes as an uninterrupted run; a batch that cannot
#      fit exits 71 naming the buffer; ra-mohawk1 on cpu and cuda (step-1
#      loss compared, the loss falls), its NaN stop and exact resume on
#      cuda, and its matrix bound (exit 64);
#   4. throughput of ra-mohawk3 --loss ce on teacher-sized random models, kd,
#      stage 2 and stage 1 on students of them
#      (tokens/s from the --log, steps 11..N, i.e. after warm-up; peak memory).
# Logs under $OUT (default /tmp/ra-gpu); a summary table is printed last.
#
#   tests/gpu/run_train.sh            (SKIP_BENCH=1 skips 4)
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/gpu/env.sh
W=${WORK:-/tmp/ra-train-work}
rm -rf "$W" && mkdir -p "$W"
export PATH="$PWD/bin:$PATH"
H=build/tests
summary=()
say() { summary+=("$1"); echo "$1"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1
t0=$(date +%s)
make "${MAKEVARS[@]}" -j16 lib/libra.a bin/ra-mohawk3 bin/ra-mohawk2 bin/ra-mohawk1 bin/ra-graft bin/ra-rank $H/mk-hf $H/mk-scores $H/ra-testdata \
    $H/test_gpu_train \
    >"$OUT/build.log" 2>&1 || { grep -E 'error' "$OUT/build.log" | head -n 40; say "build: FAILED"; printf '%s\n' "${summary[@]}"; exit 1; }
say "build: ok ($(( $(date +%s) - t0 )) s)"

$H/test_gpu_train >"$OUT/test-gpu-train.log" 2>&1
rc=$?
grep -E '^not ok|largest|^#   [a-z/_ ]+ +[0-9.e+-]+$' "$OUT/test-gpu-train.log"
say "test_gpu_train: exit $rc, $(grep -c '^ok' "$OUT/test-gpu-train.log") ok, $(grep -c '^not ok' "$OUT/test-gpu-train.log") not ok"

# random documents of ids below $1: $2 documents of $3..$4 tokens
docs() {
    awk -v V="$1" -v n="$2" -v lo="$3" -v hi="$4" -v seed="${5:-1}" 'BEGIN { srand(seed);
        for (d = 0; d < n; d++) { len = lo + int(rand() * (hi - lo)); s = "";
            for (i = 0; i < len; i++) s = s (i ? "," : "") int(rand() * V); print s } }'
}

# ---- the tool on a small model
$H/mk-hf --layers 2 --hidden 128 --heads 4 --kv-heads 2 --head-dim 32 --inter 256 --vocab 512 --seed 3 "$W/small" >/dev/null
ra-graft -q --random-init "$W/small" --seed 1 -o "$W/small.ra"
mapfile -t D < <(docs 512 120 20 300 7)
$H/ra-testdata tokens -o "$W/tok.ra" "${D[@]}"
TR=(--loss ce -s "$W/small.ra" -d "$W/tok.ra" --device cuda --seq-len 128 --batch 4 --lr 1e-3 --steps 6 --ckpt-every 2)
ra-mohawk3 "${TR[@]}" --ckpt-dir "$W/ck_full" --log "$W/full.tsv" -o "$W/full.ra" 2>"$OUT/tool-full.log"
say "tool run: exit $? ($(grep -c . "$W/full.tsv") log lines; loss $(awk 'NR==2{a=$3} END{print a " -> " $3}' "$W/full.tsv"))"
RA_TEST_NAN_AT_STEP=5 ra-mohawk3 "${TR[@]}" --ckpt-dir "$W/ck" -o "$W/part.ra" 2>"$OUT/tool-nan.log"
rc=$?
say "NaN hook at step 5: exit $rc (want 70), output written: $([ -e "$W/part.ra" ] && echo yes || echo no), checkpoints: $(ls "$W/ck" | tr '\n' ' ')"
grep -o 'stopped.*' "$OUT/tool-nan.log" | head -n 1
ra-mohawk3 "${TR[@]}" --ckpt-dir "$W/ck" --resume -o "$W/resumed.ra" 2>"$OUT/tool-resume.log"
rc=$?
if cmp -s "$W/full.ra" "$W/resumed.ra"; then same="identical bytes"; else same="DIFFERENT"; fi
say "resume to step 6: exit $rc, output vs uninterrupted run: $same"
ra-mohawk3 --loss ce -s "$W/small.ra" -d "$W/tok.ra" --device cuda --seq-len 8192 --batch 4096 --steps 1 -q \
    -o "$W/oom.ra" 2>"$OUT/tool-oom.log"
rc=$?
say "batch 4096 x 8192: exit $rc (want 71): $(head -c 300 "$OUT/tool-oom.log")"

# ---- stage 1 (ra-mohawk1) on a student grafted from the small teacher: the same run on both devices
awk 'BEGIN { srand(5); for (i = 0; i < 8; i++) printf "%.4f %.4f\n", rand(), rand() }' |
    $H/mk-scores -L 2 -H 4 -G 2 -d 32 -i "$($H/ra-testdata id "$W/small")" -o "$W/small-sc.ra"
ra-rank -q --top 2 -o "$W/small-plan.ra" "$W/small-sc.ra"
ra-graft -q -m "$W/small" -p "$W/small-plan.ra" --d-state 16 -o "$W/small-hy.ra"
S1=(-m "$W/small" -s "$W/small-hy.ra" -d "$W/tok.ra" --seq-len 128 --batch 4 --lr 3e-3 --steps 12)
for dev in cpu cuda; do
    ra-mohawk1 "${S1[@]}" --device $dev --log "$W/s1-$dev.tsv" -o "$W/s1-$dev.ra" 2>"$OUT/tool-s1-$dev.log"
    say "stage 1 --device $dev: exit $?, loss $(awk -F'\t' 'NR==2{a=$3} END{print a " -> " $3}' "$W/s1-$dev.tsv")"
done
say "stage 1 step-1 loss, cuda vs cpu: $(paste "$W/s1-cpu.tsv" "$W/s1-cuda.tsv" | awk -F'\t' -v n="$(head -n 1 "$W/s1-cpu.tsv" | awk -F'\t' '{print NF}')" \
    'NR==2 { c=$3; g=$(n+3); printf "cpu %.6f cuda %.6f rel %.2e", c, g, (g>c?g-c:c-g)/c }')"
S1C=(-m "$W/small" -s "$W/small-hy.ra" -d "$W/tok.ra" --seq-len 128 --batch 4 --lr 3e-3 --steps 6 --device cuda --ckpt-every 2)
ra-mohawk1 "${S1C[@]}" --ckpt-dir "$W/s1ck_full" -q -o "$W/s1-full.ra"
RA_TEST_NAN_AT_STEP=5 ra-mohawk1 "${S1C[@]}" --ckpt-dir "$W/s1ck" -q -o "$W/s1-part.ra" 2>"$OUT/tool-s1-nan.log"
rc=$?
ra-mohawk1 "${S1C[@]}" --ckpt-dir "$W/s1ck" --resume -q -o "$W/s1-resumed.ra"
rc2=$?
if cmp -s "$W/s1-full.ra" "$W/s1-resumed.ra"; then same="identical bytes"; else same="DIFFERENT"; fi
say "stage 1 cuda: NaN hook at step 5 exit $rc (want 70), resume exit $rc2, output vs uninterrupted run: $same"
ra-mohawk1 "${S1[@]}" --device cuda --seq-len 4096 --max-matrix-gb 0.01 -o "$W/s1-big.ra" 2>"$OUT/tool-s1-big.log"
say "stage 1 --device cuda, T 4096 over --max-matrix-gb 0.01: exit $? (want 64): $(head -c 200 "$OUT/tool-s1-big.log")"

# ---- throughput
bench() { # name layers hidden heads kv hd inter vocab batch seq steps
    local name=$1
    $H/mk-hf --layers "$2" --hidden "$3" --heads "$4" --kv-heads "$5" --head-dim "$6" --inter "$7" --vocab "$8" \
        --seed 5 "$W/$name" >/dev/null
    ra-graft -q --random-init "$W/$name" --seed 1 -o "$W/$name.ra"
    mapfile -t D < <(docs "$8" 80 300 3000 11)
    $H/ra-testdata tokens -o "$W/$name-tok.ra" "${D[@]}"
    ra-mohawk3 --loss ce -s "$W/$name.ra" -d "$W/$name-tok.ra" --device cuda --batch "$9" --seq-len "${10}" \
        --steps "${11}" --lr 1e-3 --log "$W/$name.tsv" -o "$W/$name-out.ra" 2>"$OUT/bench-$name.log"
    local rc=$? peak
    peak=$(grep -o 'peak_device_bytes=[0-9]*' "$OUT/bench-$name.log" | cut -d= -f2)
    cp "$W/$name.tsv" "$OUT/bench-$name.tsv" 2>/dev/null
    say "bench $name (L$2 D$3 H$4/$5 hd$6 I$7 V$8, B$9 x T${10}, ${11} steps): exit $rc, $(awk -F'\t' \
        'NR==12 {t0=$2; e0=$7} END {printf "%.0f tokens/s (steps 11..%d), loss %s", ($2-t0)/($7-e0), $1, $3}' \
        "$W/$name.tsv"), peak $(( ${peak:-0} / 1048576 )) MiB"
}
# stage 3 (kd) of a hybrid student of teacher $1 (an HF dir) keeping $2 heads (top scores), layout $3,
# d_state $4, batch $5 x $6, $7 steps; extra env for ra-mohawk3 in $8
kd_bench() {
    local m=$1 name=$(basename "$1")-$2-$3-$4 L NH G hd tid
    L=$(grep -o '"num_hidden_layers": *[0-9]*' "$m/config.json" | grep -o '[0-9]*$')
    NH=$(grep -o '"num_attention_heads": *[0-9]*' "$m/config.json" | grep -o '[0-9]*$')
    G=$(grep -o '"num_key_value_heads": *[0-9]*' "$m/config.json" | grep -o '[0-9]*$')
    hd=$(grep -o '"head_dim": *[0-9]*' "$m/config.json" | grep -o '[0-9]*$')
    tid=$($H/ra-testdata id "$m")
    awk -v n=$((L * NH)) 'BEGIN { srand(3); for (i = 0; i < n; i++) printf "%.4f %.4f\n", rand(), rand() }' |
        $H/mk-scores -L "$L" -H "$NH" -G "$G" -d "$hd" -i "$tid" -o "$W/$name-sc.ra"
    ra-rank -q --top "$2" -o "$W/$name-plan.ra" "$W/$name-sc.ra"
    ra-graft -q -m "$m" -p "$W/$name-plan.ra" --layout "$3" --d-state "$4" --dtype bf16 -o "$W/$name.ra"
    local V
    V=$(grep -o '"vocab_size": *[0-9]*' "$m/config.json" | grep -o '[0-9]*$')
    mapfile -t D < <(docs "$V" 60 500 3000 13)
    $H/ra-testdata tokens -o "$W/$name-tok.ra" "${D[@]}"
    timeout 200 env $8 ra-mohawk3 -m "$m" -s "$W/$name.ra" -d "$W/$name-tok.ra" --device cuda --batch "$5" --seq-len "$6" \
        --steps "$7" --lr 1e-5 --log "$W/$name.tsv" --dtype bf16 -o "$W/$name-out.ra" 2>"$OUT/bench-$name.log"
    local rc=$? peak
    peak=$(grep -o 'peak_device_bytes=[0-9]*' "$OUT/bench-$name.log" | cut -d= -f2)
    cp "$W/$name.tsv" "$OUT/bench-$name.tsv" 2>/dev/null
    say "kd $name ($8; B$5 x T$6, $7 steps): exit $rc, $(awk -F'\t' \
        'NR==4 {t0=$2; e0=$7} END {printf "%.0f tokens/s (steps 3..%d), loss %s", ($2-t0)/($7-e0), $1, $3}' \
        "$W/$name.tsv"), peak $(( ${peak:-0} / 1048576 )) MiB"
    tail -n 3 "$OUT/bench-$name.log"
}
if [ -z "${SKIP_BENCH:-}" ]; then
    bench t256 8 256 8 4 32 688 8192 32 1024 50
    bench t512 8 512 8 4 64 1376 8192 16 1024 40
    kd_bench "$W/t256" 6 routed 32 32 1024 20 RA_TRAIN_RECOMPUTE=0
    # stage 2 on the same student, every layer
    ra-mohawk2 -m "$W/t256" -s "$W/t256-6-routed-32.ra" -d "$W/t256-6-routed-32-tok.ra" --device cuda --batch 32 \
        --seq-len 1024 --steps 12 --lr 1e-4 --log "$W/s2.tsv" -o "$W/s2.ra" 2>"$OUT/bench-s2.log"
    rc=$?
    cp "$W/s2.tsv" "$OUT/bench-s2.tsv" 2>/dev/null
    say "stage 2 t256 routed, layers 0-7 (B32 x T1024, 12 steps): exit $rc, $(awk -F'\t' \
        'NR==4 {t0=$2; e0=$7} END {printf "%.0f tokens/s (steps 3..%d), loss %s -> %s", ($2-t0)/($7-e0), $1, first, $3} NR==2 {first=$3}' \
        "$W/s2.tsv"), $(grep -o 'peak_device_bytes=[0-9]*' "$OUT/bench-s2.log")"
    # the Llama-3.2-1B shape (random weights), B 4 x T 2048: DESIGN §8's stage-3 step
    $H/mk-hf --layers 16 --hidden 2048 --heads 32 --kv-heads 8 --head-dim 64 --inter 8192 --vocab 128256 \
        --llama3-rope --tied --seed 7 "$W/l1b" >/dev/null
    kd_bench "$W/l1b" 10 routed 64 4 2048 8 RA_TRAIN_RECOMPUTE=1
    kd_bench "$W/l1b" 10 parallel 8 4 2048 8 RA_TRAIN_RECOMPUTE=1
    # stage 1 on the routed student, every layer with SSM heads
    timeout 300 ra-mohawk1 -m "$W/l1b" -s "$W/l1b-10-routed-64.ra" -d "$W/l1b-10-routed-64-tok.ra" --device cuda \
        --batch 4 --seq-len 2048 --steps 6 --lr 1e-4 --log "$W/s1-l1b.tsv" -o "$W/s1-l1b.ra" 2>"$OUT/bench-s1-l1b.log"
    rc=$?
    cp "$W/s1-l1b.tsv" "$OUT/bench-s1-l1b.tsv" 2>/dev/null
    say "stage 1 l1b routed 10 kept (B4 x T2048, 6 steps): exit $rc, $(awk -F'\t' \
        'NR==3 {t0=$2; e0=$7} END {printf "%.0f tokens/s (steps 2..%d), loss %s -> %s", ($2-t0)/($7-e0), $1, first, $3} NR==2 {first=$3}' \
        "$W/s1-l1b.tsv"), $(grep -o 'peak_device_bytes=[0-9]*' "$OUT/bench-s1-l1b.log")"
fi
echo "== summary"
printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"

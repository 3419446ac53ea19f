#!/usr/bin/env bash
# Where a CUDA stage-3 step spends its time: makes bench/train.sh's inputs
# (the Llama-3.2-1B shape with random weights, the routed student with
# HEADS kept heads and DiscreteMamba2 N), then runs ra-mohawk3 --device cuda
# with RA_TRAIN_PROFILE=1 (the phase table goes to stderr at the end), once
# per RECOMPUTE value; with NSYS=1 and nsys on PATH also a kernel summary.
# The phase tables and tokens/s go to RESULT (bench/results/profile.md),
# made from the run's logs in OUT (s3-rR.log/.tsv, run.info); REPORT_ONLY=1
# remakes RESULT from an OUT directory without running anything, e.g.
#   REPORT_ONLY=1 OUT=bench/results/profile-run bench/train_profile.sh
#   B=4 L=2048 HEADS=10 N=64 STEPS=6 RECOMPUTE="0 1" OUT=/tmp/tp WORK=/tmp/tpw bench/train_profile.sh
# Needs bin/ built, build/tests/mk-scores, python3 (bench/torch_ref/train.py --print, no GPU work).
set -uo pipefail
cd "$(dirname "$0")/.."
B=${B:-4} L=${L:-2048} HEADS=${HEADS:-10} N=${N:-64} STEPS=${STEPS:-6} RECOMPUTE=${RECOMPUTE:-0}
OUT=${OUT:-/tmp/ra-train-profile} W=${WORK:-/tmp/ra-train-profile-work} NSYS=${NSYS:-0}
RESULT=${RESULT:-bench/results/profile.md}
PY=bench/torch_ref/train.py
report() {
    echo "# Where a CUDA stage-3 step spends its time"
    echo
    echo "Made by \`$(sed -n 's/^command=//p' "$OUT/run.info")\`"
    echo "at commit $(sed -n 's/^commit=//p' "$OUT/run.info") on $(sed -n 's/^gpu=//p' "$OUT/run.info")."
    echo
    for r in $(sed -n 's/^recompute=//p' "$OUT/run.info"); do
        echo "## RA_TRAIN_RECOMPUTE=$r"
        echo
        echo '```'
        tr '\r' '\n' <"$OUT/s3-r$r.log" | grep -v ': step ' | tail -n 60
        tokens_per_s "$OUT/s3-r$r.tsv"
        echo '```'
        echo
    done
}
tokens_per_s() {
    awk -F'\t' 'NR > 1 { k[NR] = $2; e[NR] = $7; n = NR } END { if (n > 3) printf "tokens/s after step 2: %.0f\n", (k[n] - k[3]) / (e[n] - e[3]) }' "$1"
}
REPORT_ONLY=${REPORT_ONLY:-0}
mkdir -p "$OUT"
if [ "$REPORT_ONLY" != 1 ] && [ ! -s "$W/tokens.ra" ]; then
    mkdir -p "$W/teacher"
    python3 $PY --print config >"$W/teacher/config.json" || { echo "profile: config failed"; exit 1; }
    read -r LAYERS H HKV HD V < <(python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))
print(c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], c["vocab_size"])' \
        "$W/teacher/config.json")
    python3 $PY --print heads --config "$W/teacher/config.json" --heads "$HEADS" >"$W/heads.txt"
    bin/ra-graft -q --random-init "$W/teacher" --seed 1 --dtype bf16 -o "$W/teacher.ra" &&
        TID=$(bin/ra-show --id "$W/teacher.ra") &&
        awk -v L="$LAYERS" -v H="$H" 'NR == FNR { k[$1 " " $2] = 1; next }
            END { for (l = 0; l < L; l++) for (h = 0; h < H; h++) print ((l " " h) in k) ? "1 1" : "0 0" }' \
            "$W/heads.txt" /dev/null | build/tests/mk-scores -L "$LAYERS" -H "$H" -G "$HKV" -d "$HD" -i "$TID" -o "$W/scores.ra" &&
        bin/ra-rank -q --top "$HEADS" -o "$W/plan.ra" "$W/scores.ra" &&
        bin/ra-graft -q -m "$W/teacher.ra" -p "$W/plan.ra" --layout routed --d-state "$N" --dtype bf16 -o "$W/student.ra" ||
        { echo "profile: making the models failed"; exit 1; }
    python3 -c 'import random, sys
r = random.Random(20261122); rows, L, V = map(int, sys.argv[1:4])
for _ in range(rows): print(" ".join(str(r.randrange(V)) for _ in range(L)))' $(( (STEPS + 4) * B )) "$L" "$V" >"$W/ids.txt"
    bin/ra-tok -q --ids --pack "$L" -o "$W/tokens.ra" "$W/ids.txt" || { echo "profile: tokens failed"; exit 1; }
fi
args=(-m "$W/teacher.ra" -d "$W/tokens.ra" --batch "$B" --seq-len "$L" --steps "$STEPS" --device cuda --dtype bf16
      -s "$W/student.ra" --loss kd -o "$W/out.ra")
if [ "$REPORT_ONLY" != 1 ]; then
    printf 'command=B=%s L=%s HEADS=%s N=%s STEPS=%s RECOMPUTE="%s" bench/train_profile.sh\ncommit=%s\ngpu=%s\nrecompute=%s\n' \
        "$B" "$L" "$HEADS" "$N" "$STEPS" "$RECOMPUTE" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)" "$RECOMPUTE" >"$OUT/run.info"
    for r in $RECOMPUTE; do
        echo "== RA_TRAIN_RECOMPUTE=$r RA_TRAIN_PROFILE=1 bin/ra-mohawk3 ${args[*]} --log $OUT/s3-r$r.tsv"
        env RA_TRAIN_RECOMPUTE="$r" RA_TRAIN_PROFILE=1 bin/ra-mohawk3 "${args[@]}" --log "$OUT/s3-r$r.tsv" \
            >"$OUT/s3-r$r.log" 2>&1
        echo "exit $?"
    done
fi
report >"$RESULT.tmp" && mv "$RESULT.tmp" "$RESULT" && cat "$RESULT"
if [ "$REPORT_ONLY" != 1 ] && [ "$NSYS" = 1 ] && command -v nsys >/dev/null; then
    r=${RECOMPUTE%% *}
    env RA_TRAIN_RECOMPUTE="$r" nsys profile -q -o "$OUT/nsys-s3" --force-overwrite true bin/ra-mohawk3 "${args[@]}" \
        --steps 3 >"$OUT/nsys-run.log" 2>&1
    nsys stats -q --report cuda_gpu_kern_sum --format csv -o "$OUT/kern" "$OUT/nsys-s3.nsys-rep" >/dev/null 2>&1
    python3 - "$OUT"/kern*.csv <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
tot = sum(float(r["Total Time (ns)"]) for r in rows)
print(f"nsys kernels, 3 steps: {tot/1e6:.1f} ms of GPU kernel time")
for r in rows[:40]:
    print(f'{float(r["Total Time (ns)"])/1e6:9.1f} ms {float(r["Time (%)"]):5.1f}% {int(r["Instances"]):7d}  {r["Name"][:110]}')
PY
fi
rm -f "$W/out.ra"

#!/usr/bin/env bash
# Training-step benchmark on a GPU machine (DESIGN §2.5, §8; issue 7): ra's
# MOHAWK stage 3 (ra-mohawk3 --loss kd), stage 2 of every layer (ra-mohawk2)
# and stage 1 of every layer with SSM heads (ra-mohawk1) next to the plain
# PyTorch step of bench/torch_ref/train.py, in
# one run, on the Llama-3.2-1B shape (random weights) with a routed student of
# 10 kept heads and N = 64, B = 4, L = 2048: tokens/s, MFU against
# 790 TFLOP/s, peak memory.  Writes bench/results/train.md (and the logs, the
# TSV logs and a copy of train.md under $OUT).
#
#   bench/train.sh                          # the issue's shape
#   STEPS=20 bench/train.sh
#   SMOKE=1 bench/train.sh                  # tiny shape, results to $OUT/train.md only
#   SMOKE=1 DEVICE=cpu bench/train.sh       # the plumbing on a machine without a GPU
#   REPORT_ONLY=1 OUT=DIR bench/train.sh     # the table again from a run's logs in DIR
#
# Builds nothing: run `make` first (the tools in bin/ and build/tests/mk-scores).
# Variables: B L HEADS N STEPS WARMUP (the shape; ra runs WARMUP + STEPS
# steps), DEVICE (cuda; cpu times the CPU tools), TMO (seconds per run, 300),
# TORCH_SMOKE=0 skips the `train.py --smoke` check run first, DENSE=0 skips
# the stage-3 pair with a teacher-shaped student (every head attention: the
# same step without SSM heads, a second random init as the student),
# RECOMPUTE=0 skips ra's stage 3 again with RA_TRAIN_RECOMPUTE=1 (cuda only:
# activations recomputed per layer in the backward), OUT (logs, TSVs,
# a copy of the table), WORK (the models and tokens, several GB at the 1B
# shape; default $TMPDIR/ra-bench-train-work), RA_BIN / MK_SCORES (where the
# tools / build/tests/mk-scores are).
# The teacher is `ra-graft --random-init` of bench/torch_ref/train.py's config
# (--print config), the plan keeps train.py's heads (--print heads: head i in
# layer i*16/10, slot 7i mod 32; random weights make any choice as costly),
# ra-graft makes the routed student, and one packed tokens stream of seeded
# random ids feeds both sides (PyTorch reads it back through ra-tok --to-ids).
# ra's tokens/s is the steady rate of its --log TSV after WARMUP steps; its
# peak memory the `peak_device_bytes=N` line ra-mohawk1/2/3 print on stderr at
# the end of a CUDA run.  A tool that exits 69 (training on CUDA not built
# yet) gets a "not available" row; the script always writes the table.
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
    B=${B:-2} L=${L:-256} HEADS=${HEADS:-2} N=${N:-16} STEPS=${STEPS:-6} WARMUP=${WARMUP:-2}
else
    B=${B:-4} L=${L:-2048} HEADS=${HEADS:-10} N=${N:-64} STEPS=${STEPS:-10} WARMUP=${WARMUP:-3}
fi
RA_BIN=${RA_BIN:-bin} MK_SCORES=${MK_SCORES:-build/tests/mk-scores}
DEVICE=${DEVICE:-cuda} TORCH_SMOKE=${TORCH_SMOKE:-1} TMO=${TMO:-300} DENSE=${DENSE:-1} RECOMPUTE=${RECOMPUTE:-1}
OUT=${OUT:-/tmp/ra-bench-train}
RESULT=bench/results/train.md
[ "$SMOKE" = 1 ] && RESULT=$OUT/train.md
W=${WORK:-${TMPDIR:-/tmp}/ra-bench-train-work}
mkdir -p "$OUT" "$W/teacher" bench/results
export PYTHONUNBUFFERED=1
PY=bench/torch_ref/train.py
if [ "${REPORT_ONLY:-0}" != 1 ]; then
for t in "$RA_BIN"/ra-{graft,rank,tok,show,mohawk1,mohawk2,mohawk3} "$MK_SCORES"; do
    [ -x "$t" ] || { echo "bench: $t missing: build first (make)"; exit 1; }
done
smoke=(); [ "$SMOKE" = 1 ] && smoke=(--smoke)
since() { echo "   ($(( $(date +%s) - $1 )) s)"; }

# --- inputs: teacher, plan, student, tokens ------------------------------------
t0=$(date +%s)
echo "== inputs (B=$B L=$L heads=$HEADS N=$N${smoke:+, smoke shape})"
python3 $PY --print config "${smoke[@]}" >"$W/teacher/config.json" || { echo "bench: config failed"; exit 1; }
read -r LAYERS H HKV HD V < <(python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))
print(c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], c["vocab_size"])' \
    "$W/teacher/config.json")
python3 $PY --print heads --config "$W/teacher/config.json" --heads "$HEADS" >"$W/heads.txt"
KEPT=$(awk '{ printf "%s%d:%d", (NR > 1 ? "," : ""), $1, $2 }' "$W/heads.txt")
[ -n "$KEPT" ] || { echo "bench: no kept heads"; exit 1; }
# random teacher (bf16), its id, a scores stream ranking exactly the chosen heads first, the plan
"$RA_BIN"/ra-graft -q --random-init "$W/teacher" --seed 1 --dtype bf16 -o "$W/teacher.ra" &&
    TID=$("$RA_BIN"/ra-show --id "$W/teacher.ra") &&
    awk -v L="$LAYERS" -v H="$H" 'NR == FNR { k[$1 " " $2] = 1; next }
        END { for (l = 0; l < L; l++) for (h = 0; h < H; h++) print ((l " " h) in k) ? "1 1" : "0 0" }' \
        "$W/heads.txt" /dev/null | "$MK_SCORES" -L "$LAYERS" -H "$H" -G "$HKV" -d "$HD" -i "$TID" -o "$W/scores.ra" &&
    "$RA_BIN"/ra-rank -q --top "$HEADS" -o "$W/plan.ra" "$W/scores.ra" &&
    "$RA_BIN"/ra-graft -q -m "$W/teacher.ra" -p "$W/plan.ra" --layout routed --d-state "$N" --dtype bf16 -o "$W/student.ra" ||
    { echo "bench: making the teacher, plan or student failed"; exit 1; }
# tokens: (WARMUP + STEPS) * B rows plus room for the held-out tail, documents of exactly L ids
ROWS=$(( (WARMUP + STEPS) * B + 4 * B ))
python3 -c 'import random, sys
r = random.Random(20261122); rows, L, V = map(int, sys.argv[1:4])
for _ in range(rows): print(" ".join(str(r.randrange(V)) for _ in range(L)))' "$ROWS" "$L" "$V" >"$W/ids.txt"
"$RA_BIN"/ra-tok -q --ids --pack "$L" -o "$W/tokens.ra" "$W/ids.txt" && "$RA_BIN"/ra-tok -q --to-ids "$W/tokens.ra" >"$W/rows.txt" ||
    { echo "bench: tokens failed"; exit 1; }
since "$t0"

# the dense case: a second random teacher-shaped model as the student (every head attention)
if [ "$DENSE" = 1 ]; then
    "$RA_BIN"/ra-graft -q --random-init "$W/teacher" --seed 2 --dtype bf16 -o "$W/dense.ra" ||
        { echo "bench: making the dense student failed"; exit 1; }
fi
since "$t0"

# --- the runs ------------------------------------------------------------------
gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)
invocation="$(for v in SMOKE B L HEADS N STEPS WARMUP DEVICE DENSE RECOMPUTE TMO; do printf '%s=%s ' $v "${!v}"; done)bench/train.sh"
python3 -c 'import json, sys; k = sys.argv[1::2]; v = sys.argv[2::2]; print(json.dumps(dict(zip(k, v))))' \
    gpu "$gpu" B "$B" L "$L" HEADS "$HEADS" N "$N" STEPS "$STEPS" WARMUP "$WARMUP" DEVICE "$DEVICE" SMOKE "$SMOKE" \
    KEPT "$KEPT" invocation "$invocation" date "$(date -u +%Y-%m-%d)" >"$OUT/params.json"
torch_common=(--config "$W/teacher/config.json" --kept "$KEPT" --d-state "$N" --batch "$B" --seq-len "$L"
              --steps "$STEPS" --warmup "$WARMUP" --tokens "$W/rows.txt")
ra_common=(-m "$W/teacher.ra" -d "$W/tokens.ra" --batch "$B" --seq-len "$L" --steps $((WARMUP + STEPS))
           --device "$DEVICE" --dtype bf16)
: >"$OUT/cases.tsv"
# case KEY LABEL RA_COMMAND TORCH_ARGS [TORCH_KEY]: the two runs of one row pair (or ra's alone,
# compared with case TORCH_KEY's PyTorch run), and its line in cases.tsv
case_run() {
    local key=$1 label=$2 ra=$3 targs=$4 tkey=${5:-$1} flops
    flops=$(python3 $PY --print flops "${torch_common[@]}" $targs)
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$key" "$label" "$flops" "$ra" "python3 $PY ${torch_common[*]} $targs" \
        "$tkey" >>"$OUT/cases.tsv"
    run "ra-$key" $ra
    [ "$tkey" = "$key" ] && run "torch-$key" python3 $PY "${torch_common[@]}" $targs
}
run() { # name command...
    local name=$1 t=$(date +%s) rc; shift
    echo "== $*"
    rm -f "$OUT/$name.tsv"
    timeout "$TMO" "$@" >"$OUT/$name.log" 2>&1; rc=$?
    echo "$rc" >"$OUT/$name.rc"
    tr '\r' '\n' <"$OUT/$name.log" | grep -E 'RESULT|peak|stage [123]:|rror|exit|step [0-9]+/|cuda' | tail -n 6
    echo "   (exit $rc, $(( $(date +%s) - t )) s)"
}
if [ "$TORCH_SMOKE" = 1 ] && [ "$SMOKE" != 1 ]; then
    run torch-smoke python3 $PY --smoke
fi
case_run s3 "3 (kd)" "$RA_BIN/ra-mohawk3 ${ra_common[*]} -s $W/student.ra --loss kd --log $OUT/ra-s3.tsv -o $W/out.ra" \
    "--stage 3"
# the same step recomputing each layer's activations in its backward (kernels/model_train_cuda.h)
if [ "$DEVICE" = cuda ] && [ "$RECOMPUTE" = 1 ]; then
    case_run s3r "3 (kd), RA_TRAIN_RECOMPUTE=1" \
        "env RA_TRAIN_RECOMPUTE=1 $RA_BIN/ra-mohawk3 ${ra_common[*]} -s $W/student.ra --loss kd --log $OUT/ra-s3r.tsv -o $W/out.ra" \
        "--stage 3" s3
fi
case_run s2 "2 (all layers)" \
    "$RA_BIN/ra-mohawk2 ${ra_common[*]} -s $W/student.ra --layers 0-$((LAYERS - 1)) --log $OUT/ra-s2.tsv -o $W/out.ra" \
    "--stage 2"
case_run s1 "1 (all layers)" "$RA_BIN/ra-mohawk1 ${ra_common[*]} -s $W/student.ra --log $OUT/ra-s1.tsv -o $W/out.ra" \
    "--stage 1"
if [ "$DENSE" = 1 ]; then
    case_run d3 "3 (kd), teacher-shaped student" \
        "$RA_BIN/ra-mohawk3 ${ra_common[*]} -s $W/dense.ra --loss kd --log $OUT/ra-d3.tsv -o $W/out.ra" "--stage 3 --dense"
fi
rm -f "$W/out.ra"
fi # REPORT_ONLY

# --- the table (from $OUT alone: REPORT_ONLY=1 renders it again from a run's logs) ----
python3 - "$OUT" >"$RESULT" <<'EOF'
import json, os, re, sys

out = sys.argv[1]
P = json.load(open(os.path.join(out, "params.json")))
gpu, heads, N, device, smoke, kept = P["gpu"], P["HEADS"], P["N"], P["DEVICE"], P["SMOKE"], P["KEPT"]
B, L, steps, warmup = int(P["B"]), int(P["L"]), int(P["STEPS"]), int(P["WARMUP"])
PEAK = 790.0
cases = [l.rstrip("\n").split("\t") for l in open(os.path.join(out, "cases.tsv")) if l.strip()]

def read(name):
    try:
        return open(os.path.join(out, name)).read().replace("\r", "\n")
    except OSError:
        return ""

def rc_of(name):
    try:
        return int(read(name + ".rc").strip())
    except ValueError:
        return None

def ours(key):
    """tokens/s over the TSV rows after the warm-up steps, and the peak line."""
    name = f"ra-{key}"
    rc, log = rc_of(name), read(name + ".log")
    res = {"rc": rc}
    lines = [l for l in log.split("\n") if l.strip() and not l.startswith("peak_device_bytes=")]
    res["msg"] = lines[-1].strip().replace("|", "/") if lines else ""
    if rc == 69:
        res["na"] = True
        return res
    try:
        rows = [l.split("\t") for l in read(name + ".tsv").strip().split("\n")[1:] if l]
        rows = [(int(r[0]), int(r[1]), float(r[2]), float(r[6])) for r in rows]
    except (IndexError, ValueError):
        rows = []
    if len(rows) > warmup + 1 and rc == 0:
        (s0, k0, _, e0), (s1, k1, _, e1) = rows[warmup - 1] if warmup else (0, 0, 0, 0.0), rows[-1]
        res["tps"] = (k1 - k0) / (e1 - e0) if e1 > e0 else None
        res["loss"] = (rows[0][2], rows[-1][2])
    m = re.findall(r"peak_device_bytes=(\d+)", log)
    res["peak"] = int(m[-1]) if m else None
    return res

def torch_res(key):
    name = f"torch-{key}"
    m = re.findall(r"^RESULT (.*)$", read(name + ".log"), re.M)
    res = {"rc": rc_of(name)}
    if m:
        d = dict(kv.split("=", 1) for kv in m[-1].split())
        res.update(tps=float(d["tokens_per_s"]), peak=int(d["peak_bytes"]), d=d,
                   loss=(float(d["loss_first"]), float(d["loss_last"])))
    else:
        lines = [l for l in read(name + ".log").split("\n") if l.strip()]
        res["msg"] = lines[-1].strip().replace("|", "/") if lines else ""
    return res

def gb(x):
    return f"{x / 1e9:.1f}" if x else "–"

def mfu(flops, tps):
    return f"{flops / (B * L) * tps / 1e12 / PEAK * 100:.1f}%" if tps else "–"

R = {c[0]: (ours(c[0]), torch_res(c[5])) for c in cases}
print(f"# Training step: ra (ra-mohawk3, ra-mohawk2, ra-mohawk1) vs plain PyTorch{' (smoke shape)' if smoke == '1' else ''}\n")
tv = next((r[1]["d"] for r in R.values() if "d" in r[1]), None)
print(f"GPU: {gpu or 'unknown'}; {P['date']}"
      + (f"; torch {tv['torch']}, transformers {tv['transformers']}" if tv else "") + ".  "
      + ("Llama-3.2-1B shape (vocab 128256, hidden 2048, 16 layers, 32 heads, 8 KV heads, head dim 64, "
         "intermediate 8192, tied embeddings), random weights" if smoke != "1" else "The tiny --smoke shape")
      + f"; routed student with {heads} kept heads ({kept.replace(',', ', ')} as layer:head), the other heads "
      f"DiscreteMamba2 with N = {N}, static adapter; B = {B}, L = {L} ({B * L} tokens per step), "
      f"{steps} timed steps after {warmup} warm-up steps.  Stage 3: soft-target CE against the teacher's "
      "logits (T = 1), every student parameter trains.  Stage 2: all layers at once, each block on the "
      "teacher's residual, every block parameter trains."
      + ("  Stage 1: every layer with SSM heads, each SSM head's fp32 mixing matrix against the teacher's "
         "attention matrix of the head whose slot it takes (Frobenius); ra trains the B, C, A_log rows of "
         "in_proj, the B/C conv channels and D, PyTorch the whole in_proj, conv and D tensors (the other rows "
         "get zero gradients)." if any(c[0] == "s1" for c in cases) else "")
      + "  AdamW (0.9/0.95, wd 0.1) with fp32 master weights, bf16 compute, on both sides."
      + ("  The teacher-shaped rows train a second random Llama of the same shape (every head attention, GQA) "
         "as the student: the same step without SSM heads." if any(c[0] == "d3" for c in cases) else "")
      + (f"  RA_TRAIN_RECOMPUTE=1: selective recomputation (each layer keeps its input, its attention and "
         "SSD-core outputs and chunk states, and recomputes its projections, norms and elementwise steps just "
         "before its backward)." if any(c[0] == "s3r" for c in cases) else "")
      + "\n")
print("| tool | stage | tokens/s | MFU (of 790 TFLOP/s) | peak GB | vs PyTorch: tokens/s | vs PyTorch: memory |")
print("|---|---|---|---|---|---|---|")
for key, label, flops, ra_cmd, pt_cmd, tkey in cases:
    flops = float(flops)
    ra, pt = R[key]
    tool = next(w for w in ra_cmd.split() if "ra-mohawk" in w).rsplit("/", 1)[-1] + f" --device {device}"
    if ra.get("na"):
        print(f"| {tool} | {label} | not available (exit 69: {ra['msg']}) | | | | |")
    elif ra.get("tps"):
        sp = f"{ra['tps'] / pt['tps']:.2f}x" if pt.get("tps") else "–"
        mem = f"{ra['peak'] / pt['peak']:.2f}x" if ra.get("peak") and pt.get("peak") else "–"
        print(f"| {tool} | {label} | {ra['tps']:,.0f} | {mfu(flops, ra['tps'])} | {gb(ra.get('peak'))} | {sp} | {mem} |")
    else:
        print(f"| {tool} | {label} | failed (exit {ra['rc']}: {ra['msg']}) | | | | |")
    if tkey != key:  # compared with another case's PyTorch row
        pass
    elif pt.get("tps"):
        print(f"| PyTorch (train.py) | {label} | {pt['tps']:,.0f} | {mfu(flops, pt['tps'])} | {gb(pt['peak'])} | "
              "1.00x | 1.00x |")
    else:
        print(f"| PyTorch (train.py) | {label} | failed (exit {pt['rc']}: {pt.get('msg', '')}) | | | | |")
print("\nTargets (issue 7, DESIGN §8): stage 3 ≥ 2x the PyTorch step's tokens/s at ≤ half its memory; "
      "≥ 50% MFU in stages 2 and 3.  Reference figure: 21.7k tokens/s, 75 GB, 30% MFU for the PyTorch "
      "stage-3 step on one H200.")
for key, label, *_, tkey in cases:
    ra3, pt3 = R[key]
    if tkey == "s3" and ra3.get("tps") and pt3.get("tps") and ra3.get("peak"):
        sp, mem = ra3["tps"] / pt3["tps"], ra3["peak"] / pt3["peak"]
        print(f"\nStage {label} here: {sp:.2f}x the tokens/s ({'met' if sp >= 2 else 'not met'}), "
              f"{mem:.2f}x the memory ({'met' if mem <= 0.5 else 'not met'}).")
counts = []
for key, label, *_, tkey in cases:
    m = re.search(r"(\d+) parameters", read(f"ra-{key}.log"))
    t = R[key][1].get("d", {}).get("trainable")
    if tkey == key and (m or t):
        counts.append(f"{label}: ra {int(m.group(1)):,}" if m else f"{label}: ra –")
        counts[-1] += f", PyTorch {int(t):,}" if t else ""
if counts:
    print("\nTrainable parameters (the two students have the same shapes): " + "; ".join(counts) + ".")
print("\nLosses (first → last step; the two sides start from different random weights):\n")
for key, label, *_, tkey in cases:
    for who, r in zip(("ra", "PyTorch"), R[key][:1 if tkey != key else 2]):
        if r.get("loss"):
            print(f"- {label}, {who}: {r['loss'][0]:.4g} → {r['loss'][1]:.4g}")
print("\nFLOPs per step (bench/torch_ref/train.py count_flops, the same for both tools): "
      + ", ".join(f"{label} {float(f):.4g}" for _, label, f, *r in cases if r[-1] == _) + ".  Matmuls 6·(student matmul "
      "parameters)·tokens + 2·(teacher matmul parameters)·tokens (LM heads in stage 3 only), causal attention "
      "2·L²·hd per head and row forward (student heads ×3 for forward + backward), SSD 2·128·(N + hd) + 4·hd·N "
      "per token and SSM head forward (×3); stage 1: the teacher forward, causal QKᵀ of the paired heads, "
      "in_proj's B/C/A_log rows ×6, C·Bᵀ forward and dC, dB backward (3·B·L²·N per SSM head); embeddings, "
      "norms, conv, softmax and elementwise work not counted.")
print("\nHow it is measured: ra's tokens/s is the rate between the warm-up's last step and the last step in "
      "the tool's --log TSV (tokens and elapsed_s columns; the model load and upload are outside it); its "
      "peak is the `peak_device_bytes` the tool prints at the end of a CUDA run (cudaMemGetInfo high-water "
      "mark: the whole device, CUDA context included).  PyTorch: steps between torch.cuda.synchronize() "
      "calls; peak = torch.cuda.max_memory_allocated() over the process (teacher, student, AdamW state, "
      "activations, logits; the CUDA context and the caching allocator's slack are not in it).  GB = 10⁹ "
      "bytes.  Both read the same token rows (one packed stream, documents of exactly L tokens).\n")
print(f"Made by `{P['invocation']}`; the commands it ran (inputs made by ra-graft --random-init, mk-scores + "
      f"ra-rank, ra-graft --layout routed --d-state {N}, ra-tok --ids --pack):\n")
for key, label, flops, ra_cmd, pt_cmd, tkey in cases:
    print(f"    {ra_cmd}" + (f"\n    {pt_cmd}" if tkey == key else ""))
EOF
cp "$RESULT" "$OUT/train.md" 2>/dev/null
echo "== $RESULT"
cat "$RESULT"

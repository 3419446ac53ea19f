#!/usr/bin/env bash
# ra-probe benchmark on a GPU machine (DESIGN §8): Llama-3.2-1B shape, random
# bf16 weights (transformers init), SAMPLES prompts of PAIRS pairs, every head;
# ra-probe --method exact and --method hybrid next to the PyTorch loop that
# zeroes each head's o_proj columns and runs a transformers forward
# (bench/torch_ref/probe.py), on the same token rows, in the same run.
# Writes bench/results/probe.md (and the logs and artifacts under $OUT).
#
#   bench/probe.sh                       # 128 prompts x 50 pairs, all 512 heads
#   TORCH_HEADS=0 bench/probe.sh         # time the PyTorch loop on every head
#   LAYERS=4 SAMPLES=32 bench/probe.sh   # a quick smoke run
#
# The PyTorch loop runs one full forward per head whatever the head, so by
# default it is timed on TORCH_HEADS=64 evenly spaced heads and its per-head
# time scaled to all heads (probe.md says so); ra-probe exact and hybrid always
# run on every head.  HYBRID_RUNS hybrid runs (default 2) show the spread;
# CONFIRM_ALT (default 20; 0: none) adds a hybrid run with that --confirm.
# The top-10 agreement of hybrid with exact is also computed, for every
# --confirm M, from the exact scores and the hybrid run's attribution of all
# heads (the hybrid confirms the M heads of largest attribution exactly and
# its exact values are the exact run's: checked).
#
# Needs a CUDA build of the tools (make, or make DEPS_PREFIX=$PWD/.deps on a
# machine without the -dev packages), python3 with torch and transformers.
set -uo pipefail
cd "$(dirname "$0")/.."
SAMPLES=${SAMPLES:-128} PAIRS=${PAIRS:-50} LAYERS=${LAYERS:-16} BATCH=${BATCH:-128}
TORCH_HEADS=${TORCH_HEADS:-64} HYBRID_RUNS=${HYBRID_RUNS:-2} CONFIRM_ALT=${CONFIRM_ALT:-20}
OUT=${OUT:-/tmp/ra-bench-probe}
mkdir -p "$OUT" bench/results
export PYTHONUNBUFFERED=1
# the GPU machine lacks the -dev packages: use .deps (tests/gpu/pack-deps.sh) when it is there
[ -z "${DEPS_PREFIX:-}" ] && [ -d .deps ] && DEPS_PREFIX=$PWD/.deps
[ -x bin/ra-probe ] && [ -x bin/ra-rank ] && [ -x bin/ra-show ] || make -s -j"$(nproc)" \
    ${DEPS_PREFIX:+DEPS_PREFIX=$DEPS_PREFIX} bin/ra-probe bin/ra-rank bin/ra-show || { echo "bench: build failed"; exit 1; }

T="$OUT/teacher"
if [ ! -f "$T/model.safetensors" ]; then
    python3 bench/torch_ref/probe.py make-teacher "$T" --layers "$LAYERS" || { echo "bench: teacher failed"; exit 1; }
fi
cp tests/fixtures/tokenizers/llama3-style/* "$T/"

# keys: the system word list when there is one, else the 5000-word fixture
WORDS=${WORDS:-/usr/share/dict/words}
[ -r "$WORDS" ] || WORDS=tests/fixtures/words.txt
common=(-m "$T" --pairs "$PAIRS" --samples "$SAMPLES" --device cuda --batch "$BATCH" --words "$WORDS")
# wall time of each ra-probe run, end to end (process start to exit: CUDA
# context, tokenizer, safetensors load, upload, probe, writing the scores)
wall() { local t0=$EPOCHREALTIME rc; "$@"; rc=$?; WALL=$(python3 -c "print($EPOCHREALTIME - $t0)"); return $rc; }
show() { tr '\r' '\n' <"$1" | grep -v '^ra-probe: exact: [0-9]' | tail -n 5; }
echo "== ra-probe exact"
wall bin/ra-probe "${common[@]}" --dump-tokens "$OUT/tokens.json" -o "$OUT/exact.ra" 2>"$OUT/exact.log"
echo "$? $WALL" >"$OUT/exact.wall"
show "$OUT/exact.log"
runs=()
for k in $(seq 1 "$HYBRID_RUNS"); do runs+=("hybrid$k"); done
[ "$CONFIRM_ALT" -gt 0 ] 2>/dev/null && runs+=("hybrid_c$CONFIRM_ALT")
for r in "${runs[@]}"; do
    extra=(); [[ $r == hybrid_c* ]] && extra=(--confirm "$CONFIRM_ALT")
    echo "== ra-probe --method hybrid ${extra[*]} ($r)"
    wall bin/ra-probe "${common[@]}" --method hybrid "${extra[@]}" -o "$OUT/$r.ra" 2>"$OUT/$r.log"
    echo "$? $WALL" >"$OUT/$r.wall"
    show "$OUT/$r.log"
done
echo "== PyTorch loop (${TORCH_HEADS} heads; 0 = all)"
python3 bench/torch_ref/probe.py run --model "$T" --tokens "$OUT/tokens.json" --out "$OUT/torch.json" \
    --batch "$BATCH" --heads "$TORCH_HEADS" >"$OUT/torch.log" 2>&1; py_rc=$?
tail -n 5 "$OUT/torch.log"

for m in exact "${runs[@]}"; do
    [ -f "$OUT/$m.ra" ] || continue
    bin/ra-show --json --values "$OUT/$m.ra" >"$OUT/$m.json" 2>/dev/null
    for by in acc logprob; do bin/ra-rank -q --top 10 --by $by --table "$OUT/$m.ra" >"$OUT/$m.$by.table"; done
done

gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)
python3 - "$OUT" "$py_rc" "$gpu" "$SAMPLES" "$PAIRS" "$LAYERS" "$TORCH_HEADS" "${runs[*]}" >bench/results/probe.md <<'EOF'
import datetime, json, math, os, re, sys

out, py_rc, gpu, samples, pairs, layers, torch_heads, runs = sys.argv[1:9]
runs = runs.split()
L, H = int(layers), 32
LH = L * H

def read(name):
    try:
        return open(os.path.join(out, name)).read()
    except OSError:
        return None

def timing(run):
    text = (read(run + ".log") or "").replace("\r", "\n")
    m = re.search(r"timing: start ([\d.]+) s, load ([\d.]+) s \(tokenizer ([\d.]+), model ([\d.]+), prompts ([\d.]+)\), "
                  r"to device ([\d.]+) s, attribution ([\d.]+) s, exact ([\d.]+) s \((\d+) heads\), total ([\d.]+) s", text)
    if not m:
        return None
    t = dict(zip(("start", "load", "tok", "model", "prompts", "up", "attr", "exact", "heads", "total"), map(float, m.groups())))
    m = re.search(r"device thread: context ([\d.]+) s, upload ([\d.]+) s; content id wait ([\d.]+) s, write ([\d.]+) s", text)
    t.update(dict(zip(("ctx", "upload", "idwait", "write"), map(float, m.groups()))) if m else {})
    w = (read(run + ".wall") or "1 nan").split()
    t["rc"], t["wall"] = int(w[0]), float(w[1])
    return t

def scores(run):
    try:
        d = json.loads(read(run + ".json"))
    except (TypeError, ValueError):
        return None
    v = {t["name"]: t.get("values") for t in d["tensors"]}
    return {k: [float("nan") if x is None else float(x) for x in v[k]] for k in v if v[k] is not None}

def rank(sc, by="acc"):
    """ra-rank's order: exact heads first, then the chosen drop, then the other
    (both descending, NaN last), then layer and head."""
    p, q = (sc["acc_drop"], sc["logprob_drop"]) if by == "acc" else (sc["logprob_drop"], sc["acc_drop"])
    key = lambda x: (0, -x) if not math.isnan(x) else (1, 0)
    return sorted(range(LH), key=lambda i: (-sc["exact"][i], key(p[i]), key(q[i]), i))

def torch_result():
    for line in (read("torch.log") or "").split("\n"):
        if line.startswith("RESULT "):
            return dict(kv.split("=", 1) for kv in line.split()[1:])
    return None

def name(run):
    if run == "exact":
        return "ra-probe --method exact"
    m = re.match(r"hybrid_c(\d+)", run)
    return f"ra-probe --method hybrid --confirm {m.group(1)}" if m else f"ra-probe --method hybrid (run {run[6:]})"

tok = json.loads(read("tokens.json") or "{}")
rows = tok.get("rows", [])
mean_len = sum(map(len, rows)) / max(1, len(rows))
pt = torch_result()
pt_all = float(pt["all_heads_s"]) if pt else None
print("# ra-probe: exact and hybrid vs the PyTorch ablation loop\n")
print(f"GPU: {gpu or 'unknown'}; {datetime.date.today()}.  Llama-3.2-1B shape ({layers} layers, 32 heads, 8 KV heads, "
      f"hidden 2048, intermediate 8192, vocab 128256, tied), random bf16 weights (transformers init, std 0.02); "
      f"{samples} prompts of {pairs} pairs, tokenised with tests/fixtures/tokenizers/llama3-style "
      f"({len(rows)} token rows, {mean_len:.0f} tokens on average), choice scoring; every head. "
      "ra-probe is timed end to end (wall time of the process: CUDA context, tokenizer, safetensors load, upload "
      "to the GPU, probe, writing the scores); the PyTorch loop is its timed loop alone (model already on the GPU, "
      "baseline forward excluded). Both sides score the same token rows (ra-probe --dump-tokens).")
if pt and int(pt["heads_timed"]) != LH:
    print(f"The PyTorch loop costs one full forward per head whichever the head, so it was timed on "
          f"{pt['heads_timed']} evenly spaced heads ({float(pt['seconds']):.1f} s, {float(pt['s_per_head']):.4f} s/head) "
          f"and that per-head time scaled to all {LH} heads; ra-probe ran on all {LH} heads.")
print()
print("| implementation | heads measured exactly | wall seconds | of which probe (attribution + exact) | "
      "s / head (all heads, wall) | speedup vs PyTorch (wall) | speedup (probe only) |")
print("|---|---|---|---|---|---|---|")
if pt:
    note = "" if int(pt["heads_timed"]) == LH else f", {pt['heads_timed']} heads timed, scaled to {LH}"
    print(f"| PyTorch loop ({pt['impl']}{note}) | {LH} | {pt_all:.1f} | {pt_all:.1f} | "
          f"{float(pt['s_per_head']):.4f} | 1.0x | 1.0x |")
else:
    print(f"| PyTorch loop | – | failed (exit {py_rc}) | | | | |")
T = {r: timing(r) for r in ["exact"] + runs}
for r, t in T.items():
    if t and t["rc"] == 0:
        sp = f"{pt_all / t['wall']:.1f}x" if pt_all else "–"
        sp_probe = f"{pt_all / t['total']:.1f}x" if pt_all else "–"
        print(f"| {name(r)} | {int(t['heads'])} | {t['wall']:.2f} | {t['total']:.2f} (attribution {t['attr']:.2f}, "
              f"exact {t['exact']:.2f}) | {t['wall'] / LH:.4f} | {sp} | {sp_probe} |")
    else:
        print(f"| {name(r)} | – | failed (exit {t['rc'] if t else '?'}) | | | | |")
print("\nWhere ra-probe's wall time goes (seconds). The device thread creates the CUDA context and uploads the "
      "checkpoint's bf16 bytes while the main thread loads the tokenizer, maps the checkpoint and tokenises; "
      "\"to device\" is what remains of it after tokenising, plus the probe's buffers; \"rest\" is the wall time "
      "outside main's clock (loading the executable and its CUDA libraries, process exit) plus writing the scores.\n")
print("| run | start (words, prompts) | tokenizer | map checkpoint | tokenise | to device | (thread: context, upload) "
      "| attribution | exact | rest (write, exit) | wall |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r, t in T.items():
    if t and t["rc"] == 0:
        rest = t["wall"] - (t["start"] + t["load"] + t["up"] + t["total"])
        thr = f"{t['ctx']:.2f}, {t['upload']:.2f}" if "ctx" in t else "–"
        print(f"| {r} | {t['start']:.2f} | {t['tok']:.2f} | {t['model']:.2f} | {t['prompts']:.2f} | {t['up']:.2f} | "
              f"{thr} | {t['attr']:.2f} | {t['exact']:.2f} | {rest:.2f} | {t['wall']:.2f} |")
target = pt_all / 20 if pt_all else None
print(f"\nTargets (DESIGN §8): exact ≥ 3x, hybrid ≥ 20x (wall ≤ {target:.2f} s here) with the same top-10 set "
      "as exact.  ra-rank ranks by accuracy drop unless told `--by logprob`.\n" if target else "")
ex = scores("exact")
for r in runs:
    sc = scores(r)
    if not (ex and sc):
        continue
    parts = []
    for by in ("acc", "logprob"):
        e, h = set(rank(ex, by)[:10]), set(rank(sc, by)[:10])
        parts.append(f"by {by}{' (default)' if by == 'acc' else ''} {len(e & h)}/10")
    conf = [i for i in range(LH) if sc["exact"][i]]
    d = max(max(abs(sc["logprob_drop"][i] - ex["logprob_drop"][i]), abs(sc["acc_drop"][i] - ex["acc_drop"][i]))
            for i in conf) if conf else float("nan")
    print(f"- {name(r)}: top-10 shared with exact: {', '.join(parts)}; its {len(conf)} confirmed heads' drops "
          f"against the exact run's: max |Δ| {d:.3g}")
if ex:
    for by in ("acc", "logprob"):
        print(f"- exact top-10 by {by}: " + ", ".join(f"{i // H}/{i % H} ({ex['acc_drop'][i]:.4f}, "
                                                     f"{ex['logprob_drop'][i]:.4f})" for i in rank(ex, by)[:10]))
# every --confirm M from the exact scores and one hybrid run's attribution
hy = scores(runs[0]) if runs else None
if ex and hy and "attribution" in hy:
    a = hy["attribution"]
    order = sorted(range(LH), key=lambda i: (-a[i], i))  # ra-probe's choice: largest attribution, lower index on ties
    print("\nTop-10 agreement with exact for every --confirm M, computed from the exact run's drops and the "
          f"attribution of {runs[0]} (the hybrid confirms the M heads of largest attribution; unconfirmed heads rank "
          "after them): the heads exact's top-10 shares with hybrid's.\n")
    print("| --confirm M | by acc (ra-rank default) | by logprob | exact top-10 (by logprob) heads among the M |")
    print("|---|---|---|---|")
    top_lp = set(rank(ex, "logprob")[:10])
    for M in (10, 12, 16, 20, 24, 32, 40, 48, 64, 96, 128):
        if M > LH:
            break
        conf = set(order[:M])
        emu = {"exact": [1 if i in conf else 0 for i in range(LH)],
               "acc_drop": [ex["acc_drop"][i] if i in conf else float("nan") for i in range(LH)],
               "logprob_drop": [ex["logprob_drop"][i] if i in conf else a[i] for i in range(LH)]}
        row = [f"{len(set(rank(ex, by)[:10]) & set(rank(emu, by)[:10]))}/10" for by in ("acc", "logprob")]
        print(f"| {M}{' (default)' if M == 4 * max(1, round(0.02 * LH)) else ''} | {row[0]} | {row[1]} | "
              f"{len(top_lp & conf)}/10 |")
try:
    tj = json.loads(read("torch.json"))
    diffs = [abs(tj["logprob_drop"][i // H][i % H] - ex["logprob_drop"][i]) for i in range(LH)
             if tj["logprob_drop"][i // H][i % H] is not None]
    if diffs:
        print(f"\n- exact vs PyTorch log-prob drops (bf16 both): max |Δ| {max(diffs):.4f} over the {len(diffs)} heads "
              f"PyTorch measured; baseline accuracy PyTorch {tj['baseline']['accuracy']:.4f}")
except (TypeError, KeyError, ValueError):
    pass
for r in ["exact"] + runs:
    lines = [l for l in (read(r + ".log") or "").replace("\r", "\n").split("\n")
             if l.startswith("ra-probe:") and "ablations/s" not in l]
    print(f"\n`{r}.log`:\n\n```\n" + "\n".join(lines[-4:]) + "\n```")
EOF
cat bench/results/probe.md

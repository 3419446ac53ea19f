#!/usr/bin/env bash
# ra-probe benchmark on a GPU machine (DESIGN §8): Llama-3.2-1B shape, random
# bf16 weights (transformers init), SAMPLES prompts of PAIRS pairs, every head;
# ra-probe --method exact and --method hybrid next to the PyTorch loop that
# zeroes each head's o_proj columns and runs a transformers forward
# (bench/torch_ref/probe.py), on the same token rows, in the same run.
# Writes bench/results/probe.md (and the logs and artifacts under $OUT).
#
#   bench/probe.sh                       # 128 prompts x 50 pairs, all 512 heads
#   TORCH_HEADS=64 bench/probe.sh        # time the PyTorch loop on 64 heads only
#   LAYERS=4 SAMPLES=32 bench/probe.sh   # a quick smoke run
#
# Needs a CUDA build of the tools (make, or make DEPS_PREFIX=$PWD/.deps on a
# machine without the -dev packages), python3 with torch and transformers.
set -uo pipefail
cd "$(dirname "$0")/.."
SAMPLES=${SAMPLES:-128} PAIRS=${PAIRS:-50} LAYERS=${LAYERS:-16} BATCH=${BATCH:-128}
TORCH_HEADS=${TORCH_HEADS:-0}
OUT=${OUT:-/tmp/ra-bench-probe}
mkdir -p "$OUT" bench/results
export PYTHONUNBUFFERED=1
# the GPU machine lacks the -dev packages: use .deps (tests/gpu/pack-deps.sh) when it is there
[ -z "${DEPS_PREFIX:-}" ] && [ -d .deps ] && DEPS_PREFIX=$PWD/.deps
[ -x bin/ra-probe ] && [ -x bin/ra-rank ] || make -s -j"$(nproc)" ${DEPS_PREFIX:+DEPS_PREFIX=$DEPS_PREFIX} \
    bin/ra-probe bin/ra-rank || { echo "bench: build failed"; exit 1; }

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
echo "== ra-probe exact"
wall bin/ra-probe "${common[@]}" --dump-tokens "$OUT/tokens.json" -o "$OUT/exact.ra" 2>"$OUT/exact.log"; ex_rc=$?
echo "$WALL" >"$OUT/exact.wall"
tr '\r' '\n' <"$OUT/exact.log" | grep -v '^ra-probe: exact: [0-9]' | tail -n 5
echo "== ra-probe hybrid"
wall bin/ra-probe "${common[@]}" --method hybrid -o "$OUT/hybrid.ra" 2>"$OUT/hybrid.log"; hy_rc=$?
echo "$WALL" >"$OUT/hybrid.wall"
tr '\r' '\n' <"$OUT/hybrid.log" | grep -v '^ra-probe: exact: [0-9]' | tail -n 5
echo "== PyTorch loop"
python3 bench/torch_ref/probe.py run --model "$T" --tokens "$OUT/tokens.json" --out "$OUT/torch.json" \
    --batch "$BATCH" --heads "$TORCH_HEADS" >"$OUT/torch.log" 2>&1; py_rc=$?
tail -n 5 "$OUT/torch.log"

for m in exact hybrid; do
    for by in acc logprob; do
        [ -f "$OUT/$m.ra" ] && bin/ra-rank -q --top 10 --by $by --table "$OUT/$m.ra" >"$OUT/$m.$by.table"
    done
done

gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)
python3 - "$OUT" "$ex_rc" "$hy_rc" "$py_rc" "$gpu" "$SAMPLES" "$PAIRS" "$LAYERS" >bench/results/probe.md <<'EOF'
import datetime, json, os, re, sys

out, ex_rc, hy_rc, py_rc, gpu, samples, pairs, layers = sys.argv[1:9]

def timing(log):
    try:
        text = open(os.path.join(out, log)).read().replace("\r", "\n")
    except OSError:
        return None
    m = re.search(r"timing: start ([\d.]+) s, load ([\d.]+) s \(tokenizer ([\d.]+), model ([\d.]+), prompts ([\d.]+)\), "
                  r"to device ([\d.]+) s, attribution ([\d.]+) s, exact ([\d.]+) s \((\d+) heads\), total ([\d.]+) s", text)
    if not m:
        return None
    t = dict(zip(("start", "load", "tok", "model", "prompts", "up", "attr", "exact", "heads", "total"), map(float, m.groups())))
    try:
        t["wall"] = float(open(os.path.join(out, log.replace(".log", ".wall"))).read())
    except (OSError, ValueError):
        t["wall"] = None
    return t

def table(name):
    rows = []
    try:
        for line in open(os.path.join(out, name)).read().split("\n")[1:]:
            f = line.split()
            if len(f) == 5:
                rows.append((int(f[1]), int(f[2]), float(f[3]), float(f[4])))
    except OSError:
        pass
    return rows

def torch_result():
    try:
        for line in open(os.path.join(out, "torch.log")):
            if line.startswith("RESULT "):
                return dict(kv.split("=", 1) for kv in line.split()[1:])
    except OSError:
        pass
    return None

ex, hy, pt = timing("exact.log"), timing("hybrid.log"), torch_result()
tok = {}
try:
    tok = json.load(open(os.path.join(out, "tokens.json")))
except OSError:
    pass
n_rows = len(tok.get("rows", []))
mean_len = sum(map(len, tok.get("rows", []))) / max(1, n_rows)
print("# ra-probe: exact and hybrid vs the PyTorch ablation loop\n")
print(f"GPU: {gpu or 'unknown'}; {datetime.date.today()}.  Llama-3.2-1B shape ({layers} layers, 32 heads, 8 KV heads, "
      f"hidden 2048, intermediate 8192, vocab 128256, tied), random bf16 weights (transformers init, std 0.02); "
      f"{samples} prompts of {pairs} pairs, tokenised with tests/fixtures/tokenizers/llama3-style "
      f"({n_rows} token rows, {mean_len:.0f} tokens on average), choice scoring; every head. "
      "ra-probe is timed end to end (wall time of the process: CUDA context, tokenizer, safetensors load, upload "
      "to the GPU, probe, writing the scores); the PyTorch loop is its timed loop alone (model already on the GPU, "
      "baseline forward excluded). Both sides score the same token rows (ra-probe --dump-tokens).\n")
print("| implementation | heads measured exactly | wall seconds | of which probe (attribution + exact) | "
      "s / head (all heads, wall) | speedup vs PyTorch (wall) | speedup (probe only) |")
print("|---|---|---|---|---|---|---|")
heads_all = int(layers) * 32
pt_all = float(pt["all_heads_s"]) if pt else None
if pt:
    note = "" if int(pt["heads_timed"]) == heads_all else f" (timed on {pt['heads_timed']} heads, scaled)"
    print(f"| PyTorch loop ({pt['impl']}){note} | {heads_all} | {pt_all:.1f} | {pt_all:.1f} | "
          f"{float(pt['s_per_head']):.4f} | 1.0x | 1.0x |")
else:
    print(f"| PyTorch loop | – | failed (exit {py_rc}) | | | | |")
for name, t, rc in (("ra-probe --method exact", ex, ex_rc), ("ra-probe --method hybrid", hy, hy_rc)):
    if t:
        wall = t["wall"] if t["wall"] else t["start"] + t["load"] + t["up"] + t["total"]
        sp = f"{pt_all / wall:.1f}x" if pt_all else "–"
        sp_probe = f"{pt_all / t['total']:.1f}x" if pt_all else "–"
        print(f"| {name} | {int(t['heads'])} | {wall:.1f} | {t['total']:.1f} (attribution {t['attr']:.1f}, "
              f"exact {t['exact']:.1f}) | {wall / heads_all:.4f} | {sp} | {sp_probe} |")
    else:
        print(f"| {name} | – | failed (exit {rc}) | | | | |")
print("\nWhere ra-probe's wall time goes (seconds):\n")
print("| run | start (prompts, CUDA context) | tokenizer | model load | tokenise prompts | to GPU | attribution | exact | rest (write, exit) | wall |")
print("|---|---|---|---|---|---|---|---|---|---|")
for name, t in (("exact", ex), ("hybrid", hy)):
    if t and t["wall"]:
        rest = t["wall"] - (t["start"] + t["load"] + t["up"] + t["total"])
        print(f"| {name} | {t['start']:.2f} | {t['tok']:.2f} | {t['model']:.2f} | {t['prompts']:.2f} | {t['up']:.2f} | "
              f"{t['attr']:.2f} | {t['exact']:.2f} | {rest:.2f} | {t['wall']:.2f} |")
print("\nTargets (DESIGN §8): exact ≥ 3x, hybrid ≥ 20x with the same top-10 set as exact.\n")
for by in ("acc", "logprob"):
    e, h = table(f"exact.{by}.table"), table(f"hybrid.{by}.table")
    if e and h:
        se, sh = {(l, x) for l, x, _, _ in e[:10]}, {(l, x) for l, x, _, _ in h[:10]}
        print(f"- top-10 by {by}: hybrid shares {len(se & sh)}/10 heads with exact "
              f"({'same set' if se == sh else 'differs'}); exact top-10 " + ", ".join(f"{l}/{x}" for l, x, _, _ in e[:10]))
try:
    tj = json.load(open(os.path.join(out, "torch.json")))
    e = {(l, x): (a, p) for l, x, a, p in table("exact.logprob.table")}
    diffs = [abs(tj["logprob_drop"][l][x] - e[(l, x)][1]) for (l, x) in e if tj["logprob_drop"][l][x] is not None]
    if diffs:
        print(f"- exact vs PyTorch log-prob drops (bf16 both): max |Δ| {max(diffs):.4f} over {len(diffs)} heads; "
              f"baseline accuracy PyTorch {tj['baseline']['accuracy']:.4f}")
except (OSError, KeyError, ValueError):
    pass
for name in ("exact.log", "hybrid.log"):
    try:
        lines = [l for l in open(os.path.join(out, name)).read().replace("\r", "\n").split("\n")
                 if l.startswith("ra-probe:") and "ablations/s" not in l]
        print(f"\n`{name}`:\n\n```\n" + "\n".join(lines[-4:]) + "\n```")
    except OSError:
        pass
EOF
cat bench/results/probe.md

#!/usr/bin/env bash
# Decode benchmark on a GPU machine (DESIGN §2.6, §8; issue 8): ra's CUDA
# decoder (build/bench/decode) on the Llama-3.2-1B shape as the teacher and as
# a 10-head hybrid (parallel layout, N = 8), and transformers generating with
# the teacher and a static KV cache (bench/torch_ref/decode.py), all at
# context 4096 in one run: batch sweep until memory runs out, maximum batch,
# decode tokens/s, prefill tokens/s, peak memory.  Writes
# bench/results/decode.md (and a copy plus the logs under $OUT when set).
#
#   bench/decode.sh                    # CTX=4096 HEADS=10 N=8 LAYOUT=parallel
#   CTX=2048 LAYOUT=routed bench/decode.sh
#
# Runs `make bench-bins` first if build/bench/decode is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
CTX=${CTX:-4096} HEADS=${HEADS:-10} N=${N:-8} LAYOUT=${LAYOUT:-parallel} LAYERS=${LAYERS:-16}
OUT=${OUT:-/tmp/ra-bench}
mkdir -p "$OUT" bench/results
export PYTHONUNBUFFERED=1
[ -x build/bench/decode ] || make -s bench-bins || { echo "bench: build failed"; exit 1; }

t_cmd="build/bench/decode --model teacher --ctx $CTX --layers $LAYERS"
h_cmd="build/bench/decode --model hybrid --layout $LAYOUT --heads $HEADS --d-state $N --ctx $CTX --layers $LAYERS"
py_cmd="python3 bench/torch_ref/decode.py --ctx $CTX --layers $LAYERS"
run() { # name command
    echo "== $2"
    local t0=$(date +%s)
    $2 >"$OUT/decode-$1.log" 2>&1
    local rc=$?
    grep -E '^(SWEEP|RESULT)|^#|error|Error' "$OUT/decode-$1.log" | tail -n 30
    echo "   (exit $rc, $(( $(date +%s) - t0 )) s)"
    return $rc
}
run teacher "$t_cmd"; t_rc=$?
run hybrid "$h_cmd"; h_rc=$?
run torch "$py_cmd"; py_rc=$?

gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)
python3 - "$OUT" "$t_rc" "$h_rc" "$py_rc" "$gpu" "$t_cmd" "$h_cmd" "$py_cmd" "$CTX" >bench/results/decode.md <<'EOF'
import sys, datetime

out, t_rc, h_rc, py_rc, gpu, t_cmd, h_cmd, py_cmd, ctx = sys.argv[1:10]

def parse(path):
    res, sweep = None, []
    try:
        for line in open(path):
            if line.startswith(("RESULT ", "SWEEP ")):
                d = dict(kv.split("=", 1) for kv in line.split()[1:])
                if line.startswith("RESULT"):
                    res = d
                else:
                    sweep.append(d)
    except OSError:
        pass
    return res, sweep

t, ts = parse(f"{out}/decode-teacher.log")
h, hs = parse(f"{out}/decode-hybrid.log")
p, ps = parse(f"{out}/decode-torch.log")
print(f"# Decode at context {ctx}: teacher vs hybrid (ra, CUDA) vs transformers (static cache)\n")
print(f"GPU: {gpu or 'unknown'}; {datetime.date.today()}.  Llama-3.2-1B shape (vocab 128256, hidden 2048, 16 "
      "layers, 32 heads, 8 KV heads, head dim 64, intermediate 8192, tied), random bf16 weights, greedy decoding "
      "(argmax on the GPU).  Batch sweep B = 32, 64, ... until the GPU runs out of memory, then 3 bisection "
      f"steps; each batch decodes 2 + 8 steps ending at context {ctx} (8 timed with CUDA events) over a "
      "synthetic context (KV cache, SSM and conv states filled with random values: attending over them costs "
      "what a real prompt's cache costs).  Prefill: real prompts, 4 × context tokens, median of 3 after a "
      "warm-up.\n")
print("The hybrid: 10 kept attention heads (spread over the layers, each with its own K/V), the `parallel` "
      "layout (a full-width DiscreteMamba2 of all 32 heads per layer beside the kept heads, learned adapter), "
      "N = 8: the configuration of DESIGN §2.6's memory check (0.85 / 5.77 / 11.01 MB per sequence at "
      "128 / 2048 / 4096 with bf16 states).  ra keeps the KV cache in bf16 and the SSM and conv states in fp32, "
      "so its per-sequence state is listed as it is held.\n")
print("| implementation | decode state / seq (MB) | max batch | decode tokens/s at max batch | ms / step | "
      "best tokens/s | peak GiB at max | prefill tokens/s |")
print("|---|---|---|---|---|---|---|---|")
def row(name, r, rc, state):
    if not r:
        print(f"| {name} | – | failed (exit {rc}) | | | | | |")
        return
    print(f"| {name} | {state} | {r['max_batch']} (OOM at {r['first_oom_batch']}) | "
          f"{int(float(r['tokens_per_s_at_max'])):,} | {float(r['ms_per_step_at_max']):.1f} | "
          f"{int(float(r['best_tokens_per_s'])):,} | {r['peak_gib_at_max']} | {int(float(r['prefill_tokens_per_s'])):,} |")
row("ra teacher (bf16 KV cache)", t, t_rc, f"{float(t['state_mb_per_seq']):.2f}" if t else "")
row(f"ra hybrid, 10 heads, parallel, N = 8", h, h_rc, f"{float(h['state_mb_per_seq']):.2f}" if h else "")
row("transformers teacher (StaticCache, SDPA)", p, py_rc, f"{2 * 16 * 8 * 64 * int(ctx) * 2 / 1e6:.2f}")
if t and h:
    tb, hb = int(t["max_batch"]), int(h["max_batch"])
    tt, ht = float(t["tokens_per_s_at_max"]), float(h["tokens_per_s_at_max"])
    print(f"\nHybrid / teacher (ra): {hb / max(tb, 1):.1f}x the maximum batch (target ≥ 5x), "
          f"{ht / max(tt, 1):.1f}x the decode tokens/s at the maximum batch "
          f"({float(h['best_tokens_per_s']) / max(float(t['best_tokens_per_s']), 1):.1f}x best vs best; target ≥ 3x).")
if h and p:
    pb, pt = int(p["max_batch"]), float(p["tokens_per_s_at_max"])
    print(f"\nHybrid (ra) / teacher (transformers): {int(h['max_batch']) / max(pb, 1):.1f}x the maximum batch, "
          f"{float(h['tokens_per_s_at_max']) / max(pt, 1):.1f}x the decode tokens/s at the maximum batch.")
if t and p:
    print(f"\nTeacher, ra / transformers: {int(t['max_batch']) / max(int(p['max_batch']), 1):.2f}x the maximum batch, "
          f"{float(t['tokens_per_s_at_max']) / max(float(p['tokens_per_s_at_max']), 1):.2f}x decode tokens/s, "
          f"{float(t['prefill_tokens_per_s']) / max(float(p['prefill_tokens_per_s']), 1):.2f}x prefill tokens/s.")
if p:
    print(f"\ntorch {p.get('torch', '?')}, transformers {p.get('transformers', '?')}.")
print("\nPeak memory: ra = device memory in use after the steps minus before the model was made (cudaMemGetInfo: "
      "weights, caches, prefill and step activations, logits, cuBLAS workspace); transformers = "
      "torch.cuda.max_memory_allocated during the batch.\n")
print("## Sweep\n")
print("| implementation | batch | ms / step | tokens/s | peak GiB |")
print("|---|---|---|---|---|")
for name, sw in (("ra teacher", ts), ("ra hybrid", hs), ("transformers", ps)):
    for s in sorted(sw, key=lambda s: int(s["batch"])):
        if s["ok"] == "1":
            print(f"| {name} | {s['batch']} | {float(s['ms_per_step']):.2f} | {int(float(s['tokens_per_s'])):,} | "
                  f"{s['peak_gib']} |")
        else:
            print(f"| {name} | {s['batch']} | out of memory | | |")
print("\nCommands (bench/decode.sh):\n")
print(f"    {t_cmd}\n    {h_cmd}\n    {py_cmd}")
EOF
cp bench/results/decode.md "$OUT/decode.md" 2>/dev/null
echo "== bench/results/decode.md"
cat bench/results/decode.md
[ "$t_rc" -eq 0 ] && [ "$h_rc" -eq 0 ]

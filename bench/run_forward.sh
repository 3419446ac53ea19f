#!/usr/bin/env bash
# Forward-pass benchmark on a GPU machine: ra's CUDA forward (build/bench/forward)
# and transformers with SDPA (bench/torch_ref/forward.py), same shape, same run;
# writes bench/results/forward.md (and a copy plus both logs under $OUT when set).
#
#   bench/run_forward.sh                  # B=16, L=2048, 16 layers (Llama-3.2-1B)
#   B=8 L=2048 bench/run_forward.sh
#
# Expects `make bench-bins` to have been run (it runs it if the binary is missing).
set -uo pipefail
cd "$(dirname "$0")/.."
B=${B:-16} L=${L:-2048} LAYERS=${LAYERS:-16}
OUT=${OUT:-/tmp/ra-bench}
mkdir -p "$OUT" bench/results
export PYTHONUNBUFFERED=1
[ -x build/bench/forward ] || make -s bench-bins || { echo "bench: build failed"; exit 1; }

ra_cmd="build/bench/forward --batch $B --seq-len $L --layers $LAYERS"
py_cmd="python3 bench/torch_ref/forward.py --batch $B --seq-len $L --layers $LAYERS"
echo "== $ra_cmd"
$ra_cmd >"$OUT/bench-ra.log" 2>&1; ra_rc=$?
cat "$OUT/bench-ra.log"
echo "== $py_cmd"
$py_cmd >"$OUT/bench-torch.log" 2>&1; py_rc=$?
tail -n 20 "$OUT/bench-torch.log"

gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)
python3 - "$OUT/bench-ra.log" "$OUT/bench-torch.log" "$ra_rc" "$py_rc" "$gpu" "$ra_cmd" "$py_cmd" \
    >bench/results/forward.md <<'EOF'
import sys, datetime

def result(path):
    try:
        for line in open(path):
            if line.startswith("RESULT "):
                return dict(kv.split("=", 1) for kv in line.split()[1:])
    except OSError:
        pass
    return None

ra, pt = result(sys.argv[1]), result(sys.argv[2])
ra_rc, py_rc, gpu, ra_cmd, py_cmd = sys.argv[3:8]
print("# Forward pass: ra (CUDA) vs transformers (SDPA)\n")
print(f"GPU: {gpu or 'unknown'}; {datetime.date.today()}.  Llama-3.2-1B shape (vocab 128256, hidden 2048, "
      "16 layers, 32 heads, 8 KV heads, intermediate 8192, tied), random bf16 weights, logits for every "
      "position kept on the GPU, median of 10 forwards after 3 warm-ups (CUDA events).\n")
print("| implementation | batch × seq | ms / forward | tokens/s | TFLOP/s | % of 790 | peak memory (GiB) |")
print("|---|---|---|---|---|---|---|")
for name, r, rc in (("ra (bf16, cuBLASLt + flash attention)", ra, ra_rc), ("transformers", pt, py_rc)):
    if r:
        label = name if name.startswith("ra") else f"transformers ({r['impl'].split('-', 1)[1]})"
        print(f"| {label} | {r['batch']} × {r['seq_len']} | {float(r['ms']):.1f} | {int(r['tokens_per_s']):,} | "
              f"{r['tflops']} | {r['mfu_pct']} | {r['peak_gib']} |")
    else:
        print(f"| {name} | – | failed (exit {rc}) | | | | |")
if ra and pt:
    print(f"\nra / transformers: {float(ra['tokens_per_s']) / float(pt['tokens_per_s']):.2f}x tokens/s.")
if ra:
    print(f"\nra parts: attention kernel alone {ra['attn_ms']} ms per layer ({ra['attn_tflops']} TFLOP/s); "
          f"LM-head GEMM {ra['lm_head_tflops']} TFLOP/s.")
if pt:
    print(f"\ntorch {pt.get('torch', '?')}, transformers {pt.get('transformers', '?')}.")
print("\nFLOPs per forward (both sides): 2·tokens·(layers·(D·(H+2Hkv)·hd + H·hd·D + 3·D·I) + V·D) + "
      "layers·4·B·L²·H·hd/2.  Peak memory: ra = device memory in use after the runs minus before the model "
      "was made (cudaMemGetInfo: weights, activations, logits, cuBLAS workspace); transformers = "
      "torch.cuda.max_memory_allocated.\n")
print("Commands (bench/run_forward.sh):\n")
print(f"    {ra_cmd}\n    {py_cmd}")
EOF
cp bench/results/forward.md "$OUT/forward.md" 2>/dev/null
echo "== bench/results/forward.md"
cat bench/results/forward.md
[ "$ra_rc" -eq 0 ]

#!/usr/bin/env bash
# SSD chunk-scan benchmark on a GPU machine (issue 6): ra's CUDA chunked SSD
# (build/bench/ssd) next to the plain PyTorch chunked SSD and torch SDPA causal
# attention of the same shape (bench/torch_ref/ssd.py), forward + backward,
# B=4, 32 heads, P=64, L = 2048 and 8192, N = 64 and 8, all in one run;
# writes bench/results/ssd.md (and a copy plus both logs under $OUT when set).
#
#   bench/run_ssd.sh                  # the issue's shapes
#   B=2 LS="1024 4096" NS=64 bench/run_ssd.sh
#
# Runs `make bench-bins` first if build/bench/ssd is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
B=${B:-4} H=${H:-32} P=${P:-64} LS=${LS:-"2048 8192"} NS=${NS:-"64 8"}
OUT=${OUT:-/tmp/ra-bench}
mkdir -p "$OUT" bench/results
export PYTHONUNBUFFERED=1
[ -x build/bench/ssd ] || make -s bench-bins || { echo "bench: build failed"; exit 1; }

: >"$OUT/bench-ssd-ra.log"
ra_cmds=()
for L in $LS; do
    for N in $NS; do
        cmd="build/bench/ssd --batch $B --seq-len $L --heads $H --head-dim $P --d-state $N"
        ra_cmds+=("$cmd")
        echo "== $cmd" | tee -a "$OUT/bench-ssd-ra.log"
        $cmd >>"$OUT/bench-ssd-ra.log" 2>&1 || echo "FAILED (exit $?)" | tee -a "$OUT/bench-ssd-ra.log"
    done
done
py_cmd="python3 bench/torch_ref/ssd.py --batch $B --heads $H --head-dim $P --seq-len $LS --d-state $NS"
echo "== $py_cmd"
$py_cmd >"$OUT/bench-ssd-torch.log" 2>&1; py_rc=$?
tail -n 12 "$OUT/bench-ssd-torch.log"

gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)
python3 - "$OUT/bench-ssd-ra.log" "$OUT/bench-ssd-torch.log" "$py_rc" "$gpu" "$py_cmd" "${ra_cmds[@]}" \
    >bench/results/ssd.md <<'PY'
import sys, datetime

def results(path):
    out = []
    try:
        for line in open(path):
            if line.startswith("RESULT "):
                out.append(dict(kv.split("=", 1) for kv in line.split()[1:]))
    except OSError:
        pass
    return out

ra, pt = results(sys.argv[1]), results(sys.argv[2])
torch_version = ""
try:
    torch_version = next((l[2:].strip() for l in open(sys.argv[2]) if l.startswith("# torch")), "")
except OSError:
    pass
py_rc, gpu, py_cmd, ra_cmds = sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6:]
print("# SSD chunk scan: ra (CUDA) vs plain PyTorch chunked SSD vs causal attention\n")
print(f"GPU: {gpu or 'unknown'}; {torch_version + '; ' if torch_version else ''}{datetime.date.today()}.  Forward + backward of the SSD core "
      "(x, B, C, a → y; gradients of x, B, C, a, D), B and C per head (G = H), chunk 128, bf16 "
      "inputs/outputs with fp32 accumulation and fp32 states; median over timed runs after warm-up (CUDA events).  "
      "The PyTorch reference is Mamba-2's ssd_minimal algorithm in plain torch ops under bf16 autocast, "
      "backward by autograd; attention is torch SDPA (is_causal=True), q, k, v of the same [B, H, L, P] shape.\n")
print("FLOPs: the dense chunked algorithm, per token and head 2·Q·(N+P) + 4·P·N forward, ×3 for forward+backward "
      "(both implementations counted the same way); attention 4·B·H·L²·P/2 forward, ×3.5 forward+backward.  "
      "GB/s: each input read once and each output written once per pass.\n")
print("| L | N | implementation | fwd ms | fwd+bwd ms | tokens/s (fwd+bwd) | TFLOP/s | GB/s | peak GiB | "
      "ra speed-up |")
print("|---|---|---|---|---|---|---|---|---|---|")
def key(r):
    return (int(r["seq_len"]), int(r.get("d_state", 0)))
att = {int(r["seq_len"]): r for r in pt if r["impl"] == "torch-sdpa"}
tss = {key(r): r for r in pt if r["impl"] == "torch-ssd"}
summary = []
for r in sorted(ra, key=lambda r: (key(r)[0], -key(r)[1])):
    L, N = key(r)
    t, a = tss.get((L, N)), att.get(L)
    ms = float(r["fwdbwd_ms"])
    sp = []
    if t: sp.append(f"{float(t['fwdbwd_ms']) / ms:.1f}x vs torch SSD")
    if a: sp.append(f"{float(a['fwdbwd_ms']) / ms:.1f}x vs attention")
    print(f"| {L} | {N} | ra CUDA chunked SSD | {float(r['fwd_ms']):.3f} | {ms:.3f} | {int(float(r['tokens_per_s'])):,} | "
          f"{r['tflops']} | {r['gbps']} | {r['peak_gib']} | {'; '.join(sp)} |")
    if t:
        print(f"| {L} | {N} | PyTorch chunked SSD | {float(t['fwd_ms']):.3f} | {float(t['fwdbwd_ms']):.3f} | "
              f"{int(float(t['tokens_per_s'])):,} | {t['tflops']} | {t['gbps']} | {t['peak_gib']} | |")
    summary.append((L, N, sp))
for L, a in sorted(att.items()):
    print(f"| {L} | – | torch SDPA causal attention | {float(a['fwd_ms']):.3f} | {float(a['fwdbwd_ms']):.3f} | "
          f"{int(float(a['tokens_per_s'])):,} | {a['tflops']} | – | {a['peak_gib']} | |")
if not ra:
    print("\nra benchmark produced no results (see bench-ssd-ra.log).")
if not pt:
    print(f"\nPyTorch reference produced no results (exit {py_rc}, see bench-ssd-torch.log).")
print("\nTargets (issue 6): ≥ 5x the plain PyTorch chunked scan; faster than attention at L ≥ 2048.\n")
print("Commands:\n")
for c in ra_cmds:
    print(f"    {c}")
print(f"    {py_cmd}")
PY
cp bench/results/ssd.md "$OUT/ssd.md" 2>/dev/null
cat bench/results/ssd.md

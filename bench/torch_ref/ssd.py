#!/usr/bin/env python3
"""Reference for bench/ssd.c: the plain PyTorch chunked SSD and causal
attention of the same shape, forward + backward, on one GPU.

SSD: the "ssd_minimal_discrete" algorithm of Mamba-2 (Dao & Gu 2024,
state-spaces/mamba, mamba_ssm/modules/ssd_minimal.py), written out here with
plain torch ops (no custom kernels, no torch.compile): segsum decays, the
intra-chunk einsum, chunk states, the inter-chunk recurrence over chunk
decays, state -> output; plus D*x.  Chunk 128, B and C per head (G = H),
bf16 autocast as in the DESIGN §8 reference step: x, B, C, dy bf16; A (the log
decay, -softplus) and D fp32; einsums run in bf16 under autocast, cumsum and
exp in fp32.  Backward by autograd (y.backward(dy)).

Attention: torch.nn.functional.scaled_dot_product_attention(is_causal=True)
(flash backend on an H200), q, k, v [B, H, L, P] bf16, forward + backward.

FLOPs are counted as in bench/ssd.c (dense chunked algorithm; backward = 2x
forward) and, for attention, 4*B*H*L^2*P/2 forward (causal half), backward
2.5x forward.  Median of --iters timed runs (CUDA events) after --warmup.
Prints one "RESULT impl=... key=value ..." line per implementation and shape.

    python3 bench/torch_ref/ssd.py --batch 4 --seq-len 2048 8192 --d-state 64 8
"""
import argparse
import statistics

import torch
import torch.nn.functional as F


def segsum(x):
    """x [..., T] -> [..., T, T] with out[i, j] = sum_{k=j+1..i} x[k] (i >= j), -inf above."""
    T = x.size(-1)
    x = x[..., None].expand(*x.shape, T)
    mask = torch.tril(torch.ones(T, T, device=x.device, dtype=torch.bool), diagonal=-1)
    x = x.masked_fill(~mask, 0)
    x_segsum = torch.cumsum(x, dim=-2)
    mask = torch.tril(torch.ones(T, T, device=x.device, dtype=torch.bool), diagonal=0)
    return x_segsum.masked_fill(~mask, -torch.inf)


def ssd_chunked(X, A, B, C, D, block_len=128):
    """X [b, l, h, p], A [b, l, h] (log decay), B, C [b, l, h, n], D [h] -> Y [b, l, h, p]."""
    b, l, h, p = X.shape
    n = B.shape[-1]
    c = l // block_len
    Xc = X.reshape(b, c, block_len, h, p)
    Bc = B.reshape(b, c, block_len, h, n)
    Cc = C.reshape(b, c, block_len, h, n)
    Ac = A.reshape(b, c, block_len, h).permute(0, 3, 1, 2)  # b h c l
    A_cumsum = torch.cumsum(Ac, dim=-1)
    # 1. intra-chunk (diagonal blocks)
    L = torch.exp(segsum(Ac)).to(X.dtype)  # what autocast would feed the einsum
    Y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", Cc, Bc, L, Xc)
    # 2. chunk end states
    decay_states = torch.exp(A_cumsum[:, :, :, -1:] - A_cumsum).to(X.dtype)
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc, decay_states, Xc)
    # 3. inter-chunk recurrence
    initial_states = torch.zeros_like(states[:, :1])
    states = torch.cat([initial_states, states], dim=1)
    decay_chunk = torch.exp(segsum(F.pad(A_cumsum[:, :, :, -1], (1, 0)))).to(states.dtype)
    new_states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    states = new_states[:, :-1]
    # 4. state -> output
    state_decay_out = torch.exp(A_cumsum).to(X.dtype)
    Y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, states, state_decay_out)
    Y = (Y_diag + Y_off).reshape(b, l, h, p)
    return (Y + D[:, None] * X).to(X.dtype)


def time_ms(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        fn()
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1))
    return statistics.median(times)


def bench_ssd(bs, L, H, P, N, chunk, warmup, iters):
    dev = "cuda"
    torch.manual_seed(0)
    x = (torch.rand(bs, L, H, P, device=dev) * 2 - 1).bfloat16().requires_grad_()
    Bm = (torch.rand(bs, L, H, N, device=dev) - 0.5).bfloat16().requires_grad_()
    Cm = (torch.rand(bs, L, H, N, device=dev) - 0.5).bfloat16().requires_grad_()
    A = (-F.softplus(torch.rand(bs, L, H, device=dev) * 4 - 2.5)).requires_grad_()
    D = torch.rand(H, device=dev).requires_grad_()
    dy = (torch.rand(bs, L, H, P, device=dev) * 2 - 1).bfloat16()

    def fwd():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return ssd_chunked(x, A, Bm, Cm, D, chunk)

    def fwd_only():
        with torch.no_grad():
            fwd()

    def fwd_bwd():
        for t in (x, Bm, Cm, A, D):
            t.grad = None
        y = fwd()
        y.backward(dy)

    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    ms_f = time_ms(fwd_only, warmup, iters)
    ms_fb = time_ms(fwd_bwd, warmup, iters)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    tokens = bs * L
    fwd_flop = tokens * H * (2.0 * chunk * (N + P) + 4.0 * P * N)
    nx, nbc, na = bs * L * H * P, bs * L * H * N, bs * L * H
    fwd_bytes = nx * 2 * 2 + nbc * 2 * 2 + na * 4
    bwd_bytes = nx * 2 * 3 + nbc * 2 * 4 + na * 4 * 2
    print(f"RESULT impl=torch-ssd batch={bs} seq_len={L} heads={H} head_dim={P} d_state={N} groups={H} chunk={chunk} "
          f"fwd_ms={ms_f:.4f} fwdbwd_ms={ms_fb:.4f} tokens_per_s={tokens / ms_fb * 1e3:.0f} "
          f"tflops={3 * fwd_flop / ms_fb * 1e-9:.2f} gbps={(fwd_bytes + bwd_bytes) / ms_fb * 1e-6:.0f} "
          f"peak_gib={peak:.2f}", flush=True)
    del x, Bm, Cm, A, D, dy
    torch.cuda.empty_cache()


def bench_attention(bs, L, H, P, warmup, iters):
    dev = "cuda"
    torch.manual_seed(0)
    q, k, v = ((torch.rand(bs, H, L, P, device=dev) * 2 - 1).bfloat16().requires_grad_() for _ in range(3))
    do = (torch.rand(bs, H, L, P, device=dev) * 2 - 1).bfloat16()

    def fwd_only():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def fwd_bwd():
        for t in (q, k, v):
            t.grad = None
        F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(do)

    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    ms_f = time_ms(fwd_only, warmup, iters)
    ms_fb = time_ms(fwd_bwd, warmup, iters)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    tokens = bs * L
    fwd_flop = 4.0 * bs * H * L * L * P / 2
    print(f"RESULT impl=torch-sdpa batch={bs} seq_len={L} heads={H} head_dim={P} fwd_ms={ms_f:.4f} "
          f"fwdbwd_ms={ms_fb:.4f} tokens_per_s={tokens / ms_fb * 1e3:.0f} tflops={3.5 * fwd_flop / ms_fb * 1e-9:.2f} "
          f"peak_gib={peak:.2f}", flush=True)
    del q, k, v, do
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--d-state", type=int, nargs="+", default=[64, 8])
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    a = ap.parse_args()
    print(f"# torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    for L in a.seq_len:
        for N in a.d_state:
            bench_ssd(a.batch, L, a.heads, a.head_dim, N, a.chunk, a.warmup, a.iters)
        bench_attention(a.batch, L, a.heads, a.head_dim, a.warmup, a.iters)


if __name__ == "__main__":
    main()

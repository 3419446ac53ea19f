#!/usr/bin/env python3
"""Reference for bench/decode.c: greedy decoding of the Llama-3.2-1B shape
with Hugging Face transformers on the same GPU, static KV cache.

LlamaForCausalLM, random init, bf16 weights, SDPA attention, torch.no_grad,
a transformers StaticCache of --ctx positions.  For each batch B of the
sweep (start, 2*start, ... until CUDA runs out of memory, then --bisect
halvings between the last batch that fit and the first that did not), the
cache is made, one step allocates it, every key/value tensor of it is filled
with random values (a synthetic context of ctx - warmup - steps tokens per
row, as bench/decode.c does: attending over it costs what a real context
costs), then warmup + steps greedy steps (model forward of one token per row
at its cache position, argmax of the logits), the last `steps` timed with
CUDA events.  tokens/s = B * steps / time.  The prefill is timed separately:
a forward of --prefill-batch prompts of ctx tokens (logits of the last token
only), median of 3 after a warm-up.  Peak memory:
torch.cuda.max_memory_allocated during the batch (weights included).

    python3 bench/torch_ref/decode.py [--ctx 4096] [--layers 16] [--start-batch 32]

Prints "SWEEP ..." per batch and one "RESULT key=value ..." line for
bench/decode.sh.
"""
import argparse
import gc
import statistics
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

try:
    from transformers import StaticCache
except ImportError:  # older layouts
    from transformers.cache_utils import StaticCache


def make_cache(cfg, B, ctx):
    """A StaticCache of ctx positions for B rows (the constructor changed
    across transformers versions: v5 sizes the layers on first use)."""
    try:
        return StaticCache(config=cfg, max_cache_len=ctx)
    except TypeError:
        return StaticCache(config=cfg, max_batch_size=B, max_cache_len=ctx, device="cuda", dtype=torch.bfloat16)


def cache_tensors(cache):
    if hasattr(cache, "layers"):
        out = []
        for layer in cache.layers:
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if isinstance(t, torch.Tensor):
                    out.append(t)
        return out
    return list(cache.key_cache) + list(cache.value_cache)


def step(model, cache, tok, pos):
    B = tok.shape[0]
    cp = torch.tensor([pos], device="cuda", dtype=torch.long)
    out = model(input_ids=tok, past_key_values=cache, cache_position=cp, position_ids=cp.view(1, 1).expand(B, 1),
                use_cache=True)
    return out.logits[:, -1, :].argmax(-1, keepdim=True)


def run_batch(model, cfg, B, ctx, warmup, steps):
    """(ms per step, tokens/s, peak GiB), or None when it does not fit."""
    cache = tok = None
    try:
        torch.cuda.reset_peak_memory_stats()
        cache = make_cache(cfg, B, ctx)
        tok = torch.randint(0, cfg.vocab_size, (B, 1), device="cuda")
        start = ctx - warmup - steps
        with torch.no_grad():
            step(model, cache, tok, 0)  # allocates the cache
            n = 0
            for t in cache_tensors(cache):
                t.uniform_(-1.0, 1.0)
                n += t.numel()
            want = 2 * cfg.num_hidden_layers * B * cfg.num_key_value_heads * ctx * cfg.head_dim
            if n != want:
                print(f"# warning: the static cache holds {n} values, expected {want}", flush=True)
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            for i in range(warmup + steps):
                if i == warmup:
                    e0.record()
                tok = step(model, cache, tok, start + i)
            e1.record()
            torch.cuda.synchronize()
        ms = e0.elapsed_time(e1)
        return ms / steps, B * steps / (ms * 1e-3), torch.cuda.max_memory_allocated() / 2**30
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        del cache, tok
        gc.collect()
        torch.cuda.empty_cache()


def prefill_tokens_per_s(model, cfg, B, ctx):
    ids = torch.randint(0, cfg.vocab_size, (B, ctx), device="cuda")
    times = []
    with torch.no_grad():
        for i in range(4):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            try:
                model(input_ids=ids, use_cache=False, logits_to_keep=1)
            except TypeError:
                model(input_ids=ids, use_cache=False)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return B * ctx / statistics.median(times[1:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--start-batch", type=int, default=32)
    ap.add_argument("--bisect", type=int, default=3)
    ap.add_argument("--prefill-batch", type=int, default=4)
    args = ap.parse_args()
    ctx = args.ctx

    D, I, H, Hkv, hd, V = 2048, 8192, 32, 8, 64, 128256
    cfg = LlamaConfig(
        vocab_size=V, hidden_size=D, intermediate_size=I, num_hidden_layers=args.layers,
        num_attention_heads=H, num_key_value_heads=Hkv, head_dim=hd,
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        tie_word_embeddings=True, attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    model.eval()
    print(f"# torch {torch.__version__}, transformers {transformers.__version__}, {torch.cuda.get_device_name()}; "
          f"attention {getattr(model.config, '_attn_implementation', '?')}", flush=True)

    pf = prefill_tokens_per_s(model, cfg, args.prefill_batch, ctx) if args.prefill_batch else 0.0
    print(f"# prefill {args.prefill_batch} x {ctx}: {pf:.0f} tokens/s", flush=True)

    results = {}
    max_ok, first_bad, B = 0, 0, args.start_batch
    while True:
        r = run_batch(model, cfg, B, ctx, args.warmup, args.steps)
        if r is None:
            print(f"SWEEP impl=transformers batch={B} ok=0", flush=True)
            first_bad = B
            break
        results[B] = r
        print(f"SWEEP impl=transformers batch={B} ok=1 ms_per_step={r[0]:.3f} tokens_per_s={r[1]:.0f} "
              f"peak_gib={r[2]:.2f}", flush=True)
        max_ok = B
        B *= 2
    for _ in range(args.bisect):
        if not max_ok or first_bad - max_ok <= 1:
            break
        B = max_ok + (first_bad - max_ok) // 2
        r = run_batch(model, cfg, B, ctx, args.warmup, args.steps)
        if r is None:
            print(f"SWEEP impl=transformers batch={B} ok=0", flush=True)
            first_bad = B
        else:
            results[B] = r
            print(f"SWEEP impl=transformers batch={B} ok=1 ms_per_step={r[0]:.3f} tokens_per_s={r[1]:.0f} "
                  f"peak_gib={r[2]:.2f}", flush=True)
            max_ok = B
    at_max = results.get(max_ok, (0.0, 0.0, 0.0))
    best = max((r[1] for r in results.values()), default=0.0)
    print(f"RESULT impl=transformers-static-cache max_batch={max_ok} first_oom_batch={first_bad} "
          f"tokens_per_s_at_max={at_max[1]:.0f} ms_per_step_at_max={at_max[0]:.3f} peak_gib_at_max={at_max[2]:.2f} "
          f"best_tokens_per_s={best:.0f} prefill_tokens_per_s={pf:.0f} prefill_batch={args.prefill_batch} "
          f"torch={torch.__version__} transformers={transformers.__version__}", flush=True)


if __name__ == "__main__":
    main()

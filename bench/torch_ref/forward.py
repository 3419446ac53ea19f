#!/usr/bin/env python3
"""Reference for bench/forward.c: the same forward pass with Hugging Face
transformers on the same GPU.

LlamaForCausalLM with the Llama-3.2-1B shape, random init, bf16 weights,
SDPA attention (or --attn eager), torch.no_grad, use_cache=False, logits for
every position (transformers' default), B x L random token ids.  Timed with
CUDA events after warm-up; the median is reported.  FLOPs are counted with
exactly the formula of bench/forward.c:
    matmuls   2 * tokens * (layers * (D*(H+2Hkv)*hd + H*hd*D + 3*D*I) + V*D)
    attention layers * 4 * B * L^2 * H * hd / 2
Peak memory: torch.cuda.max_memory_allocated over model creation and the
timed runs (reserved memory is printed too).

    python3 bench/torch_ref/forward.py [--batch 16] [--seq-len 2048] [--layers 16]

Ends with one "RESULT key=value ..." line for bench/run_forward.sh.
"""
import argparse
import statistics

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    args = ap.parse_args()
    B, L, layers = args.batch, args.seq_len, args.layers

    D, I, H, Hkv, hd, V = 2048, 8192, 32, 8, 64, 128256
    cfg = LlamaConfig(
        vocab_size=V, hidden_size=D, intermediate_size=I, num_hidden_layers=layers,
        num_attention_heads=H, num_key_value_heads=Hkv, head_dim=hd,
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        tie_word_embeddings=True, attn_implementation=args.attn,
    )
    torch.manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    model.eval()
    impl = getattr(model.config, "_attn_implementation", "?")
    dtype = next(model.parameters()).dtype
    gpu = torch.cuda.get_device_name()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {gpu}; "
          f"attention {impl}, weights {dtype}", flush=True)

    ids = torch.randint(0, V, (B, L), device="cuda")
    tokens = B * L
    flops_matmul = 2.0 * tokens * (layers * (D * (H + 2 * Hkv) * hd + H * hd * D + 3 * D * I) + V * D)
    flops_attn = layers * 4.0 * B * L * L * H * hd / 2.0
    flops = flops_matmul + flops_attn

    def step():
        with torch.no_grad():
            return model(input_ids=ids, use_cache=False).logits

    for _ in range(args.warmup):
        logits = step()
        del logits
    torch.cuda.synchronize()
    times = []
    for i in range(args.iters):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        logits = step()
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1))
        print(f"  iteration {i}: {times[-1]:.2f} ms, logits {tuple(logits.shape)} {logits.dtype}", flush=True)
        del logits
    ms = statistics.median(times)
    sec = ms / 1e3
    peak = torch.cuda.max_memory_allocated() / 2**30
    reserved = torch.cuda.max_memory_reserved() / 2**30
    print(f"transformers forward ({impl}): median {ms:.2f} ms, {tokens / sec:.0f} tokens/s, "
          f"{flops / sec / 1e12:.1f} TFLOP/s ({flops / sec / 1e12 / 790 * 100:.1f}% of 790), "
          f"peak allocated {peak:.2f} GiB (reserved {reserved:.2f} GiB)")
    print(f"RESULT impl=transformers-{impl} batch={B} seq_len={L} layers={layers} ms={ms:.3f} "
          f"tokens_per_s={tokens / sec:.0f} tflops={flops / sec / 1e12:.1f} "
          f"mfu_pct={flops / sec / 1e12 / 790 * 100:.1f} peak_gib={peak:.2f} flops={flops:.4e} "
          f"torch={torch.__version__} transformers={transformers.__version__}")


if __name__ == "__main__":
    main()

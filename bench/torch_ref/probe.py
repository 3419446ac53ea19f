#!/usr/bin/env python3
"""Reference for ra-probe's exact method (bench/probe.sh): the plain PyTorch
loop that zeroes one head's o_proj columns and runs a transformers forward,
for every head, on exactly the token rows ra-probe scored.

Two commands:

    python3 bench/torch_ref/probe.py make-teacher DIR [--layers 16]
        A Llama-3.2-1B-shaped LlamaForCausalLM with transformers' random
        init (std 0.02), saved in bf16 with save_pretrained (config.json +
        model.safetensors), for both implementations to load.

    python3 bench/torch_ref/probe.py run --model DIR --tokens tokens.json \
            --out torch.json [--batch 128] [--heads N] [--attn sdpa|eager]
        tokens.json is ra-probe --dump-tokens: the token rows (prompt with
        BOS, plus candidate prefixes when candidates have several tokens)
        and, per prompt, its candidates as (row, position, token) targets.
        Per head (layer-major): zero the head's o_proj input columns, run the
        model on all rows (bf16, right-padded, no mask: causal attention
        never looks at the padding), log-softmax in fp32 at the scored
        positions, then accuracy (argmax candidate == correct, or top-1 for
        last-token) and the correct answer's log-probability, exactly as
        ra-probe scores them; restore the columns.  --heads N times only N
        evenly spaced heads (every (L*H/N)-th in layer-major order: each
        costs one full forward whichever it is, so the per-head figure is
        what matters; 0 = all).

Ends with one "RESULT key=value ..." line; the per-head drops go to --out.
"""
import argparse
import json
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM


def make_teacher(args):
    cfg = LlamaConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=args.layers,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
        rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
        tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001,
    )
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(args.dir, safe_serialization=True)
    print(f"teacher: {sum(p.numel() for p in model.parameters()) / 1e9:.3f} B parameters -> {args.dir}")


class Targets:
    """The scored positions of all rows, and every candidate token as an
    index into them, prepared once."""

    def __init__(self, rows, items):
        pos = sorted({(r, p) for it in items for cand in it["candidates"] for r, p, _ in cand})
        self.index = {rp: k for k, rp in enumerate(pos)}
        self.by_row = {}
        for r, p in pos:
            self.by_row.setdefault(r, []).append(p)
        flat_pos, flat_tok, self.spans = [], [], []
        for it in items:
            spans = []
            for cand in it["candidates"]:
                a = len(flat_pos)
                for r, p, tok in cand:
                    flat_pos.append(self.index[(r, p)])
                    flat_tok.append(tok)
                spans.append((a, len(flat_pos)))
            self.spans.append((spans, it["correct"]))
        self.pos = torch.tensor(flat_pos, device="cuda", dtype=torch.long)
        self.tok = torch.tensor(flat_tok, device="cuda", dtype=torch.long)


def score(model, rows, tg, mode, batch):
    """Per prompt (log-prob of the correct answer, correct 0/1)."""
    ls_parts, am_parts = [], []
    for r0 in range(0, len(rows), batch):
        chunk = rows[r0:r0 + batch]
        T = max(len(x) for x in chunk)
        ids = torch.zeros(len(chunk), T, dtype=torch.long)
        for i, x in enumerate(chunk):
            ids[i, :len(x)] = torch.tensor(x)
        with torch.no_grad():
            logits = model(input_ids=ids.cuda(), use_cache=False).logits
        sel_r = [i for i in range(len(chunk)) for _ in tg.by_row.get(r0 + i, ())]
        sel_p = [p for i in range(len(chunk)) for p in tg.by_row.get(r0 + i, ())]
        if sel_r:
            z = logits[torch.tensor(sel_r, device="cuda"), torch.tensor(sel_p, device="cuda")].float()
            ls_parts.append(torch.log_softmax(z, dim=-1))
            am_parts.append(z.argmax(dim=-1))
        del logits
    if not tg.spans:
        return []
    ls, am = torch.cat(ls_parts), torch.cat(am_parts)
    vals = ls[tg.pos, tg.tok].double().cpu().tolist()
    top1 = (am[tg.pos] == tg.tok).cpu().tolist()
    out = []
    for spans, corr in tg.spans:
        cand = [sum(vals[a:b]) for a, b in spans]
        if mode == "choice":
            best = max(range(len(cand)), key=lambda c: (cand[c], -c))
            ok = best == corr
        else:
            a, b = spans[corr]
            ok = top1[b - 1]
        out.append((cand[corr], 1 if ok else 0))
    return out


def run(args):
    data = json.load(open(args.tokens))
    rows, items, mode = data["rows"], data["items"], data["mode"]
    torch.cuda.reset_peak_memory_stats()
    model = LlamaForCausalLM.from_pretrained(args.model, torch_dtype=torch.bfloat16,
                                             attn_implementation=args.attn).cuda().eval()
    cfg = model.config
    L, H = cfg.num_hidden_layers, cfg.num_attention_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    N = len(items)
    tokens = sum(len(r) for r in rows)

    tg = Targets(rows, items)
    score(model, rows[:min(len(rows), args.batch)], Targets([], []), mode, args.batch)  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    base = score(model, rows, tg, mode, args.batch)
    torch.cuda.synchronize()
    t_base = time.perf_counter() - t0
    base_acc = sum(c for _, c in base) / N
    base_lp = sum(l for l, _ in base) / N

    every = [(l, h) for l in range(L) for h in range(H)]
    n = min(args.heads, L * H) if args.heads > 0 else L * H
    heads = [every[k * len(every) // n] for k in range(n)]  # evenly spaced
    acc_drop = [[None] * H for _ in range(L)]
    lp_drop = [[None] * H for _ in range(L)]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for l, h in heads:
        W = model.model.layers[l].self_attn.o_proj.weight
        saved = W[:, h * hd:(h + 1) * hd].clone()
        with torch.no_grad():
            W[:, h * hd:(h + 1) * hd] = 0
        res = score(model, rows, tg, mode, args.batch)
        with torch.no_grad():
            W[:, h * hd:(h + 1) * hd] = saved
        acc_drop[l][h] = base_acc - sum(c for _, c in res) / N
        lp_drop[l][h] = base_lp - sum(x for x, _ in res) / N
    torch.cuda.synchronize()
    t = time.perf_counter() - t0
    per_head = t / len(heads)
    json.dump({"baseline": {"accuracy": base_acc, "logprob": base_lp}, "acc_drop": acc_drop,
               "logprob_drop": lp_drop, "heads_timed": len(heads), "seconds": t, "seconds_per_head": per_head,
               "seconds_all_heads_estimate": per_head * L * H},
              open(args.out, "w"))
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"RESULT impl=transformers-{transformers.__version__}-torch-{torch.__version__}-{args.attn} "
          f"prompts={N} rows={len(rows)} tokens={tokens} heads_timed={len(heads)} seconds={t:.2f} "
          f"s_per_head={per_head:.4f} all_heads_s={per_head * L * H:.1f} baseline_s={t_base:.3f} "
          f"base_acc={base_acc:.4f} peak_gib={peak:.1f}")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-teacher")
    mk.add_argument("dir")
    mk.add_argument("--layers", type=int, default=16)
    mk.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run")
    r.add_argument("--model", required=True)
    r.add_argument("--tokens", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--batch", type=int, default=128)
    r.add_argument("--heads", type=int, default=0)
    r.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    args = ap.parse_args()
    make_teacher(args) if args.cmd == "make-teacher" else run(args)


if __name__ == "__main__":
    main()

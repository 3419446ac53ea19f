#!/usr/bin/env python3
"""PyTorch reference of a MOHAWK training step (DESIGN §2.5, §8; issue 7),
for bench/train.sh: stage 3 (end-to-end distillation) and stage 2 (hidden-
state alignment of every layer) of a routed hybrid student, on one GPU.

Teacher: transformers LlamaForCausalLM, random init, bf16 weights, SDPA
attention, eval and no_grad.  Student: the same Llama (fp32 master weights)
whose attention modules are replaced by the routed hybrid mixer of DESIGN
§2.4, in plain PyTorch:
  - the kept heads (their slots of the layer) are softmax attention with their
    own Q rows and their own copy of K/V rows, RoPE, SDPA (is_causal);
  - the other slots are DiscreteMamba2 heads (P = head_dim, state N, one B/C
    group per head): in_proj D -> [x | B | C | z | A_log], depthwise causal
    conv (kernel 4, bias) over x, B, C, a = -softplus(A_log), the chunked SSD
    of bench/torch_ref/ssd.py (Mamba-2's ssd_minimal, chunk 128) plus D*x,
    gate silu(z + z_bias) (tests/ref/dm2.py is the token-by-token float64
    definition of the same mixer);
  - the static adapter: the attention slots standardised per token and
    rescaled to the SSM slots' mean/std (population variance, eps 1e-5);
  - all slots, in their places, into the layer's o_proj.
The SSM heads start as --init mohawk (in_proj U(+-1/sqrt(D)) with the z rows
0, conv = identity, D = 1, z_bias 1.2785).  Norms, MLPs, embeddings (tied LM
head) as the teacher's shape.  bf16 autocast, fused AdamW (beta 0.9/0.95,
eps 1e-8, weight decay 0.1, constant lr: the schedule costs nothing).

  stage 3: loss = mean over positions of CE(softmax(student_logits / T),
           softmax(teacher_logits)) (T = 1), every student parameter trains.
  stage 2: the teacher runs its layers once (no LM head); for every layer l
           the student's block l runs on the teacher's residual entering l,
           loss_l = mean over tokens of |out - teacher residual leaving l|_2,
           backward per layer (the layers are independent), one AdamW step
           over the blocks (norms, mixer, MLP; --train block).
  stage 1: the teacher runs its layers once (no LM head); for every layer l
           with SSM heads, A = the teacher's causal softmax attention (fp32)
           of the query heads whose slots the SSM heads take, from the q/k
           of its input; Ts = the SSM heads' mixing matrices on the student's
           RMSNorm of that input (in_proj -> conv -> B, C, a = -softplus(A_log);
           Ts = (C B^T) * exp(cum_l - cum_s) on and below the diagonal, + D on
           it; fp32, as ra); loss_l = mean over rows and SSM heads of
           |Ts - A|_F, backward per layer, one AdamW step over the mixers'
           in_proj, conv and D (whole tensors: the x and z rows get zero
           gradients; ra trains only the B, C, A_log rows).

Timing: --warmup steps, then --steps steps between torch.cuda.synchronize()
calls; tokens/s = steps * B * L / seconds.  Peak memory:
torch.cuda.max_memory_allocated() over the whole process (teacher, student,
optimiser state, activations, logits).  Tokens: the rows of --tokens (one
line of space-separated ids per row, as `ra-tok --to-ids` prints the packed
stream ra-mohawk2/3 train on), else random ids of --seed.

FLOPs (the same function counts ra's step, bench/train.sh --print flops):
  matmul parameters of a teacher block  Dt = D*H*hd + 2*D*Hkv*hd + H*hd*D + 3*D*I
  of the student's block l (k kept, Hs = H - k SSM heads)
        Ds_l = 3*k*hd*D + H*hd*D + 3*D*I + D*(2*Hs*hd + 2*Hs*N + Hs)
  attention forward, causal, per head and row   2*L^2*hd
  SSD forward per token and SSM head            2*Q*(N + hd) + 4*hd*N  (Q = 128)
  stage 3 = 2*tokens*(layers*Dt + V*D)                 teacher forward
          + 6*tokens*(sum_l Ds_l + V*D)                student forward + backward
          + B*layers*H*2*L^2*hd  + 3*B*(sum_l k)*2*L^2*hd
          + 3*tokens*(sum_l Hs)*(2*Q*(N + hd) + 4*hd*N)
  stage 2 = the same without the two V*D (LM head) terms.
  stage 1 = 2*tokens*layers*Dt + B*layers*H*2*L^2*hd   teacher forward
          + sum over SSM heads of B*L^2*hd              their probabilities (causal QK^T)
          + 6*tokens*D*sum_l (2*Hs*N + Hs)             in_proj's B, C, A_log rows
          + 3*B*L^2*N per SSM head                     C B^T forward, dC and dB backward
  --dense (a teacher-shaped student, the plain Llama): Ds_l = Dt, every head's
  attention x3, no SSD term.
Embedding lookups, norms, conv, softmax and elementwise work are not counted.
MFU = FLOPs per second / 790 TFLOP/s (one H200's measured bf16 GEMM rate).

    python3 bench/torch_ref/train.py --smoke                   # tiny shape, seconds
    python3 bench/torch_ref/train.py --config DIR/config.json --kept 0:0,1:7 \\
        --d-state 64 --batch 4 --seq-len 2048 --stage 3 --tokens rows.txt
    python3 bench/torch_ref/train.py --dense --stage 3          # the same step, teacher-shaped student
    python3 bench/torch_ref/train.py --print config [--smoke]  # a config.json
    python3 bench/torch_ref/train.py --print heads --config C --heads 10
    python3 bench/torch_ref/train.py --print flops --config C --kept ... --stage 3

--print needs no torch.  A run ends with one "RESULT key=value ..." line per
stage.
"""
import argparse
import gc
import json
import os
import sys
import time

PEAK_TFLOPS = 790.0
CHUNK = 128

LLAMA_1B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "hidden_size": 2048,
    "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 64, "hidden_act": "silu", "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192},
    "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False, "bos_token_id": 128000,
    "eos_token_id": 128001, "torch_dtype": "bfloat16",
}
# --smoke: the same family at a size that trains in seconds anywhere
SMOKE = dict(LLAMA_1B, vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=32, bos_token_id=1, eos_token_id=2)
SMOKE_RUN = dict(batch=2, seq_len=256, heads=2, d_state=16, steps=3, warmup=1)


def spread_heads(layers, heads, n):
    """n kept heads spread over the layers (bench/decode.c's choice): head i
    in layer i*layers/n, slot 7*i mod heads."""
    kept = [[] for _ in range(layers)]
    for i in range(n):
        kept[i * layers // n].append((7 * i) % heads)
    return [sorted(set(k)) for k in kept]


def parse_kept(spec, layers):
    kept = [[] for _ in range(layers)]
    for item in filter(None, (spec or "").split(",")):
        layer, head = (int(v) for v in item.split(":"))
        kept[layer].append(head)
    return [sorted(set(k)) for k in kept]


def count_flops(cfg, kept, N, B, L, stage, chunk=CHUNK, dense=False):
    """Model FLOPs of one training step (see the module docstring); dense: a
    teacher-shaped student (every head attention, GQA)."""
    D, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    H, Hkv, layers = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_hidden_layers"]
    hd = cfg.get("head_dim") or D // H
    tokens = B * L
    teacher_block = D * H * hd + 2 * D * Hkv * hd + H * hd * D + 3 * D * I
    student_blocks = kept_total = ssm_total = 0
    for k in (len(x) for x in kept):
        Hs = H - k
        student_blocks += 3 * k * hd * D + H * hd * D + 3 * D * I + (D * (2 * Hs * hd + 2 * Hs * N + Hs) if Hs else 0)
        kept_total += k
        ssm_total += Hs
    if dense:
        student_blocks, kept_total, ssm_total = layers * teacher_block, layers * H, 0
    head = V * D if stage == 3 else 0
    attn_fwd = 2.0 * B * L * L * hd  # one head, causal: QK^T and PV, half the square
    ssd_fwd = tokens * (2.0 * chunk * (N + hd) + 4.0 * hd * N)  # one SSM head
    teacher = 2.0 * tokens * (layers * teacher_block + head) + layers * H * attn_fwd
    if stage == 1:
        ssm_rows = sum(2 * (H - len(x)) * N + (H - len(x)) for x in kept)
        return (teacher + ssm_total * B * L * L * hd + 6.0 * tokens * D * ssm_rows
                + ssm_total * 3.0 * B * L * L * N)
    student = 6.0 * tokens * (student_blocks + head) + 3.0 * kept_total * attn_fwd + 3.0 * ssm_total * ssd_fwd
    return teacher + student


# --------------------------------------------------------------------- torch


def build_models(cfg_dict, kept, N, stage, dense=False):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from ssd import ssd_chunked  # the plain PyTorch chunked SSD of bench/run_ssd.sh

    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_theta",
            "rope_scaling", "tie_word_embeddings", "attention_bias", "mlp_bias")
    cfg = LlamaConfig(**{k: cfg_dict[k] for k in keys if k in cfg_dict}, attn_implementation="sdpa")
    D, H = cfg.hidden_size, cfg.num_attention_heads
    hd = cfg.head_dim

    class RoutedMixer(nn.Module):
        """One routed hybrid layer's mixer (module docstring)."""

        def __init__(self, kept_heads):
            super().__init__()
            self.kept = list(kept_heads)
            self.k, self.Hs, self.N, self.hd = len(self.kept), H - len(self.kept), N, hd
            ssm_slots = [h for h in range(H) if h not in self.kept]
            self.ssm_slots = ssm_slots  # the teacher query head of each SSM head (stage 1)
            order = self.kept + ssm_slots  # slot order of cat([attention, ssm])
            self.register_buffer("slot_perm", torch.tensor([order.index(h) for h in range(H)]), persistent=False)
            if self.k:
                self.q_proj = nn.Linear(D, self.k * hd, bias=False)
                self.k_proj = nn.Linear(D, self.k * hd, bias=False)
                self.v_proj = nn.Linear(D, self.k * hd, bias=False)
            if self.Hs:
                Hs = self.Hs
                self.conv_dim = Hs * hd + 2 * Hs * N
                self.in_proj = nn.Linear(D, self.conv_dim + Hs * hd + Hs, bias=False)
                with torch.no_grad():
                    self.in_proj.weight.uniform_(-D ** -0.5, D ** -0.5)
                    self.in_proj.weight[self.conv_dim:self.conv_dim + Hs * hd].zero_()
                w = torch.zeros(self.conv_dim, 1, 4)
                w[:, 0, 3] = 1.0
                self.conv_w = nn.Parameter(w)
                self.conv_b = nn.Parameter(torch.zeros(self.conv_dim))
                self.D = nn.Parameter(torch.ones(Hs))
                self.z_bias = nn.Parameter(torch.full((Hs * hd,), 1.278464542761))
            self.o_proj = nn.Linear(H * hd, D, bias=False)

        def forward(self, hidden_states, position_embeddings=None, **kwargs):
            Bsz, T, _ = hidden_states.shape
            att = ssm = None
            if self.k:
                q, kk, v = (p(hidden_states).view(Bsz, T, self.k, hd).transpose(1, 2)
                            for p in (self.q_proj, self.k_proj, self.v_proj))
                cos, sin = position_embeddings
                cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
                # RoPE in the dtype the tables come in, back to v's for SDPA (flash)
                q = (q * cos + rotate_half(q) * sin).to(v.dtype)
                kk = (kk * cos + rotate_half(kk) * sin).to(v.dtype)
                att = F.scaled_dot_product_attention(q, kk, v, is_causal=True).transpose(1, 2)  # [B,T,k,hd]
            if self.Hs:
                Hs, cd = self.Hs, self.conv_dim
                proj = self.in_proj(hidden_states)
                xbc = F.conv1d(proj[..., :cd].transpose(1, 2), self.conv_w, self.conv_b, padding=3,
                               groups=cd)[..., :T].transpose(1, 2)
                x = xbc[..., :Hs * hd].reshape(Bsz, T, Hs, hd)
                Bm = xbc[..., Hs * hd:Hs * hd + Hs * N].reshape(Bsz, T, Hs, N)
                Cm = xbc[..., Hs * hd + Hs * N:].reshape(Bsz, T, Hs, N)
                z = proj[..., cd:cd + Hs * hd]
                A = -F.softplus(proj[..., cd + Hs * hd:].float())
                y = ssd_chunked(x, A, Bm, Cm, self.D, CHUNK)
                ssm = y * F.silu(z + self.z_bias).view(Bsz, T, Hs, hd).to(y.dtype)
            if att is not None and ssm is not None:  # the static adapter
                a, s = att.reshape(Bsz, T, -1).float(), ssm.reshape(Bsz, T, -1).float()
                av, am = torch.var_mean(a, dim=-1, unbiased=False, keepdim=True)
                sv, sm = torch.var_mean(s, dim=-1, unbiased=False, keepdim=True)
                a = (a - am) * torch.rsqrt(av + 1e-5) * torch.sqrt(sv + 1e-5) + sm
                att = a.to(ssm.dtype).view(Bsz, T, self.k, hd)
            slots = torch.cat([t for t in (att, ssm) if t is not None], dim=2)[:, :, self.slot_perm]
            return self.o_proj(slots.reshape(Bsz, T, H * hd)), None

    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        teacher = LlamaForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    teacher.eval().requires_grad_(False)
    with torch.device("cuda"):
        student = LlamaForCausalLM(cfg)
        for layer, kh in zip(student.model.layers, kept):
            if not dense:
                layer.self_attn = RoutedMixer(kh)
    if stage == 2:  # --train block: the blocks train, embeddings / final norm / LM head do not
        student.requires_grad_(False)
        student.model.layers.requires_grad_(True)
    if stage == 1:  # the parameters the mixing matrix depends on (whole tensors)
        student.requires_grad_(False)
        for layer in student.model.layers:
            m = layer.self_attn
            if getattr(m, "Hs", 0):
                for p in (m.in_proj.weight, m.conv_w, m.conv_b, m.D):
                    p.requires_grad_(True)
    return teacher, student


def rotate_half(x):
    import torch
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def teacher_probs(layer, h, cos_sin, slots):
    """Stage 1's targets: the causal softmax attention (fp32) of query heads
    `slots` of a teacher LlamaDecoderLayer on its input h, [B, len(slots), T, T]."""
    import torch
    att, (Bsz, T, _) = layer.self_attn, h.shape
    hd, g = att.head_dim, att.config.num_attention_heads // att.config.num_key_value_heads
    xn = layer.input_layernorm(h)
    q = att.q_proj(xn).view(Bsz, T, -1, hd).transpose(1, 2)[:, slots]
    k = att.k_proj(xn).view(Bsz, T, -1, hd).transpose(1, 2)[:, [s // g for s in slots]]
    cos, sin = (t.unsqueeze(1) for t in cos_sin)
    q, k = ((x * cos + rotate_half(x) * sin).float() for x in (q, k))
    s = (q @ k.transpose(-1, -2)) * hd ** -0.5
    above = torch.ones(T, T, dtype=torch.bool, device=h.device).triu(1)
    return s.masked_fill_(above, float("-inf")).softmax(-1)


def mixing_matrices(m, xn):
    """Stage 1: the mixing matrices of a RoutedMixer's SSM heads on xn, fp32
    [B, Hs, T, T]: in_proj and conv in bf16 (autocast), B, C, a, the matrix
    in fp32 as ra computes it."""
    import torch
    import torch.nn.functional as F
    Bsz, T, _ = xn.shape
    Hs, cd, N, hd = m.Hs, m.conv_dim, m.N, m.hd
    proj = m.in_proj(xn)
    bc = F.conv1d(proj[..., :cd].transpose(1, 2), m.conv_w, m.conv_b, padding=3, groups=cd)[..., :T].transpose(1, 2)
    with torch.autocast("cuda", enabled=False):
        Bm = bc[..., Hs * hd:Hs * hd + Hs * N].reshape(Bsz, T, Hs, N).float()
        Cm = bc[..., Hs * hd + Hs * N:].reshape(Bsz, T, Hs, N).float()
        cum = (-F.softplus(proj[..., cd + Hs * hd:].float())).cumsum(1).transpose(1, 2)  # [B, Hs, T]
        below = torch.ones(T, T, dtype=torch.bool, device=xn.device).tril()
        decay = (cum[..., :, None] - cum[..., None, :]).masked_fill_(~below, float("-inf")).exp()
        Ts = torch.einsum("blhn,bshn->bhls", Cm, Bm) * decay
        Ts.diagonal(dim1=-2, dim2=-1).add_(m.D.float().view(1, Hs, 1))
    return Ts


def load_rows(path, B, L, V, seed, need):
    import torch
    if path:
        rows = []
        with open(path) as f:
            for line in f:
                ids = [int(v) for v in line.split()]
                if len(ids) >= L:
                    rows.append(ids[:L])
        if len(rows) < B:
            sys.exit(f"{path}: {len(rows)} rows of >= {L} tokens, need at least {B}")
        t = torch.tensor(rows, dtype=torch.long)
    else:
        g = torch.Generator().manual_seed(seed)
        t = torch.randint(0, V, (max(B, need), L), generator=g)
    if int(t.max()) >= V or int(t.min()) < 0:
        sys.exit(f"{path}: token ids outside [0, {V})")
    return t.cuda()


def run_stage(a, cfg_dict, kept, stage):
    import torch
    import torch.nn.functional as F
    import transformers

    gc.collect()  # a previous stage's models, before the peak is reset
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    B, L, V = a.batch, a.seq_len, cfg_dict["vocab_size"]
    teacher, student = build_models(cfg_dict, kept, a.d_state, stage, a.dense)
    params = [p for p in student.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, fused=True)
    rows = load_rows(a.tokens, B, L, V, a.seed, B * (a.warmup + a.steps))
    nrows = rows.shape[0]
    amp = dict(device_type="cuda", dtype=torch.bfloat16)

    # stages 1 and 2: the residual entering (and leaving) every teacher layer
    h_in, h_out = {}, {}
    if stage in (1, 2):
        for i, layer in enumerate(teacher.model.layers):
            layer.register_forward_pre_hook(
                lambda m, args, kwargs, i=i: h_in.__setitem__(i, args[0] if args else kwargs["hidden_states"]),
                with_kwargs=True)
            layer.register_forward_hook(
                lambda m, args, out, i=i: h_out.__setitem__(i, out[0] if isinstance(out, tuple) else out))
    pos = torch.arange(L, device="cuda")[None].expand(B, L)

    def step(i):
        start = (i * B) % nrows
        ids = rows[start:start + B] if start + B <= nrows else torch.cat([rows[start:], rows[:start + B - nrows]])
        if stage == 3:
            with torch.no_grad():
                zt = teacher(input_ids=ids, use_cache=False).logits
            with torch.autocast(**amp):
                zs = student(input_ids=ids, use_cache=False).logits
            pt = F.softmax(zt.float(), dim=-1)
            del zt
            loss = -(pt * F.log_softmax(zs.float() / a.temperature, dim=-1)).sum(-1).mean()
            del pt, zs
            loss.backward()
            total = loss.detach()
        elif stage == 1:
            with torch.no_grad():
                teacher.model(input_ids=ids, use_cache=False)
            total = 0
            cos_sin = teacher.model.rotary_emb(h_in[0], pos)
            for li, (tl, sl) in enumerate(zip(teacher.model.layers, student.model.layers)):
                if not getattr(sl.self_attn, "Hs", 0):
                    continue
                with torch.no_grad():
                    A = teacher_probs(tl, h_in[li], cos_sin, sl.self_attn.ssm_slots)
                with torch.autocast(**amp):
                    Ts = mixing_matrices(sl.self_attn, sl.input_layernorm(h_in[li]))
                loss = (Ts - A).flatten(2).norm(dim=-1).mean()
                del A, Ts
                loss.backward()
                total = total + loss.detach()
            h_in.clear()
            h_out.clear()
        else:
            with torch.no_grad():
                teacher.model(input_ids=ids, use_cache=False)
            total = 0
            cos_sin = student.model.rotary_emb(h_in[0], pos)
            for li, layer in enumerate(student.model.layers):
                with torch.autocast(**amp):
                    out = layer(h_in[li], attention_mask=None, position_ids=pos, position_embeddings=cos_sin)
                out = out[0] if isinstance(out, tuple) else out
                loss = (out.float() - h_out[li].float()).norm(dim=-1).mean()
                loss.backward()
                total = total + loss.detach()
            h_in.clear()
            h_out.clear()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total

    losses = []
    for i in range(a.warmup):
        losses.append(float(step(i)))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(a.warmup, a.warmup + a.steps):
        losses.append(step(i))
    torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    losses = [float(x) for x in losses]
    tokens = a.steps * B * L
    flops = count_flops(cfg_dict, kept, a.d_state, B, L, stage, dense=a.dense)
    tps = tokens / sec
    tflops = flops * a.steps / sec / 1e12
    peak = torch.cuda.max_memory_allocated()
    print(f"stage {stage}: losses " + " ".join(f"{x:.4f}" for x in losses), flush=True)
    print(f"stage {stage}: {a.steps} timed steps in {sec:.3f} s, {tps:.0f} tokens/s, {tflops:.1f} TFLOP/s "
          f"({tflops / PEAK_TFLOPS * 100:.1f}% of {PEAK_TFLOPS:.0f}), peak allocated {peak / 1e9:.2f} GB "
          f"(reserved {torch.cuda.max_memory_reserved() / 1e9:.2f} GB), {n_train} trainable parameters", flush=True)
    ok = all(x == x and abs(x) != float("inf") for x in losses)
    print(f"RESULT impl=torch{'-dense' if a.dense else ''} stage={stage} batch={B} seq_len={L} steps={a.steps} warmup={a.warmup} "
          f"tokens_per_s={tps:.0f} ms_per_step={sec / a.steps * 1e3:.2f} flops_per_step={flops:.6e} "
          f"tflops={tflops:.2f} mfu_pct={tflops / PEAK_TFLOPS * 100:.2f} peak_bytes={peak} "
          f"trainable={n_train} loss_first={losses[0]:.6g} loss_last={losses[-1]:.6g} finite={int(ok)} "
          f"torch={torch.__version__} transformers={transformers.__version__} "
          f"gpu={torch.cuda.get_device_name().replace(' ', '_')}", flush=True)
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--print", dest="what", choices=["config", "heads", "flops"],
                    help="print a config.json, the kept heads (one 'layer head' per line) or the FLOPs per step")
    ap.add_argument("--smoke", action="store_true", help="a tiny shape (defaults below change to it)")
    ap.add_argument("--config", help="config.json of the teacher (default: Llama-3.2-1B's shape)")
    ap.add_argument("--kept", help="kept heads 'layer:head,...' (default: --heads spread over the layers)")
    ap.add_argument("--heads", type=int, help="kept heads when --kept is not given (10)")
    ap.add_argument("--d-state", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--seq-len", type=int)
    ap.add_argument("--stage", default="all", choices=["1", "2", "3", "all"])
    ap.add_argument("--dense", action="store_true",
                    help="a teacher-shaped student instead (every head attention, GQA): the plain Llama")
    ap.add_argument("--steps", type=int, help="timed steps (10)")
    ap.add_argument("--warmup", type=int, help="untimed steps first (3)")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--tokens", help="token rows, one line of ids per row (ra-tok --to-ids)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    base = dict(batch=4, seq_len=2048, heads=10, d_state=64, steps=10, warmup=3)
    for k, v in (SMOKE_RUN if a.smoke else base).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.config:
        with open(a.config) as f:
            cfg = json.load(f)
    else:
        cfg = SMOKE if a.smoke else LLAMA_1B
    layers, H = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    kept = parse_kept(a.kept, layers) if a.kept else spread_heads(layers, H, a.heads)
    if a.seq_len % CHUNK:
        sys.exit(f"--seq-len {a.seq_len}: must be a multiple of the SSD chunk {CHUNK}")

    if a.what == "config":
        print(json.dumps(cfg, indent=2))
        return 0
    if a.what == "heads":
        for layer, hs in enumerate(kept):
            for h in hs:
                print(layer, h)
        return 0
    stages = [3, 2, 1] if a.stage == "all" else [int(a.stage)]
    if a.dense and 1 in stages:  # a teacher-shaped student has no SSM heads to train
        if a.stage == "1":
            sys.exit("--dense --stage 1: a teacher-shaped student has no SSM heads (stage 1 trains only those)")
        stages.remove(1)
    if a.what == "flops":
        for s in stages:
            print(f"{count_flops(cfg, kept, a.d_state, a.batch, a.seq_len, s, dense=a.dense):.0f}")
        return 0
    rc = 0
    for s in stages:
        rc |= run_stage(a, cfg, kept, s)
    return rc


if __name__ == "__main__":
    sys.exit(main())

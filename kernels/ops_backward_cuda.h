/* CUDA twins of the training primitives: the backward ops of lib/ops.h, the
 * adapters of lib/adapter.h, the losses of lib/loss.h and the AdamW step of
 * lib/optim.h.  Implemented in kernels/ops_backward_cuda.cu (ops, adapters;
 * the design note on how a CUDA stage-3 step composes them is at its top),
 * kernels/loss_cuda.cu and kernels/optim_cuda.cu.
 *
 * Same names as the CPU twins prefixed cuda_, same argument order, DEVICE
 * pointers.  Storage:
 *   - activations, weights and ACTIVATION gradients: bf16 (uint16_t *, raw
 *     bits); every sum, softmax and norm is accumulated in fp32;
 *   - PARAMETER gradients (dW, db, dweight, dtable): fp32, and they
 *     accumulate (+=) as on the CPU, so micro-batches add into the master
 *     gradients without extra buffers;
 *   - statistics (rstd, adapter stats, log-sum-exps), RoPE tables, attention
 *     and mixing matrices (stage 1): fp32.
 * Input gradients overwrite, parameter gradients accumulate, any gradient
 * pointer may be NULL when not wanted (lib/ops.h conventions), except where
 * a function says otherwise.
 *
 * Determinism: no float atomics anywhere.  Sums over rows into a parameter
 * gradient (embedding rows, RMSNorm weight, biases) are taken per column in
 * row order or in fixed row blocks added in block order; cuBLAS GEMMs are
 * run-to-run reproducible on one GPU model; loss values are per-row results
 * downloaded and summed in row order in double on the host; the gradient
 * norm is a fixed tree.  So two runs of the same step give the same bits.
 *
 * Work is queued on the ops stream (cuda_set_stream); functions that return
 * a loss value or an error synchronise.  Scratch memory (attention blocks,
 * column-sum partials, per-row loss values) is owned by the library, grown
 * on demand and kept (cuda_train_scratch_free releases it).
 * Compiled only when nvcc is found (RA_HAVE_CUDA=1). */
#ifndef RA_OPS_BACKWARD_CUDA_H
#define RA_OPS_BACKWARD_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "error.h"
#include "optim.h"

/* ---- backward ops (twins of lib/ops.h) --------------------------------- */

/* dtable[tokens[i],:] += dout[i,:].  One thread per column walks the rows in
 * order, so repeated tokens add up in the CPU's order: bit-identical to the
 * CPU twin on the same inputs.  Tokens must be in [0, V) (negative ones are
 * skipped). */
void cuda_embedding_backward(float *dtable, const uint16_t *dout, const int32_t *tokens, int n, int D);

/* The same with the rows grouped by token on the host: token ids[k]
 * (k < n_ids, distinct) occurs at rows rows[offsets[k] .. offsets[k+1]−1]
 * in ascending order (device arrays).  Same bits, parallel over tokens. */
void cuda_embedding_backward_sorted(float *dtable, const uint16_t *dout, const int32_t *rows, const int32_t *ids,
                                    const int32_t *offsets, int n_ids, int D);

/* dx (bf16, overwrite), dweight (fp32, +=) from dout, the forward's input,
 * weight and rstd (cuda_rmsnorm_forward's). */
void cuda_rmsnorm_backward(uint16_t *dx, float *dweight, const uint16_t *dout, const uint16_t *in,
                           const uint16_t *weight, const float *rstd, int n, int D);

/* out = in·Wᵀ + b:  dx = dout·W (bf16, overwrite), dW += doutᵀ·in (fp32),
 * db += Σ_rows dout (fp32).  cuBLAS, bf16 operands, fp32 accumulation. */
void cuda_linear_backward(uint16_t *dx, float *dW, float *db, const uint16_t *dout, const uint16_t *in,
                          const uint16_t *W, int n, int in_dim, int out_dim);

/* In place on dx[n, heads, hd] (bf16): the inverse rotation. */
void cuda_rope_backward(uint16_t *dx, const float *cos_t, const float *sin_t, int n, int heads, int head_dim);
/* The same on rows row_stride elements apart (the q/k heads of a fused
 * q/k/v gradient buffer). */
void cuda_rope_backward_strided(uint16_t *dx, int64_t row_stride, const float *cos_t, const float *sin_t, int n,
                                int heads, int head_dim);

/* Gradient of cuda_attention_forward (causal GQA, optional doc_start
 * [B,T] device): dq [B,T,H,hd], dk, dv [B,T,Hkv,hd] overwritten (bf16).
 * Materialised per (batch, KV head) block with cuBLAS: S = QKᵀ and dP =
 * dO·Vᵀ in fp32 [Hkv, T, T] scratch, P and dS in bf16 (12 bytes per score:
 * 384 MiB at T = 2048, Hkv = 8); dK, dV summed over the query heads of a
 * group in fp32 scratch [B,T,Hkv,hd] (no atomics).  The work above the
 * diagonal is done and masked (2× the causal minimum). */
void cuda_attention_backward(uint16_t *dq, uint16_t *dk, uint16_t *dv, const uint16_t *dout, const uint16_t *q,
                             const uint16_t *k, const uint16_t *v, const int32_t *doc_start, int B, int T, int H,
                             int Hkv, int hd);

/* The general form, for q/k/v read in place from a fused q/k/v buffer and
 * gradients written into a fused gradient buffer: token i, query head h at
 * q + i·q_stride + h·hd (dout, dq likewise with their strides); KV head g at
 * k/v + i·kv_stride + g·hd, dk/dv + i·dkv_stride + g·hd. */
typedef struct cuda_attention_bwd_args {
    uint16_t *dq, *dk, *dv;
    const uint16_t *dout, *q, *k, *v;
    const int32_t *doc_start; /* optional device [B·T] */
    int64_t q_stride, kv_stride, dout_stride, dq_stride, dkv_stride;
    int B, T, H, Hkv, hd;
} cuda_attention_bwd_args;
void cuda_attention_backward_ex(const cuda_attention_bwd_args *a);

/* In place: zero the gradient slots of ablated heads (device head_keep). */
void cuda_head_mask_backward(uint16_t *dout, const uint8_t *head_keep, int B, int T, int H, int hd);

/* out = silu(gate)·up:  dgate, dup overwritten (dgate may alias dout). */
void cuda_swiglu_backward(uint16_t *dgate, uint16_t *dup, const uint16_t *dout, const uint16_t *gate,
                          const uint16_t *up, int64_t n);
/* The fused layout of cuda_swiglu_fused_forward: gate_up [n, 2I] →
 * dgate_up [n, 2I] (dgate in columns 0..I-1, dup in I..2I-1) from dout [n, I]. */
void cuda_swiglu_fused_backward(uint16_t *dgate_up, const uint16_t *dout, const uint16_t *gate_up, int n, int I);

/* ---- adapters (twins of lib/adapter.h) ----------------------------------
 * attn_slot is a DEVICE array [H] (H ≤ 256); stats fp32 [n, 4] as on the
 * CPU.  A static layer without attention or without SSM slots passes
 * through (stats zeroed), decided on the device. */
void cuda_adapter_static_forward(uint16_t *out, float *stats, const uint16_t *slots, const uint8_t *attn_slot, int n,
                                 int H, int hd);
void cuda_adapter_static_backward(uint16_t *dslots, const uint16_t *dout, const uint16_t *slots, const float *stats,
                                  const uint8_t *attn_slot, int n, int H, int hd);
/* out = 0.5·(ssm + ã·Wᵀ + b); adapted [n, D] (bf16, saved) receives ã. */
void cuda_adapter_linear_forward(uint16_t *out, uint16_t *adapted, float *stats, const uint16_t *ssm,
                                 const uint16_t *attn, const uint16_t *W, const uint16_t *b, int n, int D);
/* dssm, dattn (bf16) overwritten; dW [D, D], db [D] (fp32) accumulate.
 * dã is kept in fp32 scratch (unlike the CPU twin, dattn is not used as a
 * workspace); dattn may be NULL. */
void cuda_adapter_linear_backward(uint16_t *dssm, uint16_t *dattn, float *dW, float *db, const uint16_t *dout,
                                  const uint16_t *ssm, const uint16_t *attn, const uint16_t *adapted,
                                  const float *stats, const uint16_t *W, int n, int D);

/* ---- losses (twins of lib/loss.h) ---------------------------------------
 * Logits and hidden states bf16, matrices fp32, log-sum-exps fp32 [n].  A
 * row of V logits is reduced by one block with a per-thread online
 * log-sum-exp merged across the block, reading the bf16 row directly: no
 * fp32 copy of [n, V] ever exists.  `chunk` is accepted for signature parity
 * and ignored (the block's stride is the chunking).  The training step
 * bounds logit memory by running the LM head over row chunks (see the note
 * in kernels/ops_backward_cuda.cu).  Values are returned as double, summed
 * over rows on the host in row order. */
double cuda_loss_matrix_forward(const float *Ts, const float *A, int BH, int T);
void cuda_loss_matrix_backward(float *dTs, const float *Ts, const float *A, int BH, int T, float dloss);
/* Both from one pass of norms: returns the value and, when dTs is not NULL,
 * writes the gradient (dTs may be Ts: in place).  What stage 1's step uses. */
double cuda_loss_matrix(float *dTs, const float *Ts, const float *A, int BH, int T, float dloss);

double cuda_loss_l2_forward(const uint16_t *out, const uint16_t *target, int n, int D);
void cuda_loss_l2_backward(uint16_t *dout, const uint16_t *out, const uint16_t *target, int n, int D, float dloss);

double cuda_loss_soft_ce_forward(float *lse_s, float *lse_t, const uint16_t *zs, const uint16_t *zt, int n, int V,
                                 float T, int chunk);
/* dzs may be zs (in place). */
void cuda_loss_soft_ce_backward(uint16_t *dzs, const uint16_t *zs, const uint16_t *zt, const float *lse_s,
                                const float *lse_t, int n, int V, float T, float dloss);
/* Both in one kernel (one block per row reads the row twice, the second
 * time from L2): returns L and writes ∂(dloss·L)/∂zs into dzs (may be zs). */
double cuda_loss_soft_ce_fused(uint16_t *dzs, const uint16_t *zs, const uint16_t *zt, int n, int V, float T,
                               float dloss);

/* labels: DEVICE [n]; they are checked on the host first (EX_DATAERR
 * naming the row, as the CPU twin).  nll (optional, device [n]). */
int cuda_loss_ce_forward(double *loss, float *lse, float *nll, int *counted, const uint16_t *z,
                         const int32_t *labels, int n, int V, int ignore_index, int chunk, ra_error *err);
void cuda_loss_ce_backward(uint16_t *dz, const uint16_t *z, const int32_t *labels, const float *lse, int n, int V,
                           int ignore_index, float dloss);

/* Asynchronous row forms for a training step (no host synchronisation;
 * the caller sums row_loss, device [n], once per micro-batch):
 *   cuda_loss_ce_rows: row_loss[i] = lse(z_i) − z_i[label_i] (0 for an
 *     ignored row); dz (NULL = none; may be z) = c·(softmax − onehot), 0 on
 *     ignored rows.  Labels must have been checked (cuda_loss_ce_forward's
 *     checks are the caller's).
 *   cuda_loss_soft_ce_rows: row_loss[i] = CE(zs_i/T, softmax(zt_i)); dzs
 *     (may be zs) = (c/T)·(softmax(zs/T) − softmax(zt)). */
void cuda_loss_ce_rows(float *row_loss, uint16_t *dz, const uint16_t *z, const int32_t *labels, int n, int V,
                       int ignore_index, float c);
void cuda_loss_soft_ce_rows(float *row_loss, uint16_t *dzs, const uint16_t *zs, const uint16_t *zt, int n, int V,
                            float T, float c);

/* kl (optional, device [n]). */
double cuda_loss_kl(float *kl, const uint16_t *zs, const uint16_t *zt, int n, int V, int chunk);

/* ---- AdamW over device master weights (twin of lib/optim.h) -------------
 * A device mirror of a host ra_optim: the host keeps names, shapes, freeze
 * flags, the configuration and the checkpoint format; the device holds the
 * fp32 master weights w, the gradients g (for trainable parameters) and the
 * moments m, v, and optionally a bf16 compute copy per parameter refreshed
 * after every step.  The update is lib/optim.c's, elementwise, with the
 * same fp32 operations in the same order (no FMA contraction), so it is
 * bit-compatible with the CPU step on the same gradients.
 *
 *   cuda_optim *d = cuda_optim_create(host, NULL);    // uploads w (m, v if the host has them)
 *   cuda_optim_set_compute_copy(d, i, model_weight_bf16);
 *   per step: cuda_optim_zero_grad(d); backward into d->params[i].g ...;
 *             if (cuda_optim_step(d, lr, &err)) stop;  // NaN/Inf: nothing changed
 *   checkpoint: cuda_optim_download(d, host);          // w, m, v, step → host */
typedef struct cuda_optim_param {
    const char *name;   /* the host parameter's name (not owned) */
    float *w, *g;       /* device fp32 [numel]; g NULL for a frozen parameter */
    float *m, *v;       /* device fp32 [numel]; NULL for a frozen parameter */
    uint16_t *w_bf16;   /* optional device compute copy (caller-owned) */
    int64_t numel;
    int64_t part0;      /* first slot of this parameter in the norm partials */
    int decay, frozen;
    int g_external;     /* g is caller-owned (cuda_optim_create's grads) */
} cuda_optim_param;

typedef struct cuda_optim {
    ra_adamw_config cfg;
    cuda_optim_param *params;
    int n;
    int64_t step;
    double last_grad_norm;
    double *partials; /* device, one per block of CUDA_OPTIM_NORM_BLOCK gradient elements */
    int64_t n_partials;
    double *norm2;    /* device, one double */
    unsigned long long *bad; /* device, first non-finite index */
    void *slots;      /* device table of the trainable parameters (optim_cuda.cu) */
    int n_slots, slots_stale;
    int64_t n_chunks; /* AdamW blocks over all of them */
} cuda_optim;

#define CUDA_OPTIM_NORM_BLOCK 16384

/* Upload a host optimiser's parameters (w; m and v where the host has
 * them, else zeros); gradients zeroed.  grads (NULL, or one entry per
 * host parameter): a non-NULL grads[i] (device fp32 [numel], caller-owned,
 * e.g. a slice of a fused gradient buffer; trainable parameters only) is
 * parameter i's gradient, for which the optimiser allocates none and which
 * cuda_optim_zero_grad leaves to the caller.  EX_TEMPFAIL when the GPU
 * lacks memory. */
int cuda_optim_create(cuda_optim **out, const ra_optim *host, float *const *grads, ra_error *err);
void cuda_optim_free(cuda_optim *o);
void cuda_optim_set_compute_copy(cuda_optim *o, int i, uint16_t *w_bf16);
/* Write every trainable parameter's rounded master weights into its
 * compute copy (done by each step; call once after create). */
void cuda_optim_refresh_compute(cuda_optim *o);
/* Zero the gradients the optimiser owns (not the caller's, see create). */
void cuda_optim_zero_grad(cuda_optim *o);
/* Global L2 norm of the trainable gradients (deterministic; NaN/Inf propagate). */
double cuda_optim_grad_norm(cuda_optim *o);
/* 0, or EX_SOFTWARE naming the first parameter and element holding NaN/Inf. */
int cuda_optim_check_grads(cuda_optim *o, ra_error *err);
/* One AdamW step (lib/optim.h's formula, clipping included); on a
 * non-finite gradient nothing changes and EX_SOFTWARE names it. */
int cuda_optim_step(cuda_optim *o, double lr, ra_error *err);
/* Copy w, m, v (allocating the host moments if needed), step and
 * last_grad_norm back into the host optimiser it was created from. */
void cuda_optim_download(const cuda_optim *o, ra_optim *host);

/* The reverse of cuda_optim_download: w, m, v (zeros where the host has
 * none), step and last_grad_norm from the host optimiser; compute copies
 * refreshed.  For --resume. */
void cuda_optim_upload(cuda_optim *o, const ra_optim *host);
/* Test hook (RA_TEST_NAN_AT_STEP): the first gradient element of the first
 * trainable parameter becomes NaN. */
void cuda_optim_poison(cuda_optim *o);

/* Grow the library's training scratch to what a step of n = B·T rows
 * needs (column sums up to colsum_width columns, attention backward with
 * up to Hkv_max KV heads of hd, the learned adapter's D; 0 = none), so
 * the step allocates nothing.  EX_TEMPFAIL when it does not fit. */
int cuda_train_scratch_reserve(int n, int colsum_width, int B, int T, int Hkv_max, int hd, int adapter_D,
                               ra_error *err);

/* Release the library's training scratch buffers. */
void cuda_train_scratch_free(void);

#ifdef __cplusplus
}
#endif

#endif

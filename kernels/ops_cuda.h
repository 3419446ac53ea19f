/* CUDA backend of the Transformer ops: the twins of lib/ops.h.
 *
 * Every function here has the name of its CPU twin prefixed cuda_ and the
 * same argument order.  Pointers are DEVICE pointers.  Activations and
 * weights are bf16 (passed as uint16_t *, the raw bf16 bits); every sum,
 * softmax and norm is accumulated in fp32.  Exceptions, where fp32 is the
 * useful storage: RoPE cos/sin tables and inv_freq, RMSNorm's rstd, and the
 * attention probabilities.  Integer inputs (tokens, positions, doc_start,
 * head_keep) are device arrays too.
 *
 * All work is queued on one stream (cuda_set_stream, default the legacy
 * stream 0) and is asynchronous: call cuda_synchronize() before reading
 * results on the host.  A CUDA or cuBLAS failure is a broken machine or a
 * bug, not bad input: it prints file:line and the library's message and
 * exits (kernels/cuda_check.h); running out of GPU memory says so and
 * suggests a smaller batch.  Not thread-safe: one host thread drives the GPU.
 *
 * Compiled only when nvcc is found (RA_HAVE_CUDA=1). */
#ifndef RA_OPS_CUDA_H
#define RA_OPS_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "error.h"

/* ---- device, memory, stream ------------------------------------------- */

/* Select GPU `device` and warm up the libraries.  EX_UNAVAILABLE with a
 * message when there is no usable GPU. */
int cuda_device_init(int device, ra_error *err);
/* 1 when at least one CUDA device is usable (no exit on failure). */
int cuda_device_available(void);
/* "NVIDIA H200, 132 SMs, 139.8 GiB" */
void cuda_device_describe(char *buf, size_t len);

/* cudaMalloc that exits with a clear message on failure (out of memory:
 * how much was asked, how much is free, "try a smaller --batch"). */
void *cuda_malloc(size_t bytes);
/* The same, but returns EX_TEMPFAIL and fills err instead of exiting;
 * `what` names the buffer in the message. */
int cuda_malloc_try(void **out, size_t bytes, const char *what, ra_error *err);
void cuda_free(void *p);
void cuda_memset(void *p, int byte, size_t bytes);
void cuda_upload(void *dst, const void *src, size_t bytes);   /* host -> device */
void cuda_download(void *dst, const void *src, size_t bytes); /* device -> host */
void cuda_copy(void *dst, const void *src, size_t bytes);     /* device -> device */
/* Convert on the host and copy: fp32 host <-> bf16 device (round to nearest even,
 * bit for bit ra_f32_to_bf16).  Uploads of 2^22 elements or more convert on
 * every core into pinned staging buffers while the previous chunk copies. */
void cuda_upload_bf16(uint16_t *dst, const float *src, size_t n);
void cuda_download_bf16(float *dst, const uint16_t *src, size_t n);
/* n bf16 values that fill(host, off, count, arg) writes chunk by chunk
 * (values off .. off+count-1 into host[0 .. count)) to dst: through the
 * pinned staging buffers, the next chunk filled while the last one copies
 * (pageable memory when pinned memory is refused).  For weights that are
 * already bf16 on the host (a checkpoint's memory map). */
void cuda_upload_bf16_from(uint16_t *dst, size_t n, void (*fill)(uint16_t *host, size_t off, size_t count, void *arg),
                           void *arg);
/* bf16 device -> fp32 device. */
void cuda_bf16_to_f32(float *dst, const uint16_t *src, int64_t n);
/* Fill with uniform values in [center - half_width, center + half_width), a
 * hash of (seed, index): deterministic random weights for benchmarks and
 * tests (half_width 0 gives a constant). */
void cuda_fill_uniform_bf16(uint16_t *x, int64_t n, float center, float half_width, uint64_t seed);

void cuda_set_stream(void *stream); /* a cudaStream_t */
void *cuda_get_stream(void);
/* Wait for the stream and check for errors of earlier launches. */
void cuda_synchronize(void);
/* Free and total device memory in bytes (cudaMemGetInfo). */
void cuda_mem_info(size_t *free_bytes, size_t *total_bytes);
/* The most device memory in use so far (the whole device, context and
 * library workspaces included): sampled after every allocation made
 * through cuda_malloc/cuda_malloc_try and at each call. */
size_t cuda_mem_peak(void);

/* ---- the ops (twins of lib/ops.h) -------------------------------------- */

/* out[i,:] = table[tokens[i],:].  Tokens outside [0, V) must be rejected by
 * the caller; the kernel writes zeros for negative ones. */
void cuda_embedding_forward(uint16_t *out, const int32_t *tokens, const uint16_t *table, int n, int D);

/* out = in / rms(in) * weight; rstd (optional, fp32 [n]) receives 1/rms. */
void cuda_rmsnorm_forward(uint16_t *out, float *rstd, const uint16_t *in, const uint16_t *weight, int n, int D,
                          float eps);

/* out[n,out_dim] = in[n,in_dim] · Wᵀ + bias (bias may be NULL); cuBLASLt,
 * bf16 in/out, fp32 accumulation, bias in the epilogue. */
void cuda_linear_forward(uint16_t *out, const uint16_t *in, const uint16_t *W, const uint16_t *bias, int n,
                         int in_dim, int out_dim);
/* x[n,out_dim] += in · Wᵀ + bias: the residual add fused into the GEMM
 * (beta = 1), so o_proj and down_proj write the residual stream directly. */
void cuda_linear_residual_forward(uint16_t *x, const uint16_t *in, const uint16_t *W, const uint16_t *bias, int n,
                                  int in_dim, int out_dim);
/* How many cuBLASLt plans (heuristic queries) were made: cache misses. */
long cuda_linear_plan_misses(void);

/* cos/sin tables (fp32 [n, hd/2]) for device positions [n] and device
 * inv_freq [hd/2] (compute inv_freq on the host with rope_inv_freq). */
void cuda_rope_tables(float *cos_t, float *sin_t, const int32_t *positions, int n, const float *inv_freq,
                      int head_dim);
/* In place on x[n, heads, hd], HF rotate_half convention. */
void cuda_rope_forward(uint16_t *x, const float *cos_t, const float *sin_t, int n, int heads, int head_dim);
/* The same on rows that are row_stride elements apart (e.g. the q and k
 * heads of a fused qkv buffer, which are adjacent in each row). */
void cuda_rope_forward_strided(uint16_t *x, int64_t row_stride, const float *cos_t, const float *sin_t, int n,
                               int heads, int head_dim);

/* Causal GQA attention, q[B,T,H,hd], k,v[B,T,Hkv,hd] -> out[B,T,H,hd];
 * doc_start (optional, device [B,T]) as in lib/ops.h; probs (optional,
 * fp32 device [B,H,T,T]).  The output by a flash-style kernel (bf16 tensor
 * cores, online softmax in fp32); probs by a GEMM and a row softmax. */
void cuda_attention_forward(uint16_t *out, float *probs, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                            const int32_t *doc_start, int B, int T, int H, int Hkv, int hd);

/* The general form the model forward uses. */
typedef struct cuda_attention_args {
    uint16_t *out;            /* [B*T, out_stride], head h at column h*hd; may be NULL with probs */
    int64_t out_stride;       /* elements between tokens of out (H*hd when contiguous) */
    const uint16_t *q;        /* token i, head h at q + i*q_stride + h*hd */
    int64_t q_stride;
    const uint16_t *k, *v;    /* token i, kv head g at k + i*kv_stride + g*hd */
    int64_t kv_stride;
    const int32_t *doc_start; /* optional [B*T] */
    const uint8_t *head_keep; /* optional [B*H]: 0 writes zeros for that head (fused head mask) */
    float *probs;             /* optional fp32 [B, n_probs_heads, T, T] */
    const int32_t *probs_heads; /* device [n_probs_heads] query heads whose probs to write; NULL = all H */
    int n_probs_heads;
    int B, T, H, Hkv, hd;
} cuda_attention_args;
/* With out != NULL: the whole attention output (flash kernel when the head
 * dim and alignment allow, else the row kernel; RA_CUDA_ATTENTION=simple in
 * the environment forces the row kernel).  With probs != NULL: also the
 * probabilities of the chosen heads (a batched cuBLAS GEMM for the scores,
 * then a masked softmax per row in place). */
void cuda_attention_forward_ex(const cuda_attention_args *a);

/* Zero the outputs of ablated heads (device head_keep [B*H]). */
void cuda_head_mask_apply(uint16_t *out, const uint8_t *head_keep, int B, int T, int H, int hd);

/* out = silu(gate) * up elementwise over n values. */
void cuda_swiglu_forward(uint16_t *out, const uint16_t *gate, const uint16_t *up, int64_t n);
/* The same over a fused gate_up buffer [n, 2*I] (gate in columns 0..I-1, up
 * in I..2I-1) into out[n, I]. */
void cuda_swiglu_fused_forward(uint16_t *out, const uint16_t *gate_up, int n, int I);

/* x += y */
void cuda_residual_add(uint16_t *x, const uint16_t *y, int64_t n);

/* out[r,:] = in[rows[r],:] for r < n_rows (device rows). */
void cuda_gather_rows(uint16_t *out, const uint16_t *in, const int32_t *rows, int n_rows, int D);

#ifdef __cplusplus
}
#endif

#endif

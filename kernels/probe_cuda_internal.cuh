/* Internals shared by the GPU probe engines (probe_cuda.cu: exact ablation,
 * probe_cuda_attr.cu: attribution): the uploaded model, activations for one
 * call of B rows, and the per-layer caches of a chunk of prompt rows. */
#ifndef RA_PROBE_CUDA_INTERNAL_CUH
#define RA_PROBE_CUDA_INTERNAL_CUH

#include "cuda_common.cuh"
#include "forward_cuda.h"
#include "ops_cuda.h"
#include "probe_cuda.h"

typedef struct pc_state {
    cuda_model *m;
    int B, T_max, L, H, Hkv, hd, D, I, V, qkvd;
    uint16_t *x, *xn, *qkv, *att, *gu, *act, *sel, *sel_att, *logits;
    uint16_t **cache_x, **cache_att; /* [L] each [B*T, D] / [B*T, H*hd] */
    float *cos_t, *sin_t, *lse, *tval;
    int32_t *positions, *rowidx, *rows, *argmax;
    int64_t *tidx;
    uint8_t *keep;
    int S_max, NT_max;
    /* host scratch */
    int32_t *h_rowidx, *h_rows, *h_argmax, *h_positions;
    int64_t *h_tidx;
    float *h_lse, *h_tval;
    uint8_t *h_keep;
    double *lse_d;
    /* packed ablation calls: [4][B*T_max] int32 — cache row, position in
     * its row, packed start of its row, head to zero (-1 none) per token */
    int32_t *pk, *h_pk;
    /* what the caches hold: the baseline pass of items cache_i0..cache_i1-1
     * of cache_d at width cache_T (cache_d NULL: nothing), and, when
     * cache_has_base, those items' baseline outcomes */
    const probe_data *cache_d;
    int cache_i0, cache_i1, cache_T, cache_has_base;
    probe_outcome *cache_base;
} pc_state;

typedef struct pc_unit {
    int item, head; /* head -1: baseline */
} pc_unit;

/* Upload the model and allocate for calls of B rows (caches included);
 * EX_TEMPFAIL with a message when the GPU lacks memory. */
int pc_init(pc_state *s, const ra_model *m, const probe_data *d, int B, ra_error *err);
void pc_free(pc_state *s);
/* The session's state (probe_cuda_begin) when it serves (m, d, B), else
 * *local initialised; pc_release frees it unless it is the session's. */
pc_state *pc_acquire(const ra_model *m, const probe_data *d, int B, pc_state *local, int *rc, ra_error *err);
void pc_release(pc_state *s);
/* RoPE tables for positions 0..T-1 of every row slot. */
void pc_rope_tables(pc_state *s, int T);
/* Rows of items i0..i1-1 (slots in order) from their tokens through every
 * layer, caching the residual entering each layer and its attention output;
 * s->x ends as the final residual.  Returns the number of rows. */
int pc_baseline(pc_state *s, const probe_data *d, int i0, int i1, int T);
/* The layer's attention output (before o_proj) of s->x into att_out;
 * doc_start (device [B*T] or NULL) as cuda_attention_args. */
void pc_attention_out(pc_state *s, int l, int B, int T, uint16_t *att_out, float *rstd, const int32_t *doc_start);
/* s->x += att·Woᵀ, then the MLP block of layer l (the _on form: on x). */
void pc_o_proj_and_mlp(pc_state *s, int l, int n, const uint16_t *att);
void pc_o_proj_and_mlp_on(pc_state *s, int l, uint16_t *x, int n, const uint16_t *att);
/* Final norm + LM head at the scored positions of the units' rows (placed
 * in order from slot 0); every unit's outcome into out. */
void pc_score_call(pc_state *s, const probe_data *d, const pc_unit *u, int nu, int T, probe_outcome *out);
/* Record the baseline outcomes of the chunk the caches hold (out [i1-i0]),
 * so a later engine run on the same chunk skips its baseline pass. */
void pc_cache_set_base(pc_state *s, const probe_outcome *out);

__global__ void probe_row_stats_kernel(const bf16 *logits, int V, float *lse, int32_t *argmax);

#endif

/* Library-internal: the CUDA forward state (kernels/forward_cuda.cu) and the
 * hooks through which hybrid students and decoding use it
 * (kernels/forward_hybrid_cuda.cu, kernels/decode_cuda.cu).  Host code. */
#ifndef RA_FORWARD_CUDA_INTERNAL_H
#define RA_FORWARD_CUDA_INTERNAL_H

#include "dm2_cuda.h"
#include "forward_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

struct cuda_hybrid_acts;
struct cuda_decode;

struct cuda_forward_state {
    const cuda_model *m;
    int B_max, T_max;
    uint16_t *x;        /* residual [n, D] */
    uint16_t *xn;       /* normed block input [n, D]; also the gathered logit rows */
    uint16_t *qkv;      /* [n, (H+2Hkv)·hd] */
    uint16_t *att;      /* [n, H·hd] */
    uint16_t *gu;       /* [n, 2I] */
    uint16_t *act;      /* [n, I] */
    float *cos_t, *sin_t; /* [n, hd/2] */
    int32_t *tokens, *positions, *doc_start, *rows; /* [n] */
    uint8_t *keep;      /* [layers, B, H] */
    int32_t *probs_heads; /* [probs_heads_cap] */
    int probs_heads_cap;
    float *probs;       /* [B, T, T], grown on demand */
    size_t probs_cap;   /* elements */
    uint16_t *logits;   /* [logits_rows_cap, V] for host logits, grown on demand */
    size_t logits_rows_cap;
    size_t bytes;       /* device bytes of the fixed buffers */
    /* host scratch */
    int32_t *h_positions, *h_rows;
    uint8_t *h_keep;
    /* hybrid mixer buffers (hybrid students, and teachers run by decode's
     * prefill); NULL otherwise */
    struct cuda_hybrid_acts *hy;
    /* set during a decode prefill: layers store their decode state in
     * capture's rows capture_row0 .. capture_row0 + B − 1 */
    struct cuda_decode *capture;
    int capture_row0;
};

/* A hybrid student's weights beyond cuda_model's (kernels/forward_hybrid_cuda.cu).
 * cuda_layer_weights of a hybrid layer hold its k kept heads: wqkv
 * [3k·hd, D] (q rows, then each head's own K rows, then V rows), bqkv,
 * wo = the teacher's o_proj [D, H·hd] (routed) or the kept heads' slice
 * [D, k·hd] (parallel), bo. */
typedef struct cuda_hybrid_layer {
    int k, Hs;                /* kept heads, SSM heads */
    int *attn_heads;          /* host [k] slots of the kept heads */
    int32_t *slot_src;        /* device [H]: routed slot source (see cuda_hybrid_slots) */
    cuda_dm2_params ssm;      /* valid when Hs > 0 */
    dm2_config ssm_cfg;
    uint16_t *adapter_w, *adapter_b; /* parallel, k > 0: [D, D], [D] */
} cuda_hybrid_layer;

typedef struct cuda_hybrid_weights {
    int layout;               /* ra_layout */
    int adapter;              /* ra_adapter_kind */
    cuda_hybrid_layer *layers;
} cuda_hybrid_weights;

/* Upload a hybrid student (m->hybrid set); cuda_model_upload calls it. */
int cuda_hybrid_model_upload(const ra_model *m, cuda_model **out, ra_error *err);
void cuda_hybrid_weights_free(cuda_hybrid_weights *h, int layers);

/* The mixer buffers for s (its B_max × T_max rows); ssm_forward = 0 leaves
 * out the DiscreteMamba2 forward buffers (decode steps use the cache's).
 * EX_TEMPFAIL when they do not fit. */
int cuda_hybrid_acts_create(cuda_forward_state *s, int ssm_forward, ra_error *err);
void cuda_hybrid_acts_free(struct cuda_hybrid_acts *a);

/* The forward options a hybrid supports (probabilities of kept heads only). */
int cuda_hybrid_check_opts(const cuda_forward_state *s, const ra_forward_opts *o, ra_error *err);

/* Layer l's mixer on s->x for B×T rows, residual included (RoPE tables in
 * s->cos_t / s->sin_t, device doc_start or NULL), as hybrid_mixer_forward
 * on the CPU: any layer of a hybrid, and teacher layers while capturing. */
void cuda_hybrid_mixer_forward(cuda_forward_state *s, int l, int B, int T, const ra_forward_opts *o,
                               const int32_t *doc_start);

/* One decode step of layer l's mixer for d's B rows (one token each) on
 * s->x, RoPE tables for the rows' positions in s->cos_t / s->sin_t: appends
 * K/V at cache index d->len, attends over each row's cache, advances the
 * SSM; as hybrid_mixer_step on the CPU. */
void cuda_hybrid_mixer_step(cuda_forward_state *s, struct cuda_decode *d, int l);

/* The MLP block of layer l over n rows of s->x (kernels/forward_cuda.cu). */
void cuda_mlp_block_forward(cuda_forward_state *s, int l, int n);

#ifdef __cplusplus
}
#endif

#endif

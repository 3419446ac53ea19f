/* The trainer object of kernels/model_train_cuda.h and the helpers its
 * stages share: kernels/model_train_cuda.cu (parameters, optimiser, the
 * stage-3 step) and kernels/stage_train_cuda.cu (MOHAWK stages 1 and 2).
 * Library-internal host code. */
#ifndef RA_MODEL_TRAIN_CUDA_INTERNAL_H
#define RA_MODEL_TRAIN_CUDA_INTERNAL_H

#include "block_train_cuda.h"
#include "forward_cuda_internal.h"
#include "model_train_cuda.h"
#include "ops_backward_cuda.h"

/* A master weight the kernels read in fp32 (DM2 conv, D, z_bias): copied
 * from the optimiser after every change. */
typedef struct mirror32 {
    float *dst;
    int param;
} mirror32;

struct cuda_model_train {
    ra_model *m;
    const ra_model *teacher;
    ra_optim *host;
    cuda_model *cm, *tm;       /* student compute copies, teacher */
    cuda_forward_state *tfs;   /* teacher forward (stage 3 kd) */
    cuda_optim *opt;
    cuda_blocks *blocks;
    int recompute;
    /* stages 1 and 2: the teacher runs as blocks (X holds its residuals);
     * the listed layers */
    cuda_blocks *tblocks;
    int *layers, n_layers;
    int B, T, n, R, L, D, V, hd;
    cuda_alloc_ctx ac;
    ra_error alloc_err;
    /* activations */
    uint16_t **X;              /* [L+1] residuals [n, D] */
    uint16_t *xfn, *dxfn;      /* final-normed [n, D], its gradient */
    float *rstdf;
    uint16_t *zs, *zt, *thn;   /* logit chunks [R, V], teacher normed chunk [R, D] */
    float *row_loss;           /* [n] */
    float *cos_t, *sin_t;      /* [n, hd/2] */
    uint8_t *starts;           /* [n] */
    int32_t *d_ints;           /* tokens, doc_start, labels, positions, then the rows grouped by token:
                                  rows [n], ids [n], offsets [n+1] (cuda_embedding_backward_sorted) */
    int n_ids;                 /* distinct tokens of the batch */
    uint16_t *dres;            /* the residual gradient [n, D] */
    /* stage 1 (kernels/stage_train_cuda.cu) */
    int32_t *s1_heads;         /* device [n_layers, s1_hs]: teacher query head of each SSM head */
    int s1_hs, s1_rows;        /* most SSM heads of a listed layer; batch rows per pass */
    float *s1_A, *s1_Tm;       /* [s1_rows, s1_hs, T, T]: teacher probabilities, mixing matrices */
    cuda_dm2_acts *s1_dm2;     /* [s1_rows, T] of the widest listed layer */
    /* gradients */
    cuda_block_grads *lg;      /* [L] */
    float *g_embed, *g_final_norm, *g_lm_head;
    mirror32 *mirrors;
    int n_mirrors;
    /* host scratch */
    int32_t *h_ints, *h_labels, *h_count; /* h_count [V+1] */
    float *h_rows;
    size_t peak;
};

/* What every trainer starts with: the GPU, the student checked (and a
 * teacher refused when it is a hybrid), t's shape fields, host scratch,
 * the student (and teacher, when given) uploaded.  *out is set as soon as
 * the trainer exists, so on an error the caller hands it to mt_created. */
int mt_create(cuda_model_train **out, ra_model *student, const ra_model *teacher, ra_optim *optim, int B, int T,
              ra_error *err);
/* The end of a create: rc 0 leaves *out (peak sampled); otherwise the
 * partial trainer is freed, *out NULL, out of GPU memory reported as
 * EX_OSERR naming the batch. */
int mt_created(cuda_model_train **out, int rc, ra_error *err);
/* Device memory high-water mark, sampled now. */
void mt_sample_peak(cuda_model_train *t);
/* EX_UNAVAILABLE / EX_DATAERR for a model the CUDA step does not take. */
int mt_check_supported(const ra_model *m, const char *role, ra_error *err);
/* A device allocation recorded in t->ac (mt_alloc_failed reports the first
 * failure). */
void *mt_dalloc(cuda_model_train *t, size_t bytes, const char *what);
int mt_alloc_failed(cuda_model_train *t, ra_error *err);
/* EX_TEMPFAIL (no GPU memory) → EX_OSERR naming the batch; others as they are. */
int mt_oom_code(int rc, ra_error *err, int B, int T);
/* The batch is the one the buffers were made for; token ids and doc_start valid. */
int mt_check_batch(const cuda_model_train *t, const int32_t *tokens, const int32_t *doc_start, int B, int T,
                   ra_error *err);
/* Tokens, doc_start, labels, positions → d_ints; with by_token also the
 * rows grouped by token (for the embedding's backward). */
void mt_upload_inputs(cuda_model_train *t, const int32_t *tokens, const int32_t *doc_start, const int32_t *labels,
                      int by_token);
/* RoPE tables and document starts of the uploaded batch into bt. */
void mt_batch_tables(cuda_model_train *t, const int32_t *doc_start, cuda_block_batch *bt);

#endif

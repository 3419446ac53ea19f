/* Prefill and decode throughput over a batch sweep (eval_speed.h). */
#include <math.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include "eval_speed.h"
#include "hybrid.h"
#include "rng.h"

#if RA_HAVE_CUDA && defined(__has_include)
#if __has_include("ops_cuda.h")
#include "ops_cuda.h"
#define RA_SPEED_CUDA_MEM 1
#endif
#endif

double eval_speed_cpu_bytes(const ra_model *m, int B, int T_max) {
    const hf_config *c = &m->cfg;
    double n = (double)B * T_max, D = c->hidden_size, hd = c->head_dim;
    /* forward activations (lib/forward.h ra_forward_state and the hybrid
     * mixer's buffers, generously), the logits, the decode state in fp32 */
    double acts = n * 4 * (12 * D + 3 * c->num_heads * hd + 2 * c->num_kv_heads * hd + 2 * c->intermediate_size);
    ra_state_sizes s = ra_model_state_sizes(m);
    double state = 4 * ((double)s.kv_values_per_token * n + (double)B * (s.ssm_state_values + s.conv_state_values));
    return acts + state + (double)B * c->vocab_size * 4 * 2;
}

static double default_limit(void) {
    long pages = sysconf(_SC_AVPHYS_PAGES), size = sysconf(_SC_PAGESIZE);
    return pages > 0 && size > 0 ? 0.5 * (double)pages * size : 1e9;
}

static double peak_rss(void) {
    struct rusage u;
    return getrusage(RUSAGE_SELF, &u) == 0 ? (double)u.ru_maxrss * 1024 : NAN;
}

/* Device memory in use (cudaMemGetInfo: total − free, the whole device), or
 * NAN on the CPU and in builds without CUDA. */
static double device_used(ra_device d) {
#ifdef RA_SPEED_CUDA_MEM
    if (d == RA_DEVICE_CUDA) {
        size_t free_b = 0, total_b = 0;
        cuda_mem_info(&free_b, &total_b);
        return (double)total_b - (double)free_b;
    }
#endif
    (void)d;
    return NAN;
}

static const char *gpu_note(double bytes) {
    static char buf[64];
    snprintf(buf, sizeof buf, ", peak GPU memory %.2f GiB", bytes / (1024.0 * 1024 * 1024));
    return buf;
}

/* One batch size: prefill and decode timings; the device high-water mark
 * over samples after create, prefill and the last step, less base (the
 * decoder allocates everything it holds in create, and prefill's and the
 * steps' workspaces are kept, so these samples see the peak). */
static int run_batch(const eval_model *em, const ra_decode_backend *dec, const eval_speed_opts *o, int B, double base,
                     double *row, ra_error *err) {
    const ra_model *m = em->m;
    int V = m->cfg.vocab_size, P = o->prompt_len, G = o->gen_len;
    ra_rng rng;
    rng_seed(&rng, o->seed);
    int32_t *tok = malloc((size_t)B * P * sizeof(int32_t)), *next = malloc((size_t)B * sizeof(int32_t));
    float *logits = malloc((size_t)B * V * sizeof(float));
    if (!tok || !next || !logits) {
        free(tok), free(next), free(logits);
        return ra_fail(err, EX_UNAVAILABLE, "batch %d: out of memory", B);
    }
    for (int i = 0; i < B * P; i++) tok[i] = (int32_t)rng_below(&rng, (uint64_t)V);
    void *st = NULL;
    int rc = dec->create(m, B, P + G, &st, err);
    double used = rc ? NAN : device_used(em->device);
    double t0 = ra_now(), t1 = t0, t2 = t0;
    if (!rc) rc = dec->prefill(st, tok, P, NULL, logits, NULL, err);
    t1 = ra_now();
    if (!rc) used = fmax(used, device_used(em->device));
    for (int g = 0; g < G && !rc; g++) {
        for (int b = 0; b < B; b++) next[b] = (int32_t)rng_below(&rng, (uint64_t)V);
        rc = dec->step(st, next, logits, err);
    }
    t2 = ra_now();
    if (!rc) used = fmax(used, device_used(em->device));
    if (!rc) {
        row[0] = B;
        row[1] = (double)B * P / (t1 - t0);
        row[2] = G ? (double)B * G / (t2 - t1) : NAN;
        row[3] = (double)dec->state_bytes(st);
        row[4] = peak_rss();
        row[5] = used - base; /* NAN on the CPU */
    }
    if (st) dec->destroy(st);
    free(tok), free(next), free(logits);
    return rc;
}

int eval_speed(const eval_model *em, const ra_decode_backend *dec, const eval_speed_opts *o, eval_results *r,
               ra_error *err) {
    const char *cols[] = {"batch", "prefill_tok_s", "decode_tok_s", "state_bytes", "peak_rss_bytes", "peak_gpu_bytes"};
    char title[128];
    snprintf(title, sizeof title, "Speed on %s (prompt %d, %d decode steps)", ra_device_name(em->device),
             o->prompt_len, o->gen_len);
    eval_table *t = eval_table_add(r, "speed", title, 6, cols);
    double limit = o->mem_limit > 0 ? o->mem_limit : default_limit();
    double base = device_used(em->device); /* before the first decoder: the CUDA context and anything else */
    int last = 0;
    for (int B = 1; B <= o->max_batch; B *= 2) {
        if (em->device == RA_DEVICE_CPU && eval_speed_cpu_bytes(em->m, B, o->prompt_len + o->gen_len) > limit) {
            if (!ra_progress_quiet)
                fprintf(stderr, "%s: speed: batch %d would exceed the memory limit (%.3g bytes); stopping\n",
                        ra_progname, B, limit);
            break;
        }
        double row[6];
        int rc = run_batch(em, dec, o, B, base, row, err);
        if (rc == EX_UNAVAILABLE && last > 0) { /* out of device memory: the sweep ends here */
            if (!ra_progress_quiet) fprintf(stderr, "%s: speed: batch %d: %s; stopping\n", ra_progname, B, err->msg);
            *err = (ra_error){0};
            break;
        }
        if (rc) return rc;
        if (!ra_progress_quiet)
            fprintf(stderr, "%s: speed: batch %d: prefill %.1f tok/s, decode %.1f tok/s%s\n", ra_progname, B, row[1],
                    row[2], isnan(row[5]) ? "" : gpu_note(row[5]));
        eval_table_row(t, row);
        eval_metric(r, row[1], "speed_b%d_prefill_tok_s", B);
        eval_metric(r, row[2], "speed_b%d_decode_tok_s", B);
        if (!isnan(row[5])) eval_metric(r, row[5], "speed_b%d_peak_gpu_bytes", B);
        last = B;
        if (B > o->max_batch / 2) break; /* B·2 would overflow max_batch (and int) */
    }
    if (last == 0)
        return ra_fail(err, EX_UNAVAILABLE, "speed: not even batch 1 fits (memory limit %.3g bytes)", limit);
    eval_metric(r, last, "speed_max_batch");
    return 0;
}

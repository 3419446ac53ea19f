/* RA_TRAIN_PROFILE (kernels/train_profile.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.cuh"
#include "ops_cuda.h"
#include "train_profile.h"

#define PROF_EVENTS 32768
#define PROF_LABELS 128

typedef struct {
    const char *label;
    double ms;
    long count;
} prof_row;

static int prof_state = -1; /* -1 unknown, 0 off, 1 on */
static cudaEvent_t ev[PROF_EVENTS];
static const char *ev_label[PROF_EVENTS];
static int n_ev, n_created;
static prof_row rows[PROF_LABELS];
static int n_rows;
static long steps;

extern "C" int train_prof_on(void) {
    if (prof_state < 0) {
        const char *e = getenv("RA_TRAIN_PROFILE");
        prof_state = e && *e && strcmp(e, "0") != 0;
    }
    return prof_state;
}

static prof_row *row_of(const char *label) {
    for (int i = 0; i < n_rows; i++)
        if (rows[i].label == label || !strcmp(rows[i].label, label)) return &rows[i];
    if (n_rows == PROF_LABELS) return &rows[PROF_LABELS - 1];
    rows[n_rows].label = label;
    return &rows[n_rows++];
}

extern "C" void train_prof_collect(void) {
    if (!train_prof_on() || n_ev < 2) return;
    CUDA_CHECK(cudaEventSynchronize(ev[n_ev - 1]));
    for (int i = 1; i < n_ev; i++) {
        float ms = 0;
        CUDA_CHECK(cudaEventElapsedTime(&ms, ev[i - 1], ev[i]));
        prof_row *r = row_of(ev_label[i]);
        r->ms += ms, r->count++;
    }
    /* the last event starts the next interval */
    cudaEvent_t last = ev[n_ev - 1];
    ev[n_ev - 1] = ev[0], ev[0] = last;
    ev_label[0] = ev_label[n_ev - 1];
    n_ev = 1;
}

extern "C" void train_prof_mark(const char *label) {
    if (!train_prof_on()) return;
    if (n_ev == PROF_EVENTS) { /* full: read what we have (this synchronises) */
        train_prof_collect();
    }
    if (n_ev == n_created) CUDA_CHECK(cudaEventCreate(&ev[n_created++]));
    CUDA_CHECK(cudaEventRecord(ev[n_ev], ra_cuda_stream));
    ev_label[n_ev++] = label;
}

static int warmup_dropped;

/* The first step's phases are dropped: they carry one-time costs (lazy
 * loading of cuBLAS's kernels, plans), about 150 ms in a 230 ms 1B step,
 * which would be charged to whichever phase first ran each kernel. */
extern "C" void train_prof_step(void) {
    if (!train_prof_on()) return;
    if (!warmup_dropped) {
        warmup_dropped = 1, n_rows = 0;
        memset(rows, 0, sizeof rows);
        return;
    }
    steps++;
}

static int by_ms(const void *a, const void *b) {
    double x = ((const prof_row *)a)->ms, y = ((const prof_row *)b)->ms;
    return x < y ? 1 : x > y ? -1 : 0;
}

extern "C" void train_prof_report(const char *title) {
    if (!train_prof_on()) return;
    /* no closing mark: after the last step's last phase comes the run's output, not step time */
    train_prof_collect();
    double total = 0;
    for (int i = 0; i < n_rows; i++) total += rows[i].ms;
    qsort(rows, (size_t)n_rows, sizeof *rows, by_ms);
    long s = steps > 0 ? steps : 1;
    fprintf(stderr, "RA_TRAIN_PROFILE %s: %ld steps after the first, %.1f ms in all, %.2f ms per step\n", title, steps,
            total, total / s);
    fprintf(stderr, "%-44s %10s %9s %6s %8s\n", "phase", "total ms", "ms/step", "%", "calls");
    for (int i = 0; i < n_rows; i++)
        fprintf(stderr, "%-44s %10.1f %9.2f %6.1f %8ld\n", rows[i].label, rows[i].ms, rows[i].ms / s,
                total > 0 ? 100.0 * rows[i].ms / total : 0.0, rows[i].count);
    fprintf(stderr, "cuBLASLt plans made so far (cache misses): %ld\n", cuda_linear_plan_misses());
    memset(rows, 0, sizeof rows);
    n_rows = 0, steps = 0, n_ev = 0, warmup_dropped = 0;
}

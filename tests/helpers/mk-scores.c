/* Test helper: write a `scores` ra stream (formats/scores.md) from numbers
 * on stdin, so the ra-rank suite can build exact inputs without a model.
 *
 *   mk-scores -L LAYERS -H HEADS [-G KV_HEADS] [-d HEAD_DIM] [-i ID] [-k KIND]
 *             [--no-exact] [--attribution] -o OUT < values
 *
 * stdin: LAYERS*HEADS lines "acc_drop logprob_drop [exact]" in (layer, head)
 * order; "nan" is accepted.  -k writes another kind (for error tests). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "plan.h"

int main(int argc, char **argv) {
    ra_progname = "mk-scores";
    int L = 0, H = 0, G = 0, hd = 16, with_exact = 1, with_attr = 0;
    const char *id = "0123456789abcdef0123456789abcdef", *kind = "scores", *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--no-exact")) with_exact = 0;
        else if (!strcmp(a, "--attribution")) with_attr = 1;
        else if (!v) ra_die(64, "%s: missing value", a);
        else if (!strcmp(a, "-L")) L = atoi(v), i++;
        else if (!strcmp(a, "-H")) H = atoi(v), i++;
        else if (!strcmp(a, "-G")) G = atoi(v), i++;
        else if (!strcmp(a, "-d")) hd = atoi(v), i++;
        else if (!strcmp(a, "-i")) id = v, i++;
        else if (!strcmp(a, "-k")) kind = v, i++;
        else if (!strcmp(a, "-o")) out = v, i++;
        else ra_die(64, "unknown option %s", a);
    }
    if (L < 1 || H < 1 || !out) ra_die(64, "need -L, -H and -o");
    if (!G) G = H;
    int n = L * H;
    ra_scores s = {0};
    s.shape = (ra_teacher_shape){L, H, G, hd, H * hd};
    s.acc_drop = xmalloc(n * sizeof(float));
    s.logprob_drop = xmalloc(n * sizeof(float));
    s.exact = xmalloc(n);
    s.attribution = with_attr ? xmalloc(n * sizeof(float)) : NULL;
    char line[256];
    for (int i = 0; i < n; i++) {
        if (!fgets(line, sizeof line, stdin)) ra_die(65, "stdin: expected %d lines, got %d", n, i);
        int ex = 1;
        int got = sscanf(line, "%f %f %d", &s.acc_drop[i], &s.logprob_drop[i], &ex);
        if (got < 2) ra_die(65, "stdin line %d: expected 'acc logprob [exact]'", i + 1);
        s.exact[i] = (uint8_t)ex;
        if (with_attr) s.attribution[i] = s.logprob_drop[i];
    }
    if (!with_exact) {
        free(s.exact);
        s.exact = NULL;
    }
    json_t *config = json_pack("{s:s, s:i, s:i, s:i, s:i, s:i, s:i}", "model_type", "llama", "num_hidden_layers", L,
                               "num_attention_heads", H, "num_key_value_heads", G, "head_dim", hd, "hidden_size",
                               H * hd, "vocab_size", 100);
    json_t *meta = json_pack("{s:{s:s, s:o}, s:{s:i, s:i, s:i, s:s, s:s, s:s}, s:{s:f, s:f}, s:{s:i, s:i}}",
                             "teacher", "id", id, "config", config, "probe", "pairs", 5, "samples", 8, "seed", 1,
                             "words", "test", "score", "choice", "method", "exact", "baseline", "accuracy", 0.9,
                             "logprob", -1.0, "counts", "layers", L, "heads", H);
    ra_error err = {0};
    ra_writer *w = ra_writer_open(out, kind, meta, NULL, &err);
    if (!w) ra_die_error(&err);
    int64_t shape[2] = {L, H};
    if (ra_writer_tensor(w, "acc_drop", RA_F32, 2, shape, s.acc_drop, &err) ||
        ra_writer_tensor(w, "logprob_drop", RA_F32, 2, shape, s.logprob_drop, &err) ||
        (s.exact && ra_writer_tensor(w, "exact", RA_U8, 2, shape, s.exact, &err)) ||
        (s.attribution && ra_writer_tensor(w, "attribution", RA_F32, 2, shape, s.attribution, &err)) ||
        ra_writer_close(w, NULL, &err))
        ra_die_error(&err);
    json_decref(meta);
    free(s.acc_drop);
    free(s.logprob_drop);
    free(s.exact);
    free(s.attribution);
    return 0;
}

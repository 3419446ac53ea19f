/* ra-rank: sort attention heads by their retrieval score and write the head
 * plan (DESIGN §2.3, formats/plan.md). */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "atomic_file.h"
#include "cli.h"
#include "plan.h"
#include "rng.h"

static const char usage[] =
    "Usage: ra-rank (--top K | --fraction F | --threshold T | --random K) [options] [SCORES] > plan.ra\n"
    "Sort the heads of a scores stream (ra-probe) and write a head plan.\n"
    "\n"
    "  --top K          keep the K best heads (0 = a pure-SSM plan)\n"
    "  --fraction F     keep round(F x all heads), 0 <= F <= 1\n"
    "  --threshold T    keep every head whose score is >= T\n"
    "  --random K       control: keep K heads chosen uniformly at random (scores ignored)\n"
    "  --seed S         seed of --random (default 1)\n"
    "  --by acc|logprob score to sort by: accuracy drop (default) or log-prob drop\n"
    "  --table          print the ranking (rank layer head acc_drop logprob_drop) on stdout;\n"
    "                   the plan is then written only with -o\n"
    "  --plot FILE      draw a layer x head heatmap of the scores, kept heads marked\n"
    "                   (FILE ending in .png or .svg; needs gnuplot)\n"
    "  -o FILE          write the plan to FILE (default stdout)\n"
    "  -q               no summary on stderr\n"
    "  --help, --version\n"
    "\n"
    "SCORES defaults to stdin.  Heads measured exactly rank before heads only\n"
    "estimated (hybrid probes); ties break by the other score, then by layer and head.\n";

typedef enum { SEL_NONE, SEL_TOP, SEL_FRACTION, SEL_THRESHOLD, SEL_RANDOM } selection_mode;

typedef struct rank_opts {
    selection_mode mode;
    long long top; /* K of --top and --random */
    long long seed;
    int have_seed;
    double fraction, threshold;
    int by_logprob;
    int table;
    const char *plot, *out, *in;
} rank_opts;

static const char *mode_name[] = {"", "top", "fraction", "threshold", "random"};

static void parse_args(int argc, char **argv, rank_opts *o) {
    memset(o, 0, sizeof *o);
    o->in = "-";
    o->seed = 1;
    int have_in = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_value = i + 1 < argc;
#define NEED_VALUE() \
    if (!has_value) ra_usage_error("%s: missing value", a)
        selection_mode m = SEL_NONE;
        if (!strcmp(a, "--top")) m = SEL_TOP;
        else if (!strcmp(a, "--fraction")) m = SEL_FRACTION;
        else if (!strcmp(a, "--threshold")) m = SEL_THRESHOLD;
        else if (!strcmp(a, "--random")) m = SEL_RANDOM;
        if (m != SEL_NONE) {
            NEED_VALUE();
            if (o->mode != SEL_NONE)
                ra_usage_error("give exactly one of --top, --fraction, --threshold, --random (--%s and %s)",
                               mode_name[o->mode], a);
            o->mode = m;
            const char *v = argv[++i];
            if (m == SEL_TOP || m == SEL_RANDOM) o->top = ra_parse_int(a, v, 0, 1LL << 30);
            else if (m == SEL_FRACTION) o->fraction = ra_parse_double(a, v, 0, 1);
            else o->threshold = ra_parse_double(a, v, -1e30, 1e30);
        } else if (!strcmp(a, "--by")) {
            NEED_VALUE();
            const char *v = argv[++i];
            if (!strcmp(v, "acc")) o->by_logprob = 0;
            else if (!strcmp(v, "logprob")) o->by_logprob = 1;
            else ra_usage_error("--by: '%s', expected acc or logprob", v);
        } else if (!strcmp(a, "--seed")) {
            NEED_VALUE();
            o->seed = ra_parse_int(a, argv[++i], 0, LLONG_MAX);
            o->have_seed = 1;
        } else if (!strcmp(a, "--table")) {
            o->table = 1;
        } else if (!strcmp(a, "--plot")) {
            NEED_VALUE();
            o->plot = argv[++i];
        } else if (!strcmp(a, "-o")) {
            NEED_VALUE();
            o->out = argv[++i];
        } else if (!strcmp(a, "-q")) {
            ra_progress_quiet = 1;
        } else if (a[0] == '-' && a[1]) {
            ra_usage_error("unknown option '%s'", a);
        } else {
            if (have_in) ra_usage_error("more than one scores file ('%s' and '%s')", o->in, a);
            o->in = a;
            have_in = 1;
        }
#undef NEED_VALUE
    }
    if (o->mode == SEL_NONE) ra_usage_error("give exactly one of --top K, --fraction F, --threshold T, --random K");
    if (o->have_seed && o->mode != SEL_RANDOM) ra_usage_error("--seed applies only to --random");
    if (o->plot) {
        const char *dot = strrchr(o->plot, '.');
        if (!dot || (strcmp(dot, ".png") && strcmp(dot, ".svg")))
            ra_usage_error("--plot: '%s' must end in .png or .svg", o->plot);
    }
}

/* ---------------------------------------------------------------- ranking */

typedef struct rank_ctx {
    const ra_scores *s;
    int by_logprob;
} rank_ctx;

static float primary(const rank_ctx *c, int i) { return c->by_logprob ? c->s->logprob_drop[i] : c->s->acc_drop[i]; }
static float secondary(const rank_ctx *c, int i) { return c->by_logprob ? c->s->acc_drop[i] : c->s->logprob_drop[i]; }

/* Descending, NaN (not measured) last. */
static int cmp_desc(float a, float b) {
    if (isnan(a) || isnan(b)) return isnan(a) - isnan(b);
    return (a < b) - (a > b);
}

static int cmp_heads(const void *pa, const void *pb, void *ctx) {
    const rank_ctx *c = ctx;
    int a = *(const int *)pa, b = *(const int *)pb, r;
    if (c->s->exact[a] != c->s->exact[b]) return c->s->exact[b] - c->s->exact[a];
    if ((r = cmp_desc(primary(c, a), primary(c, b)))) return r;
    if ((r = cmp_desc(secondary(c, a), secondary(c, b)))) return r;
    return (a > b) - (a < b); /* index = layer * heads + head: (layer, head) ascending */
}

/* --random: the first k of a seeded Fisher-Yates permutation of all heads,
 * so every k-subset is equally likely and a seed gives the same heads on
 * every machine (rng_below is integer-only). */
static void select_random(long long seed, int all, int k, uint8_t *keep) {
    int *perm = xmalloc((size_t)all * sizeof(int));
    for (int i = 0; i < all; i++) perm[i] = i;
    ra_rng r;
    rng_seed(&r, (uint64_t)seed);
    for (int i = 0; i < k; i++) {
        int j = i + (int)rng_below(&r, (uint64_t)(all - i));
        int t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
        keep[perm[i]] = 1;
    }
    free(perm);
}

/* keep[] from the selection; order[] is the ranking. */
static int select_heads(const rank_opts *o, const ra_scores *s, const int *order, uint8_t *keep) {
    int all = s->shape.layers * s->shape.heads, kept = 0;
    rank_ctx c = {s, o->by_logprob};
    if (all <= 0) return 0;
    memset(keep, 0, (size_t)all);
    if (o->mode == SEL_THRESHOLD) {
        for (int i = 0; i < all; i++)
            if (primary(&c, i) >= o->threshold) keep[i] = 1, kept++;
        return kept;
    }
    if (o->mode == SEL_RANDOM) {
        select_random(o->seed, all, (int)o->top, keep);
        return (int)o->top;
    }
    int k = o->mode == SEL_TOP ? (int)o->top : (int)llround(o->fraction * all);
    for (int r = 0; r < k; r++) keep[order[r]] = 1;
    return k;
}

/* ---------------------------------------------------------------- outputs */

static void print_table(const ra_scores *s, const int *order) {
    int all = s->shape.layers * s->shape.heads;
    printf("rank layer head acc_drop logprob_drop\n");
    for (int r = 0; r < all; r++) {
        int i = order[r];
        printf("%d %d %d %.6g %.6g\n", r + 1, i / s->shape.heads, i % s->shape.heads, s->acc_drop[i],
               s->logprob_drop[i]);
    }
    if (fflush(stdout) != 0 || ferror(stdout)) ra_die(EX_IOERR, "stdout: write failed");
}

static int in_path(const char *prog) {
    const char *path = getenv("PATH");
    if (!path) return 0;
    char *dirs = xstrdup(path), *save = NULL, buf[4096];
    int found = 0;
    for (char *d = strtok_r(dirs, ":", &save); d && !found; d = strtok_r(NULL, ":", &save)) {
        snprintf(buf, sizeof buf, "%s/%s", *d ? d : ".", prog);
        found = access(buf, X_OK) == 0;
    }
    free(dirs);
    return found;
}

/* A gnuplot string literal in single quotes ('' escapes a quote). */
static void gp_quote(FILE *f, const char *s) {
    fputc('\'', f);
    for (; *s; s++) {
        if (*s == '\'') fputc('\'', f);
        fputc(*s, f);
    }
    fputc('\'', f);
}

static void plot_heatmap(const char *path, const ra_scores *s, const uint8_t *keep, int by_logprob) {
    if (!in_path("gnuplot"))
        ra_die(EX_UNAVAILABLE, "--plot needs gnuplot, which is not on PATH (Debian: apt-get install gnuplot-nox)");
    ra_error err = {0};
    ra_atomic_file af; /* reserves a temporary name beside the target; gnuplot writes it */
    if (ra_atomic_open(&af, path, &err)) ra_die_error(&err);
    int svg = strcmp(strrchr(path, '.'), ".svg") == 0;
    int L = s->shape.layers, H = s->shape.heads;
    int width = 200 + 20 * H, height = 140 + 20 * L;
    width = width < 640 ? 640 : width > 3000 ? 3000 : width;
    height = height < 480 ? 480 : height > 3000 ? 3000 : height;
    FILE *gp = popen("gnuplot", "w");
    if (!gp) ra_die(EX_OSERR, "cannot start gnuplot");
    fprintf(gp, "set terminal %s size %d,%d\nset output ", svg ? "svg" : "pngcairo", width, height);
    gp_quote(gp, af.tmp_path ? af.tmp_path : af.path);
    fprintf(gp, "\n$scores << EOD\n");
    for (int l = 0; l < L; l++) {
        for (int h = 0; h < H; h++) {
            float v = by_logprob ? s->logprob_drop[l * H + h] : s->acc_drop[l * H + h];
            fprintf(gp, isnan(v) ? "%sNaN" : "%s%.6g", h ? " " : "", v);
        }
        fputc('\n', gp);
    }
    fprintf(gp, "EOD\n$kept << EOD\n");
    int kept = 0;
    for (int i = 0; i < L * H; i++)
        if (keep[i]) fprintf(gp, "%d %d\n", i % H, i / H), kept++;
    fprintf(gp, "EOD\n"
                "set title '%s drop per head (%d kept, marked x)'\n"
                "set xlabel 'head'\nset ylabel 'layer'\n"
                "set xrange [-0.5:%g]\nset yrange [-0.5:%g]\nset xtics 0,%d\nset ytics 0,%d\n"
                "set palette rgb 33,13,10\nset tics out\n",
            by_logprob ? "log-prob" : "accuracy", kept, H - 0.5, L - 0.5, H > 16 ? H / 16 : 1, L > 16 ? L / 16 : 1);
    fprintf(gp, "plot $scores matrix with image notitle%s\n",
            kept ? ", $kept using ($1):($2) with points pt 2 ps 1.2 lw 2 lc rgb 'black' notitle" : "");
    fprintf(gp, "unset output\n");
    int status = pclose(gp);
    if (status != 0) {
        ra_atomic_abort(&af);
        ra_die(EX_SOFTWARE, "%s: gnuplot failed (status %d)", path, status);
    }
    /* gnuplot wrote the temporary file by name; our own handle is empty, so
     * committing it only renames the finished plot into place. */
    if (ra_atomic_commit(&af, &err)) ra_die_error(&err);
}

static json_t *selection_json(const rank_opts *o, const ra_scores *s) {
    json_t *sel = json_pack("{s:s, s:s, s:s}", "by", o->by_logprob ? "logprob" : "acc", "mode", mode_name[o->mode],
                            "scores", s->content_id);
    json_object_set_new(sel, "value",
                        o->mode == SEL_TOP || o->mode == SEL_RANDOM ? json_integer(o->top)
                        : o->mode == SEL_FRACTION ? json_real(o->fraction)
                                                  : json_real(o->threshold));
    if (o->mode == SEL_RANDOM) json_object_set_new(sel, "seed", json_integer(o->seed));
    return sel;
}

int main(int argc, char **argv) {
    ra_cli_init(argc, argv, "ra-rank", usage);
    rank_opts o;
    parse_args(argc, argv, &o);
    ra_error err = {0};
    const char *plan_path = o.out ? o.out : (o.table ? NULL : "-");
    if (plan_path && !strcmp(plan_path, "-") && ra_check_binary_stdout(&err)) ra_die_error(&err);

    ra_scores s;
    if (ra_scores_load(o.in, &s, &err)) ra_die_error(&err);
    int all = s.shape.layers * s.shape.heads;
    if ((o.mode == SEL_TOP || o.mode == SEL_RANDOM) && o.top > all)
        ra_usage_error("--%s %lld: the teacher has only %d heads (%d layers x %d)", mode_name[o.mode], o.top, all, s.shape.layers,
                       s.shape.heads);

    int *order = xmalloc((size_t)all * sizeof(int));
    for (int i = 0; i < all; i++) order[i] = i;
    rank_ctx ctx = {&s, o.by_logprob};
    qsort_r(order, (size_t)all, sizeof(int), cmp_heads, &ctx);

    ra_plan p = {0};
    memcpy(p.teacher_id, s.teacher_id, sizeof p.teacher_id);
    p.teacher_config = json_deep_copy(s.teacher_config);
    p.shape = s.shape;
    p.keep = xmalloc((size_t)all);
    p.kept = select_heads(&o, &s, order, p.keep);

    if (o.table) print_table(&s, order);
    if (o.plot) plot_heatmap(o.plot, &s, p.keep, o.by_logprob);
    if (plan_path) {
        json_t *sel = selection_json(&o, &s);
        json_t *prov = json_pack("{s:s, s:s, s:O, s:{s:s}}", "tool", "ra-rank", "version", RA_VERSION,
                                 "parameters", sel, "inputs", "scores", s.content_id);
        if (ra_plan_write(plan_path, &p, sel, prov, NULL, &err)) ra_die_error(&err);
        json_decref(sel);
        json_decref(prov);
    }
    char summary_by[64];
    if (o.mode == SEL_RANDOM) snprintf(summary_by, sizeof summary_by, "at random (seed %lld)", o.seed);
    else snprintf(summary_by, sizeof summary_by, "by %s", o.by_logprob ? "logprob" : "acc");
    if (!ra_progress_quiet)
        fprintf(stderr,
                "ra-rank: kept %d of %d heads (%.2f%%) %s; KV cache %lld bytes/token in bf16 "
                "(%lld with --share-kv; teacher %lld)\n",
                p.kept, all, all ? 100.0 * p.kept / all : 0.0, summary_by,
                (long long)ra_kv_bytes_per_token(&p.shape, p.keep),
                (long long)ra_kv_bytes_per_token_shared(&p.shape, p.keep),
                (long long)s.shape.layers * s.shape.kv_heads * 2 * s.shape.head_dim * 2);
    ra_plan_free(&p);
    ra_scores_free(&s);
    free(order);
    return 0;
}

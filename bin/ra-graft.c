/* ra-graft: build the hybrid student from a teacher and a head plan
 * (DESIGN §2.4; the math and the inits live in lib/hybrid_graft.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atomic_file.h"
#include "cli.h"
#include "hybrid.h"
#include "model_init.h"

static const char usage[] =
    "Usage: ra-graft -m TEACHER -p PLAN [options] > student.ra\n"
    "       ra-graft --random-init CONFIG [--seed S] [--dtype T] > model.ra\n"
    "Build a Transformer-SSM hybrid student: the plan's heads stay attention, every\n"
    "other head becomes a DiscreteMamba2 head; the rest is copied from the teacher.\n"
    "\n"
    "  -m TEACHER          Hugging Face directory or model stream\n"
    "  -p PLAN             head plan (ra-rank) made for this teacher\n"
    "  --layout L          routed (default): SSM heads take the dropped heads' slots\n"
    "                      of o_proj; parallel: a full-width SSM beside the kept heads\n"
    "  --adapter A         routed only: static (default) or none\n"
    "  --d-state N         SSM state size (default head_dim)\n"
    "  --qk-groups G       B/C groups per layer (default one per SSM head)\n"
    "  --init I            mohawk (default), attention (N = head_dim) or svd (N <= head_dim)\n"
    "  --seed S            initialisation seed (default 0)\n"
    "  --random-init CONFIG  instead of -m/-p: a teacher-shaped model of CONFIG\n"
    "                      (config.json or its directory) with random weights\n"
    "                      (matrices normal(0, 0.02), norms 1, biases 0), to\n"
    "                      pretrain from scratch with ra-mohawk3 --loss ce\n"
    "  --dtype T           f32 (default), bf16 or f16: how the weights are stored\n"
    "  -o FILE             write the student to FILE (default stdout)\n"
    "  -q                  no summary on stderr\n"
    "  --help, --version\n";

typedef struct graft_args {
    const char *teacher, *plan, *out, *random_init;
    ra_graft_opts g;
    int adapter_given;
    ra_dtype dtype;
} graft_args;

static void parse_args(int argc, char **argv, graft_args *a) {
    memset(a, 0, sizeof *a);
    a->out = "-";
    a->dtype = RA_F32;
    a->g.layout = RA_LAYOUT_ROUTED;
    a->g.init = RA_INIT_MOHAWK;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int takes_value = strcmp(f, "-q") != 0;
        if (takes_value && f[0] == '-' && !v) ra_usage_error("%s: missing value", f);
        if (!strcmp(f, "-m")) a->teacher = v;
        else if (!strcmp(f, "-p")) a->plan = v;
        else if (!strcmp(f, "--random-init")) a->random_init = v;
        else if (!strcmp(f, "-o")) a->out = v;
        else if (!strcmp(f, "-q")) ra_progress_quiet = 1;
        else if (!strcmp(f, "--layout")) {
            if (ra_layout_parse(v, &a->g.layout)) ra_usage_error("--layout: '%s', expected routed or parallel", v);
        } else if (!strcmp(f, "--adapter")) {
            if (ra_adapter_parse(v, &a->g.adapter) || a->g.adapter == RA_ADAPTER_LINEAR)
                ra_usage_error("--adapter: '%s', expected static or none", v);
            a->adapter_given = 1;
        } else if (!strcmp(f, "--d-state")) a->g.d_state = (int)ra_parse_int(f, v, 1, 65536);
        else if (!strcmp(f, "--qk-groups")) a->g.qk_groups = (int)ra_parse_int(f, v, 1, 65536);
        else if (!strcmp(f, "--init")) {
            if (ra_ssm_init_parse(v, &a->g.init)) ra_usage_error("--init: '%s', expected mohawk, attention or svd", v);
        } else if (!strcmp(f, "--seed")) a->g.seed = (uint64_t)ra_parse_int(f, v, 0, INT64_MAX);
        else if (!strcmp(f, "--dtype")) {
            if (ra_dtype_parse(v, &a->dtype) || !(a->dtype == RA_F32 || a->dtype == RA_BF16 || a->dtype == RA_F16))
                ra_usage_error("--dtype: '%s', expected f32, bf16 or f16", v);
        } else if (f[0] == '-') ra_usage_error("unknown option '%s'", f);
        else ra_usage_error("unexpected argument '%s'", f);
        if (takes_value) i++;
    }
    if (a->random_init) {
        if (a->teacher || a->plan) ra_usage_error("--random-init: takes no -m TEACHER or -p PLAN");
        return;
    }
    if (!a->teacher || !a->plan) ra_usage_error("need -m TEACHER and -p PLAN");
    if (a->g.layout == RA_LAYOUT_PARALLEL) {
        if (a->adapter_given)
            ra_usage_error("--adapter: the parallel layout has its own learned adapter; --adapter is for routed");
        a->g.adapter = RA_ADAPTER_LINEAR;
    } else if (!a->adapter_given) {
        a->g.adapter = RA_ADAPTER_STATIC;
    }
}

static json_t *parameters_json(const graft_args *a, const hf_config *c) {
    return json_pack("{s:s, s:s, s:i, s:i, s:s, s:I, s:s}", "layout", ra_layout_name(a->g.layout), "adapter",
                     ra_adapter_name(a->g.adapter), "d_state", a->g.d_state ? a->g.d_state : c->head_dim, "qk_groups",
                     a->g.qk_groups, "init", ra_ssm_init_name(a->g.init), "seed", (json_int_t)a->g.seed, "dtype",
                     ra_dtype_name(a->dtype));
}

static void print_summary(const ra_model *s, const ra_model *t, const char *id) {
    const hf_config *c = &s->cfg;
    const ra_hybrid_config *h = s->hybrid;
    ra_state_sizes ss = ra_model_state_sizes(s), ts = ra_model_state_sizes(t);
    int kept = 0;
    fprintf(stderr, "ra-graft: %s layout, adapter %s, d_state %d, qk_groups %d, init %s, seed %llu\n",
            ra_layout_name(h->layout), ra_adapter_name(h->adapter), h->d_state, h->qk_groups,
            ra_ssm_init_name(h->init), (unsigned long long)h->seed);
    fprintf(stderr, "ra-graft: parameters %lld (teacher %lld)\n", (long long)ra_model_param_count(s),
            (long long)ra_model_param_count(t));
    fprintf(stderr, "ra-graft: kept heads per layer:");
    for (int l = 0; l < c->num_layers; l++) {
        const ra_layer *L = &s->layers[l];
        fprintf(stderr, " %d:[", l);
        for (int i = 0; i < L->n_attn_heads; i++) fprintf(stderr, "%s%d", i ? "," : "", L->attn_heads[i]);
        fprintf(stderr, "]");
        kept += L->n_attn_heads;
    }
    fprintf(stderr, " (%d of %d heads)\n", kept, c->num_layers * c->num_heads);
    fprintf(stderr,
            "ra-graft: KV cache %lld bytes/token in bf16 (%lld with --share-kv; teacher %lld)\n"
            "ra-graft: SSM state %lld bytes/sequence in bf16 (%lld in fp32 as decode keeps it), conv state %lld\n",
            (long long)ss.kv_values_per_token * 2, (long long)ss.kv_values_shared * 2,
            (long long)ts.kv_values_per_token * 2, (long long)ss.ssm_state_values * 2,
            (long long)ss.ssm_state_values * 4, (long long)ss.conv_state_values * 2);
    if (id) fprintf(stderr, "ra-graft: student content id %s\n", id);
}

/* --random-init: a teacher-shaped model with random weights (lib/model_init.h). */
static int random_init(const graft_args *a) {
    ra_error err = {0};
    ra_model *m;
    if (ra_model_random_from_config(a->random_init, a->g.seed, RA_INIT_STD, &m, &err)) ra_die_error(&err);
    json_t *prov = json_pack("{s:s, s:s, s:{s:b, s:I, s:f, s:s}, s:{}}", "tool", "ra-graft", "version", RA_VERSION,
                             "parameters", "random_init", 1, "seed", (json_int_t)a->g.seed, "std", RA_INIT_STD,
                             "dtype", ra_dtype_name(a->dtype), "inputs");
    char id[RA_CONTENT_ID_LEN + 1];
    if (ra_model_write_stream(m, a->out, a->dtype, prov, id, &err)) ra_die_error(&err);
    if (!ra_progress_quiet)
        fprintf(stderr, "ra-graft: random-init model of %s: parameters %lld, seed %llu, content id %s\n",
                a->random_init, (long long)ra_model_param_count(m), (unsigned long long)a->g.seed, id);
    json_decref(prov);
    ra_model_free(m);
    return 0;
}

int main(int argc, char **argv) {
    ra_cli_init(argc, argv, "ra-graft", usage);
    graft_args a;
    parse_args(argc, argv, &a);
    ra_error err = {0};
    if (!strcmp(a.out, "-") && ra_check_binary_stdout(&err)) ra_die_error(&err);
    if (a.random_init) return random_init(&a);

    ra_plan plan;
    if (ra_plan_load(a.plan, &plan, &err)) ra_die_error(&err);
    ra_model *t;
    if (ra_model_load(a.teacher, &t, &err)) ra_die_error(&err);
    if (t->warning[0] && !ra_progress_quiet) fprintf(stderr, "ra-graft: %s\n", t->warning);
    if (t->hybrid) ra_die(EX_DATAERR, "%s: already a hybrid student; -m takes the teacher", a.teacher);
    ra_teacher_shape shape = ra_teacher_shape_from_config(&t->cfg);
    if (ra_plan_check_teacher(&plan, a.plan, a.teacher, t->content_id, &shape, &err)) ra_die_error(&err);

    ra_model *s;
    if (ra_graft(t, &plan, &a.g, &s, &err)) {
        if (err.code == EX_USAGE) ra_usage_error("%s", err.msg);
        ra_die_error(&err);
    }
    json_t *params = parameters_json(&a, &t->cfg);
    json_t *prov = json_pack("{s:s, s:s, s:O, s:{s:s, s:s}}", "tool", "ra-graft", "version", RA_VERSION, "parameters",
                             params, "inputs", "teacher", t->content_id, "plan", plan.content_id);
    char id[RA_CONTENT_ID_LEN + 1];
    if (ra_model_write_stream(s, a.out, a.dtype, prov, id, &err)) ra_die_error(&err);
    if (!ra_progress_quiet) print_summary(s, t, id);
    json_decref(params);
    json_decref(prov);
    ra_model_free(s);
    ra_model_free(t);
    ra_plan_free(&plan);
    return 0;
}

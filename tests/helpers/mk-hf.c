/* mk-hf: write a tiny random Hugging Face checkpoint (config.json + safetensors)
 * for tests.  Deterministic for a given seed.
 *
 *   build/tests/mk-hf [options] DIR
 *     --model llama|qwen2   (llama)       --dtype bf16|f16|f32 (bf16)
 *     --layers N (2)  --hidden D (32)  --heads H (4)  --kv-heads K (2)
 *     --head-dim hd (D/H, written to config.json only when given)
 *     --inter I (48)  --vocab V (64)  --seed S (1)
 *     --tied               tie_word_embeddings (no lm_head.weight)
 *     --attention-bias     Llama q/k/v/o biases
 *     --llama3-rope        llama3 rope scaling (factor 8, 1, 4, 32)
 *     --rope-parameters    put RoPE settings under rope_parameters (newer transformers)
 *     --shards N           N shard files + model.safetensors.index.json
 *     --shuffle            store tensors in a scrambled order inside the files
 *     --extra NAME         add an extra f32 [3] tensor NAME
 *     --ra FILE            also write the model as a ra stream (tensors in the
 *                          order above, meta {"config": the config.json object})
 *     --kind KIND          kind of that stream (model)
 *     --hybrid             add meta.hybrid (a sample head plan) to that stream
 *     --no-meta-config     leave meta.config out of that stream
 *     --split-bytes N      split that stream's tensors into parts of N bytes
 *
 * Weights: uniform in ±0.15 (norm weights 1 ± 0.15), never all zero. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "atomic_file.h"
#include "cli.h"
#include "safetensors.h"
#include "stream.h"

typedef struct {
    char name[128];
    int ndim;
    int64_t shape[2];
    int is_norm;
    void *data;
} mk_tensor;

static uint64_t rng = 1;
static float next_uniform(void) { /* xorshift64*, uniform in [-1, 1) */
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (float)(((rng * 0x2545F4914F6CDD1Dull) >> 40) * (1.0 / 8388608.0) - 1.0);
}

static int n_t;
static mk_tensor ts[4096];

static void add(const char *name, int ndim, int64_t a, int64_t b, int is_norm) {
    if (n_t == (int)(sizeof ts / sizeof ts[0])) ra_die(EX_USAGE, "too many tensors");
    mk_tensor *t = &ts[n_t++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->shape[0] = a;
    t->shape[1] = b;
    t->is_norm = is_norm;
}

static const char *USAGE =
    "Usage: mk-hf [--model llama|qwen2] [--dtype bf16|f16|f32] [--layers N] [--hidden D] [--heads H]\n"
    "             [--kv-heads K] [--head-dim HD] [--inter I] [--vocab V] [--seed S] [--tied]\n"
    "             [--attention-bias] [--llama3-rope] [--rope-parameters] [--shards N] [--shuffle]\n"
    "             [--extra NAME] [--ra FILE [--kind KIND] [--hybrid] [--no-meta-config]\n"
    "             [--split-bytes N]] DIR\n"
    "Write a tiny random Hugging Face checkpoint for tests.\n";

int main(int argc, char **argv) {
    ra_cli_init(argc, argv, "mk-hf", USAGE);
    const char *model = "llama", *dtype_s = "bf16", *dir = NULL, *extra = NULL, *ra_path = NULL, *kind = "model";
    int hybrid = 0, no_meta_config = 0;
    long long split_bytes = 0;
    int layers = 2, D = 32, H = 4, Hkv = 2, hd = 0, I = 48, V = 64, tied = 0, abias = 0, llama3 = 0, rope_params = 0;
    int shards = 1, shuffle = 0;
    long long seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define INTARG(flag, var, lo, hi)                                        \
    if (!strcmp(a, flag)) {                                              \
        if (!v) ra_usage_error("%s needs a value", flag);                \
        var = (int)ra_parse_int(flag, v, lo, hi);                        \
        i++;                                                             \
        continue;                                                        \
    }
        INTARG("--layers", layers, 1, 64)
        INTARG("--hidden", D, 1, 4096)
        INTARG("--heads", H, 1, 256)
        INTARG("--kv-heads", Hkv, 1, 256)
        INTARG("--head-dim", hd, 2, 1024)
        INTARG("--inter", I, 1, 16384)
        INTARG("--vocab", V, 1, 1 << 20)
        INTARG("--shards", shards, 1, 64)
        if (!strcmp(a, "--seed") && v) { seed = ra_parse_int(a, v, 0, 1LL << 62); i++; continue; }
        if (!strcmp(a, "--model") && v) { model = v; i++; continue; }
        if (!strcmp(a, "--dtype") && v) { dtype_s = v; i++; continue; }
        if (!strcmp(a, "--extra") && v) { extra = v; i++; continue; }
        if (!strcmp(a, "--ra") && v) { ra_path = v; i++; continue; }
        if (!strcmp(a, "--kind") && v) { kind = v; i++; continue; }
        if (!strcmp(a, "--hybrid")) { hybrid = 1; continue; }
        if (!strcmp(a, "--split-bytes") && v) { split_bytes = ra_parse_int(a, v, 1, 1LL << 40); i++; continue; }
        if (!strcmp(a, "--no-meta-config")) { no_meta_config = 1; continue; }
        if (!strcmp(a, "--tied")) { tied = 1; continue; }
        if (!strcmp(a, "--attention-bias")) { abias = 1; continue; }
        if (!strcmp(a, "--llama3-rope")) { llama3 = 1; continue; }
        if (!strcmp(a, "--rope-parameters")) { rope_params = 1; continue; }
        if (!strcmp(a, "--shuffle")) { shuffle = 1; continue; }
        if (a[0] == '-' || dir) ra_usage_error("unexpected argument '%s'", a);
        dir = a;
    }
    if (!dir) ra_usage_error("no output directory");
    int qwen = !strcmp(model, "qwen2");
    if (!qwen && strcmp(model, "llama")) ra_usage_error("--model: '%s' is not llama or qwen2", model);
    ra_dtype dt;
    if (ra_dtype_parse(dtype_s, &dt) || !ra_dtype_is_float(dt) || dt == RA_F64)
        ra_usage_error("--dtype: '%s' is not bf16, f16 or f32", dtype_s);
    int head_dim = hd ? hd : D / H;
    rng = (uint64_t)seed * 0x9E3779B97F4A7C15ull + 1;
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) ra_die(EX_CANTCREAT, "%s: %s", dir, strerror(errno));

    /* tensors in the order transformers lists them */
    char nm[128];
    add("model.embed_tokens.weight", 2, V, D, 0);
    for (int l = 0; l < layers; l++) {
        const char *proj[4] = {"q", "k", "v", "o"};
        int64_t rows[4] = {(int64_t)H * head_dim, (int64_t)Hkv * head_dim, (int64_t)Hkv * head_dim, D};
        int64_t cols[4] = {D, D, D, (int64_t)H * head_dim};
        snprintf(nm, sizeof nm, "model.layers.%d.input_layernorm.weight", l);
        add(nm, 1, D, 0, 1);
        for (int p = 0; p < 4; p++) {
            snprintf(nm, sizeof nm, "model.layers.%d.self_attn.%s_proj.weight", l, proj[p]);
            add(nm, 2, rows[p], cols[p], 0);
            if ((qwen && p < 3) || (!qwen && abias)) {
                snprintf(nm, sizeof nm, "model.layers.%d.self_attn.%s_proj.bias", l, proj[p]);
                add(nm, 1, rows[p], 0, 0);
            }
        }
        snprintf(nm, sizeof nm, "model.layers.%d.post_attention_layernorm.weight", l);
        add(nm, 1, D, 0, 1);
        snprintf(nm, sizeof nm, "model.layers.%d.mlp.gate_proj.weight", l);
        add(nm, 2, I, D, 0);
        snprintf(nm, sizeof nm, "model.layers.%d.mlp.up_proj.weight", l);
        add(nm, 2, I, D, 0);
        snprintf(nm, sizeof nm, "model.layers.%d.mlp.down_proj.weight", l);
        add(nm, 2, D, I, 0);
    }
    add("model.norm.weight", 1, D, 0, 1);
    if (!tied) add("lm_head.weight", 2, V, D, 0);
    if (extra) add(extra, 1, 3, 0, 0);

    for (int i = 0; i < n_t; i++) {
        mk_tensor *t = &ts[i];
        int64_t n = ra_shape_numel(t->ndim, t->shape);
        float *f = xmalloc((size_t)n * sizeof *f);
        for (int64_t j = 0; j < n; j++) f[j] = (t->is_norm ? 1.0f : 0.0f) + 0.15f * next_uniform();
        t->data = xmalloc((size_t)n * ra_dtype_size(dt));
        ra_convert_from_f32(t->data, dt, f, (size_t)n);
        free(f);
    }
    int order[4096];
    for (int i = 0; i < n_t; i++) order[i] = i;
    if (shuffle)
        for (int i = n_t - 1; i > 0; i--) {
            int j = (int)((uint64_t)((next_uniform() + 1.0f) * 1e6) % (uint64_t)(i + 1));
            int tmp = order[i];
            order[i] = order[j];
            order[j] = tmp;
        }

    ra_error err = {0};
    json_t *meta = json_pack("{ss}", "format", "pt");
    json_t *weight_map = json_object();
    uint64_t total = 0;
    for (int s = 0; s < shards; s++) {
        int lo = n_t * s / shards, hi = n_t * (s + 1) / shards;
        st_write_tensor w[4096];
        char file[64], path[4096];
        if (shards == 1) snprintf(file, sizeof file, "model.safetensors");
        else snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", s + 1, shards);
        for (int k = lo; k < hi; k++) {
            mk_tensor *t = &ts[order[k]];
            w[k - lo] = (st_write_tensor){t->name, dt, t->ndim, t->shape, t->data};
            json_object_set_new(weight_map, t->name, json_string(file));
            total += (uint64_t)ra_shape_numel(t->ndim, t->shape) * ra_dtype_size(dt);
        }
        snprintf(path, sizeof path, "%s/%s", dir, file);
        if (st_write(path, w, hi - lo, meta, &err)) ra_die_error(&err);
    }
    if (shards > 1) {
        json_t *index = json_pack("{s{sI}so}", "metadata", "total_size", (json_int_t)total, "weight_map", weight_map);
        char *text = json_dumps(index, JSON_INDENT(2) | JSON_SORT_KEYS);
        char path[4096];
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
        if (ra_write_file_atomic(path, text, strlen(text), &err)) ra_die_error(&err);
        free(text);
        json_decref(index);
    } else {
        json_decref(weight_map);
    }

    /* config.json, written by hand (not by hf_config_to_json, which tests read it back with) */
    json_t *c = json_object();
    json_object_set_new(c, "architectures", json_pack("[s]", qwen ? "Qwen2ForCausalLM" : "LlamaForCausalLM"));
    if (!qwen) json_object_set_new(c, "attention_bias", json_boolean(abias));
    json_object_set_new(c, "bos_token_id", json_integer(1));
    json_object_set_new(c, "eos_token_id", qwen ? json_integer(2) : json_pack("[ii]", 2, 3));
    if (hd) json_object_set_new(c, "head_dim", json_integer(hd));
    json_object_set_new(c, "hidden_act", json_string("silu"));
    json_object_set_new(c, "hidden_size", json_integer(D));
    json_object_set_new(c, "intermediate_size", json_integer(I));
    json_object_set_new(c, "max_position_embeddings", json_integer(256));
    json_object_set_new(c, "model_type", json_string(qwen ? "qwen2" : "llama"));
    json_object_set_new(c, "num_attention_heads", json_integer(H));
    json_object_set_new(c, "num_hidden_layers", json_integer(layers));
    json_object_set_new(c, "num_key_value_heads", json_integer(Hkv));
    json_object_set_new(c, "rms_norm_eps", json_real(1e-5));
    double theta = qwen ? 1000000.0 : 500000.0;
    json_t *rope = json_null();
    if (llama3)
        rope = json_pack("{sfsfsfsiss}", "factor", 8.0, "low_freq_factor", 1.0, "high_freq_factor", 4.0,
                         "original_max_position_embeddings", 32, "rope_type", "llama3");
    if (rope_params) {
        if (json_is_null(rope)) rope = json_pack("{ss}", "rope_type", "default");
        json_object_set_new(rope, "rope_theta", json_real(theta));
        json_object_set_new(c, "rope_parameters", rope);
    } else {
        json_object_set_new(c, "rope_scaling", rope);
        json_object_set_new(c, "rope_theta", json_real(theta));
    }
    json_object_set_new(c, "tie_word_embeddings", json_boolean(tied));
    json_object_set_new(c, "torch_dtype", json_string(dt == RA_BF16 ? "bfloat16" : dt == RA_F16 ? "float16" : "float32"));
    if (qwen) json_object_set_new(c, "use_sliding_window", json_false());
    json_object_set_new(c, "vocab_size", json_integer(V));
    char *text = json_dumps(c, JSON_INDENT(2));
    size_t tl = strlen(text);
    text = xrealloc(text, tl + 2);
    text[tl] = '\n';
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (ra_write_file_atomic(path, text, tl + 1, &err)) ra_die_error(&err);
    free(text);

    if (ra_path) {
        json_t *m = json_object();
        if (!no_meta_config) json_object_set(m, "config", c);
        if (hybrid)
            json_object_set_new(m, "hybrid", json_pack("{s[[ii][i]]s{sisi}}", "attention_heads", 0, 2, 1, "ssm",
                                                       "state_size", 16, "head_dim", head_dim));
        json_t *prov = json_pack("{sssss{}s[]}", "tool", "mk-hf", "version", RA_VERSION, "params", "inputs");
        ra_writer *w = ra_writer_open(ra_path, kind, m, prov, &err);
        if (!w) ra_die_error(&err);
        if (split_bytes) ra_writer_set_split_bytes(w, (uint64_t)split_bytes);
        for (int i = 0; i < n_t; i++)
            if (ra_writer_tensor(w, ts[i].name, dt, ts[i].ndim, ts[i].shape, ts[i].data, &err)) ra_die_error(&err);
        if (ra_writer_close(w, NULL, &err)) ra_die_error(&err);
        json_decref(m);
        json_decref(prov);
    }
    json_decref(c);
    json_decref(meta);
    for (int i = 0; i < n_t; i++) free(ts[i].data);
    return 0;
}

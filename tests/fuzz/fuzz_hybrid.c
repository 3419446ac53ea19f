/* libFuzzer target: a model stream's meta.hybrid (lib/hybrid.h) against a
 * fixed teacher config (3 layers × 4 heads, 2 KV heads, head_dim 8).  An
 * accepted config must pass ra_hybrid_check, survive ra_hybrid_to_json →
 * ra_hybrid_from_json unchanged, and give a model shell whose tensor list has
 * the shapes its layers imply. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hybrid.h"

static hf_config teacher(void) {
    hf_config c;
    memset(&c, 0, sizeof c);
    strcpy(c.model_type, "llama");
    c.hidden_size = 32, c.intermediate_size = 48, c.num_layers = 3, c.num_heads = 4, c.num_kv_heads = 2;
    c.head_dim = 8, c.vocab_size = 64, c.max_position_embeddings = 64, c.rms_norm_eps = 1e-5, c.rope_theta = 1e4;
    return c;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    json_t *j = json_loadb((const char *)data, size, JSON_DECODE_ANY, NULL);
    if (!j) return 0;
    hf_config c = teacher();
    ra_hybrid_config h, g;
    ra_error err = {0};
    int rc = ra_hybrid_from_json(j, &c, "fuzz", &h, &err);
    json_decref(j);
    if (rc) {
        if (rc != EX_DATAERR || !err.msg[0]) abort();
        return 0;
    }
    if (ra_hybrid_check(&h, &c, "fuzz", &err) != 0) abort();
    json_t *k = ra_hybrid_to_json(&h);
    if (ra_hybrid_from_json(k, &c, "round trip", &g, &err) != 0) abort();
    json_decref(k);
    if (g.layout != h.layout || g.adapter != h.adapter || g.d_state != h.d_state || g.qk_groups != h.qk_groups ||
        g.chunk != h.chunk || g.seed != h.seed || memcmp(g.keep, h.keep, (size_t)h.layers * h.heads) != 0)
        abort();
    ra_model *m = ra_model_shell_hybrid(&c, &h);
    ra_model_tensor *t;
    int n = ra_model_tensor_list(m, &t);
    for (int i = 0; i < n; i++)
        if (t[i].shape[0] < 1 || (t[i].ndim == 2 && t[i].shape[1] < 1)) abort();
    free(t);
    ra_model_free(m);
    ra_hybrid_free(&h);
    ra_hybrid_free(&g);
    return 0;
}

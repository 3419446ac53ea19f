/* Random initialisation of a teacher-shaped model (lib/model_init.h). */
#include <string.h>

#include "hf_config.h"
#include "model_init.h"
#include "rng.h"

int ra_model_init_random(ra_model *m, uint64_t seed, double std, ra_error *err) {
    if (m->hybrid)
        return ra_fail(err, EX_DATAERR, "%s: a hybrid student; random initialisation is for teacher-shaped models",
                       m->source);
    ra_rng root;
    rng_seed(&root, seed);
    ra_model_tensor *t;
    int n = ra_model_tensor_list(m, &t);
    for (int i = 0; i < n; i++) {
        size_t numel = (size_t)(t[i].shape[0] * (t[i].ndim == 2 ? t[i].shape[1] : 1));
        float *w = *t[i].data;
        if (strstr(t[i].name, "norm.weight") || strstr(t[i].name, "layernorm.weight")) {
            for (size_t j = 0; j < numel; j++) w[j] = 1.0f;
        } else if (strstr(t[i].name, ".bias")) {
            memset(w, 0, numel * sizeof(float));
        } else {
            ra_rng r = rng_split(&root, (uint64_t)i);
            rng_fill_normal(&r, w, numel, 0.0f, (float)std);
        }
    }
    free(t);
    return 0;
}

int ra_model_random_from_config(const char *config_path, uint64_t seed, double std, ra_model **out, ra_error *err) {
    hf_config c;
    int rc = hf_config_load(config_path, &c, err);
    if (rc) return rc;
    ra_model *m;
    if ((rc = ra_model_alloc(&c, &m, err))) return rc;
    snprintf(m->source, sizeof m->source, "%s", config_path);
    m->content_id[0] = 0;
    if ((rc = ra_model_init_random(m, seed, std, err))) {
        ra_model_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

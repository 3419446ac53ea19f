/* lib/model_init: random initialisation of a teacher-shaped model: norms 1,
 * biases 0, matrices with mean ≈ 0 and standard deviation ≈ std (sample
 * statistics), deterministic per seed, different across seeds and across
 * tensors, hybrids refused. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hybrid_fixture.h"
#include "model_init.h"

static ra_model *alloc_variant(int variant) {
    hf_config c = fx_config(variant);
    ra_model *m = NULL;
    ra_error err = {0};
    EXPECT(ra_model_alloc(&c, &m, &err) == 0);
    return m;
}

TEST(values_by_kind) {
    ra_model *m = alloc_variant(1); /* qwen2: q/k/v biases, tied */
    ra_error err = {0};
    EXPECT(ra_model_init_random(m, 9, 0.05, &err) == 0);
    ra_model_tensor *t;
    int n = ra_model_tensor_list(m, &t);
    int matrices = 0;
    for (int i = 0; i < n; i++) {
        int64_t numel = t[i].shape[0] * (t[i].ndim == 2 ? t[i].shape[1] : 1);
        const float *w = *t[i].data;
        if (strstr(t[i].name, "norm")) {
            for (int64_t j = 0; j < numel; j++) EXPECT(w[j] == 1.0f);
        } else if (strstr(t[i].name, "bias")) {
            for (int64_t j = 0; j < numel; j++) EXPECT(w[j] == 0.0f);
        } else {
            double s = 0, ss = 0;
            for (int64_t j = 0; j < numel; j++) s += w[j], ss += (double)w[j] * w[j];
            double mean = s / numel, sd = sqrt(ss / numel - mean * mean);
            /* ≥ 320 samples: the sample std is within 15% and the mean within 4 standard errors */
            EXPECT_MSG(fabs(sd - 0.05) < 0.15 * 0.05 && fabs(mean) < 4 * 0.05 / sqrt((double)numel),
                       "%s: mean %g std %g", t[i].name, mean, sd);
            matrices++;
        }
    }
    EXPECT(matrices > 10);
    /* two tensors of the same shape draw different numbers */
    EXPECT(memcmp(m->layers[0].w_gate, m->layers[1].w_gate, sizeof(float) * 8) != 0);
    free(t);
    ra_model_free(m);
}

TEST(deterministic_per_seed) {
    ra_model *a = alloc_variant(0), *b = alloc_variant(0), *c = alloc_variant(0);
    ra_error err = {0};
    EXPECT(ra_model_init_random(a, 4, RA_INIT_STD, &err) == 0);
    EXPECT(ra_model_init_random(b, 4, RA_INIT_STD, &err) == 0);
    EXPECT(ra_model_init_random(c, 5, RA_INIT_STD, &err) == 0);
    size_t VD = (size_t)a->cfg.vocab_size * a->cfg.hidden_size;
    EXPECT(memcmp(a->embed, b->embed, VD * sizeof(float)) == 0);
    EXPECT(memcmp(a->layers[2].wo, b->layers[2].wo, 32 * 32 * sizeof(float)) == 0);
    EXPECT(memcmp(a->embed, c->embed, VD * sizeof(float)) != 0);
    ra_model_free(a), ra_model_free(b), ra_model_free(c);
}

TEST(hybrid_refused) {
    ra_model *t = fx_teacher(0, 2);
    ra_model *s = fx_graft(t, "1000", RA_LAYOUT_ROUTED, RA_ADAPTER_STATIC, 4, RA_INIT_MOHAWK, 1);
    ra_error err = {0};
    EXPECT_EQ_INT(ra_model_init_random(s, 1, RA_INIT_STD, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "hybrid") != NULL);
    ra_model_free(s), ra_model_free(t);
}

int main(void) {
    RUN(values_by_kind);
    RUN(deterministic_per_seed);
    RUN(hybrid_refused);
    return test_summary();
}

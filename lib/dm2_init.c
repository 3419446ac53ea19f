/* DiscreteMamba2 initialisation, --init mohawk (DESIGN §2.4). */
#include <math.h>
#include <string.h>

#include "dm2.h"

void dm2_init_mohawk(dm2_params *p, const dm2_config *c, int n_layers, ra_rng *rng) {
    const int D = c->d_model, inner = dm2_d_inner(c), conv = dm2_conv_dim(c), in_dim = dm2_in_proj_dim(c);
    float bound = 1.0f / sqrtf((float)D);
    rng_fill_uniform(rng, p->in_proj_w, (size_t)in_dim * D, -bound, bound);
    /* z rows 0: with z_bias below the gate silu(z + z_bias) starts at 1 */
    memset(p->in_proj_w + (size_t)conv * D, 0, sizeof(float) * (size_t)inner * D);
    for (int ch = 0; ch < conv; ch++) {
        for (int j = 0; j < DM2_CONV_K; j++) p->conv_w[ch * DM2_CONV_K + j] = j == DM2_CONV_K - 1 ? 1.0f : 0.0f;
        p->conv_b[ch] = 0;
    }
    for (int i = 0; i < inner; i++) p->z_bias[i] = (float)DM2_Z_BIAS_INIT;
    for (int h = 0; h < c->n_heads; h++) p->D[h] = 1;
    if (p->out_proj_w) {
        float ob = 1.0f / sqrtf((float)inner), scale = 1.0f / sqrtf(2.0f * (n_layers > 0 ? n_layers : 1));
        rng_fill_uniform(rng, p->out_proj_w, (size_t)D * inner, -ob, ob);
        for (size_t i = 0; i < (size_t)D * inner; i++) p->out_proj_w[i] *= scale;
    }
}

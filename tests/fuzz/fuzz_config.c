/* libFuzzer target: config.json parsing.  An accepted config must satisfy the
 * invariants the forward pass relies on and survive hf_config_to_json →
 * hf_config_from_json unchanged. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hf_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    hf_config c, d;
    ra_error err = {0};
    int rc = hf_config_parse((const char *)data, size, "fuzz", &c, &err);
    if (rc != 0) {
        if (rc != EX_DATAERR || !err.msg[0]) abort();
        return 0;
    }
    if (c.hidden_size <= 0 || c.num_heads <= 0 || c.num_kv_heads <= 0 || c.num_heads % c.num_kv_heads != 0 ||
        c.head_dim <= 0 || c.head_dim % 2 != 0 || c.vocab_size <= 0 || c.num_layers <= 0 || !(c.rms_norm_eps > 0) ||
        !(c.rope_theta > 0))
        abort();
    if (c.rope_type == RA_ROPE_LLAMA3 && !(c.rope_high_freq_factor > c.rope_low_freq_factor)) abort();
    json_t *j = hf_config_to_json(&c);
    if (hf_config_from_json(j, "round trip", &d, &err) != 0 || memcmp(&c, &d, sizeof c) != 0) abort();
    json_decref(j);
    return 0;
}

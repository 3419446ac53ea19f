/* libFuzzer target: the safetensors header validator.  Every accepted tensor
 * must lie inside the input (its first and last bytes are read, so ASan flags
 * any pointer the validator let out of bounds) and the ranges must be
 * disjoint. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* Copy into an exact-size heap block so reads past the end are caught. */
    uint8_t *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);
    st_tensor *t;
    int n;
    json_t *meta;
    ra_error err = {0};
    int rc = st_parse(buf, size, "fuzz", 0, &t, &n, &meta, &err);
    if (rc == 0) {
        volatile uint8_t sink = 0;
        for (int i = 0; i < n; i++) {
            const uint8_t *p = t[i].data;
            if (p < buf || (uint64_t)(p - buf) + t[i].nbytes > size) abort();
            if (t[i].nbytes) sink ^= p[0] ^ p[t[i].nbytes - 1];
            if (ra_shape_numel(t[i].ndim, t[i].shape) * (int64_t)ra_dtype_size(t[i].dtype) != (int64_t)t[i].nbytes)
                abort();
            for (int j = i + 1; j < n; j++) {
                const uint8_t *q = t[j].data;
                if (t[i].nbytes && t[j].nbytes && p < q + t[j].nbytes && q < p + t[i].nbytes) abort();
            }
        }
        (void)sink;
        st_tensors_free(t, n);
        json_decref(meta);
    } else if (rc != EX_DATAERR || !err.msg[0]) {
        abort();
    }
    free(buf);
    return 0;
}

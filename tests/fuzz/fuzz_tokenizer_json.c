/* libFuzzer target: tokenizer.json loading.  Any input must either be
 * refused with EX_DATAERR and a message, or load into a tokenizer that
 * encodes and decodes text without crashing, giving ids below its vocab size. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

static const char *const texts[] = {
    "Hello world! It's 2024, isn't it?\n\tdone",
    "<|begin_of_text|>The value of the key 'apple' is 42<|end_of_text|>",
    "caf\xc3\xa9 e\xcc\x81 \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80 \xc2\x85\xc2\xa0 \xff\xfe",
    "",
    "   ",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ra_tokenizer *t = NULL;
    ra_error err = {0};
    int rc = ra_tokenizer_load_json((const char *)data, size, "fuzz.json", &t, &err);
    if (rc != 0) {
        if (rc != EX_DATAERR || !err.msg[0] || t) abort();
        return 0;
    }
    int64_t vocab = ra_tokenizer_vocab_size(t);
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        for (int specials = 0; specials < 2; specials++) {
            ra_ids ids = {0};
            ra_bytes out = {0};
            rc = ra_tokenizer_encode(t, texts[i], strlen(texts[i]), specials, &ids, &err);
            if (rc == 0) {
                for (int64_t k = 0; k < ids.n; k++)
                    if (ids.v[k] < 0 || ids.v[k] >= vocab) abort();
                /* Decoding may refuse (no decoder, a template id outside the
                 * vocabulary) but must say why. */
                err.msg[0] = 0;
                if (ra_tokenizer_decode(t, ids.v, ids.n, &out, &err) != 0 && !err.msg[0]) abort();
                if (out.n && !ra_utf8_valid(out.v, out.n)) abort();
            } else if (!err.msg[0]) {
                abort();
            }
            ra_ids_free(&ids);
            ra_bytes_free(&out);
        }
    }
    ra_tokenizer_free(t);
    return 0;
}

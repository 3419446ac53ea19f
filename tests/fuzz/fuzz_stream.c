/* libFuzzer target: the ra stream reader on arbitrary bytes.  Every tensor is
 * read (whole, in chunks, converted to f32, or skipped, chosen by its index)
 * and the header's JSON is packed back to msgpack, so the reader, the framing
 * checks and the msgpack<->JSON conversion all see hostile input.  Any crash,
 * leak, or undefined behaviour is a bug; rejected input is fine. */
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>

#include "stream.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char empty;
    FILE *f = fmemopen(size ? (void *)data : &empty, size ? size : 1, "rb");
    if (!f) return 0;
    if (!size) fgetc(f); /* an empty stream: consume the placeholder byte */
    ra_error err = {0};
    ra_reader *r = ra_reader_open_file(f, "fuzz", &err);
    if (r) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        ra_pack_json(&pk, ra_reader_meta(r));
        ra_pack_json(&pk, ra_reader_provenance(r));
        msgpack_sbuffer_destroy(&sb);
        ra_tensor_info info;
        int st, i = 0;
        while ((st = ra_reader_next(r, &info, &err)) == 1) {
            int mode = i++ % 4;
            if (info.nbytes > (1u << 20)) mode = 3; /* do not allocate what the input only claims */
            if (mode == 0) {
                void *b = malloc(info.nbytes + 1);
                if (ra_reader_read(r, b, info.nbytes, &err)) {
                    free(b);
                    break;
                }
                free(b);
            } else if (mode == 1) {
                unsigned char b[7];
                int64_t got;
                while ((got = ra_reader_read_chunk(r, b, sizeof b, &err)) > 0) {
                }
                if (got < 0) break;
            } else if (mode == 2) {
                float *b = malloc((size_t)info.numel * sizeof(float) + 1);
                int rc = ra_reader_read_f32(r, b, info.numel, &err);
                free(b);
                if (rc) break;
            }
        }
        if (st == 0 && !ra_reader_content_id(r)) abort(); /* a valid end always has an id */
        ra_reader_close(r);
    }
    fclose(f);
    return 0;
}

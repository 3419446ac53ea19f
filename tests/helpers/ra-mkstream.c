/* Test helper (not installed): writes ra streams from a small text
 * description and dumps streams in a form bats can compare.
 *
 *   ra-mkstream [-o OUT] [DESC]   DESC (default stdin) lines:
 *       kind KIND
 *       meta JSON-OBJECT
 *       provenance JSON-OBJECT
 *       split BYTES                 part size for the tensors that follow
 *       tensor NAME DTYPE SHAPE [SEED]
 *   SHAPE is dims joined by 'x' ("2x3", "4x0x2") or "scalar"; the data are
 *   deterministic pseudo-random bytes from SEED (default 1) and the name.
 *
 *   ra-mkstream --dump FILE        prints "kind", "meta", "provenance" (JSON,
 *       keys sorted), one "tensor NAME DTYPE SHAPE XXH64" line per tensor,
 *       "records N" and "id CONTENT-ID". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "cli.h"
#include "stream.h"

static const char usage[] =
    "usage: ra-mkstream [-o OUT] [DESC]\n"
    "       ra-mkstream --dump FILE\n"
    "Test helper: write a ra stream from a text description, or dump one.\n";

static void shape_text(char *out, size_t cap, int ndim, const int64_t *shape) {
    if (ndim == 0) {
        snprintf(out, cap, "scalar");
        return;
    }
    size_t n = 0;
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(out + n, cap - n, "%s%lld", i ? "x" : "", (long long)shape[i]);
}

static int dump(const char *path) {
    ra_error err = {0};
    ra_reader *r = ra_reader_open(path, &err);
    if (!r) ra_die_error(&err);
    size_t flags = JSON_COMPACT | JSON_SORT_KEYS;
    char *m = json_dumps(ra_reader_meta(r), flags), *p = json_dumps(ra_reader_provenance(r), flags);
    printf("kind %s\nmeta %s\nprovenance %s\n", ra_reader_kind(r), m, p);
    free(m);
    free(p);
    ra_tensor_info info;
    int st;
    while ((st = ra_reader_next(r, &info, &err)) == 1) {
        XXH64_state_t *h = XXH64_createState();
        XXH64_reset(h, 0);
        static unsigned char buf[1 << 16];
        int64_t got;
        while ((got = ra_reader_read_chunk(r, buf, sizeof buf, &err)) > 0) XXH64_update(h, buf, (size_t)got);
        if (got < 0) ra_die_error(&err);
        char s[200];
        shape_text(s, sizeof s, info.ndim, info.shape);
        printf("tensor %s %s %s %016llx\n", info.name, ra_dtype_name(info.dtype), s,
               (unsigned long long)XXH64_digest(h));
        XXH64_freeState(h);
    }
    if (st < 0) ra_die_error(&err);
    printf("records %llu\nid %s\n", (unsigned long long)ra_reader_record_count(r), ra_reader_content_id(r));
    ra_reader_close(r);
    return 0;
}

static json_t *parse_json_arg(const char *s, int line) {
    json_error_t je;
    json_t *j = json_loads(s, 0, &je);
    if (!j || !json_is_object(j)) ra_die(EX_DATAERR, "line %d: not a JSON object: %s", line, je.text);
    return j;
}

int main(int argc, char **argv) {
    ra_cli_init(argc, argv, "ra-mkstream", usage);
    if (argc == 3 && strcmp(argv[1], "--dump") == 0) return dump(argv[2]);
    const char *out = "-", *desc = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-o") == 0 && i + 1 < argc) out = argv[++i];
        else if (argv[i][0] == '-' && argv[i][1]) ra_usage_error("unknown option %s", argv[i]);
        else desc = argv[i];
    }
    FILE *in = desc && strcmp(desc, "-") ? fopen(desc, "r") : stdin;
    if (!in) ra_die(EX_NOINPUT, "%s: cannot open", desc);
    char kind[64] = "model";
    json_t *meta = json_object(), *prov = json_object();
    ra_writer *w = NULL;
    ra_error err = {0};
    uint64_t split = 0;
    char line[65536];
    int lineno = 0;
    while (fgets(line, sizeof line, in)) {
        lineno++;
        line[strcspn(line, "\r\n")] = 0;
        char *sp = line + strspn(line, " \t");
        if (!*sp || *sp == '#') continue;
        char word[32];
        int off = 0;
        if (sscanf(sp, "%31s %n", word, &off) < 1) continue;
        char *rest = sp + off;
        if (strcmp(word, "kind") == 0) snprintf(kind, sizeof kind, "%s", rest);
        else if (strcmp(word, "meta") == 0) json_decref(meta), meta = parse_json_arg(rest, lineno);
        else if (strcmp(word, "provenance") == 0) json_decref(prov), prov = parse_json_arg(rest, lineno);
        else if (strcmp(word, "split") == 0) {
            split = strtoull(rest, NULL, 10);
            if (w) ra_writer_set_split_bytes(w, split);
        } else if (strcmp(word, "tensor") == 0) {
            char name[RA_NAME_MAX + 1], dt[16], shp[256];
            unsigned long long seed = 1;
            if (sscanf(rest, "%1024s %15s %255s %llu", name, dt, shp, &seed) < 3)
                ra_die(EX_DATAERR, "line %d: expected: tensor NAME DTYPE SHAPE [SEED]", lineno);
            ra_dtype t;
            if (ra_dtype_parse(dt, &t)) ra_die(EX_DATAERR, "line %d: unknown dtype %s", lineno, dt);
            int64_t shape[RA_MAX_DIMS];
            int ndim = 0;
            if (strcmp(shp, "scalar") != 0)
                for (char *tok = strtok(shp, "x"); tok; tok = strtok(NULL, "x")) {
                    if (ndim == RA_MAX_DIMS) ra_die(EX_DATAERR, "line %d: too many dims", lineno);
                    shape[ndim++] = strtoll(tok, NULL, 10);
                }
            if (!w) {
                w = ra_writer_open(out, kind, meta, prov, &err);
                if (!w) ra_die_error(&err);
                if (split) ra_writer_set_split_bytes(w, split);
            }
            if (ra_writer_begin(w, name, t, ndim, shape, &err)) ra_die_error(&err);
            uint64_t n = (uint64_t)ra_shape_numel(ndim, shape) * ra_dtype_size(t);
            uint64_t s = XXH64(name, strlen(name), seed) | 1;
            unsigned char buf[4096];
            for (uint64_t done = 0; done < n;) {
                size_t m = n - done < sizeof buf ? (size_t)(n - done) : sizeof buf;
                for (size_t i = 0; i < m; i++) {
                    s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
                    buf[i] = (unsigned char)((s * 0x2545F4914F6CDD1Dull) >> 56);
                }
                if (ra_writer_data(w, buf, m, &err)) ra_die_error(&err);
                done += m;
            }
            if (ra_writer_end(w, &err)) ra_die_error(&err);
        } else {
            ra_die(EX_DATAERR, "line %d: unknown directive '%s'", lineno, word);
        }
    }
    if (in != stdin) fclose(in);
    if (!w) {
        w = ra_writer_open(out, kind, meta, prov, &err);
        if (!w) ra_die_error(&err);
    }
    char id[RA_CONTENT_ID_LEN + 1];
    if (ra_writer_close(w, id, &err)) ra_die_error(&err);
    json_decref(meta);
    json_decref(prov);
    return 0;
}

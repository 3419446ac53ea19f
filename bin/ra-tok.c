/* ra-tok: text (or integer ids) -> a tokens stream, and back.
 *
 *   ra-tok -t MODEL_DIR|tokenizer.json [FILE...]   text, one document per file
 *   ra-tok --ids [FILE...]                         lines of ids, one document per line
 *   ra-tok --decode -t TOK [STREAM]                tokens stream -> text
 *   ra-tok --to-ids [STREAM]                       tokens stream -> lines of ids
 *   ra-tok --train-bpe V [-o tokenizer.json] [FILE...]   train a byte-level BPE
 *   ra-tok --gen-kv N [--seed S] [--words FILE] [TEXT...]  KV documents + text (JSONL)
 *
 * The tokenizer lives in lib/tokenizer*.c, the stream format in lib/tokens.c;
 * this file reads inputs, routes documents and writes outputs. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

#include "atomic_file.h"
#include "cli.h"
#include "error.h"
#include "tokenizer.h"
#include "tokenizer_train.h"
#include "tokens.h"
#include "kv_docs.h"

static const char usage[] =
    "Usage: ra-tok -t MODEL_DIR|tokenizer.json [OPTIONS] [FILE...]\n"
    "       ra-tok --ids [-t TOKENIZER] [OPTIONS] [FILE...]\n"
    "       ra-tok --decode -t TOKENIZER [--lines|--jsonl [--field NAME]] [-o FILE] [STREAM]\n"
    "       ra-tok --to-ids [-o FILE] [STREAM]\n"
    "       ra-tok --train-bpe VOCAB_SIZE [--lines|--jsonl [--field NAME]] [-o FILE] [FILE...]\n"
    "       ra-tok --gen-kv N [--seed S] [--words FILE] [-o FILE] [TEXT_FILE...]\n"
    "Turn text into a tokens stream with a Hugging Face tokenizer.json (byte-level BPE),\n"
    "or lines of integer ids into a tokens stream, or a tokens stream back into text or ids.\n"
    "Inputs are the FILEs, or standard input when there are none or a FILE is '-'.\n"
    "\n"
    "Input text (encoding and --decode):\n"
    "  (default)            each file, or all of standard input, is one document\n"
    "  --lines              one document per line (without its \\n or \\r\\n)\n"
    "  --jsonl              one document per JSON line, taken from --field\n"
    "  --field NAME         the JSONL field holding the text (default: text)\n"
    "  --specials yes|no    apply the tokenizer's post-processor, e.g. add BOS (default: yes,\n"
    "                       as Hugging Face's encode does)\n"
    "  --ids                input lines are whitespace-separated integer token ids, one\n"
    "                       document per line (an empty line is an empty document)\n"
    "\n"
    "Output (a tokens stream, see formats/tokens.md):\n"
    "  -o FILE              write to FILE (default: standard output, never a terminal)\n"
    "  --pack L             packed layout: rows of L tokens with document starts\n"
    "  --pad ID             pad the final partial row with ID (default: drop it)\n"
    "  --split F            keep a fraction F (0 < F < 1) of the documents, chosen by a hash\n"
    "                       of the document index and --seed; the rest go to --heldout\n"
    "  --heldout FILE       where the held-out documents go (required with --split)\n"
    "  --seed N             seed of the --split hash (default: 1)\n"
    "  --stats              print documents, tokens and bytes per token on standard error\n"
    "  -q                   no progress on standard error\n"
    "\n"
    "Other modes:\n"
    "  --decode             tokens stream -> text (documents, or packed rows, in order;\n"
    "                       with --lines each is followed by a newline, with --jsonl each\n"
    "                       is a JSON line {FIELD: text})\n"
    "  --to-ids             tokens stream -> one line of space-separated ids per document\n"
    "                       (or packed row)\n"
    "  --train-bpe V        learn a byte-level BPE tokenizer of V tokens (the 256 bytes,\n"
    "                       merges, <|begin_of_text|> and <|end_of_text|>) from the input\n"
    "                       documents and write its tokenizer.json (Llama-3 pre-tokenizer)\n"
    "  --gen-kv N           write N KV-retrieval training documents as JSONL {\"text\": ...}:\n"
    "                       varied templates, 1-60 pairs, keys from --words (default\n"
    "                       /usr/share/dict/words), documents from --seed (default 7;\n"
    "                       1 and 1000003, the probe/eval prompt seeds, are refused)\n"
    "                       mixed with each TEXT_FILE as one document, in an order\n"
    "                       shuffled by --seed (the teacher's data mixture)\n"
    "  --words FILE         key word list for --gen-kv\n"
    "  -h, --help           this help;  --version  the version\n"
    "\n"
    "Exit status: 0 ok, 64 usage, 65 bad input data, 66 missing input, 73 cannot create\n"
    "output, 74 I/O error.\n";

enum { IN_WHOLE, IN_LINES, IN_JSONL };
enum { MODE_TEXT, MODE_IDS, MODE_DECODE, MODE_TO_IDS, MODE_TRAIN, MODE_GEN_KV };

typedef struct opts {
    int mode, input, specials, stats;
    const char *tokenizer, *field, *out, *heldout;
    int64_t pack, train_vocab, gen_kv;
    const char *words;
    int seed_given;
    int32_t pad;
    double split;
    uint64_t seed;
    char **files;
    int nfiles;
} opts;

/* ---------------------------------------------------------------- document sink */

/* Where encoded documents go: one builder, or two with --split. */
typedef struct sink {
    const opts *o;
    ra_tokens_builder *main, *held;
    ra_bpe_trainer *train;        /* --train-bpe: documents go here instead */
    int64_t docs, tokens, bytes; /* bytes: of the documents' text */
    int64_t read;                 /* bytes read from the inputs */
    ra_progress progress;
    int progress_shown;
} sink;

/* Progress only for inputs that take more than a second. */
static void sink_progress(sink *s, int64_t read) {
    s->read += read;
    if (s->progress_shown || ra_now() - s->progress.start >= 1.0) {
        s->progress_shown = 1;
        ra_progress_update(&s->progress, s->read);
    }
}

static int heldout_doc(const opts *o, int64_t index) {
    uint64_t le = (uint64_t)index; /* little-endian hosts only, like the stream format */
    uint64_t h = XXH3_64bits_withSeed(&le, sizeof le, o->seed);
    return (double)(h >> 11) * (1.0 / 9007199254740992.0) >= o->split;
}

static void sink_add(sink *s, const int32_t *ids, int64_t n, int64_t bytes) {
    ra_error err = {0};
    ra_tokens_builder *b = s->held && heldout_doc(s->o, s->docs) ? s->held : s->main;
    if (ra_tokens_builder_add(b, ids, n, &err)) ra_die_error(&err);
    s->docs++;
    s->tokens += n;
    s->bytes += bytes;
}

static json_t *provenance(const opts *o, const ra_tokenizer *tok) {
    static const char *const modes[] = {"text", "ids"};
    static const char *const inputs[] = {"whole", "lines", "jsonl"};
    json_t *params = json_pack("{s:s, s:s, s:b}", "mode", modes[o->mode], "input", inputs[o->input], "specials",
                               o->specials);
    if (o->input == IN_JSONL) json_object_set_new(params, "field", json_string(o->field));
    if (o->pack) json_object_set_new(params, "pack", json_integer(o->pack));
    if (o->pad >= 0) json_object_set_new(params, "pad", json_integer(o->pad));
    if (o->heldout) {
        json_object_set_new(params, "split", json_real(o->split));
        json_object_set_new(params, "seed", json_integer((json_int_t)o->seed));
    }
    json_t *in = json_object();
    if (tok) json_object_set_new(in, "tokenizer", json_string(ra_tokenizer_id(tok)));
    return json_pack("{s:s, s:s, s:o, s:o}", "tool", "ra-tok", "version", RA_VERSION, "params", params, "inputs", in);
}

static void write_part(const opts *o, ra_tokens_builder *b, const char *path, const ra_tokens_tokenizer *ti,
                       const char *part, const json_t *prov) {
    ra_error err = {0};
    json_t *extra = json_object();
    if (o->heldout)
        json_object_set_new(extra, "split", json_pack("{s:s, s:f, s:I}", "part", part, "fraction", o->split, "seed",
                                                      (json_int_t)o->seed));
    ra_tokens_summary sum;
    int r = o->pack ? ra_tokens_write_packed(b, path, ti, o->pack, o->pad, extra, prov, &sum, &err)
                    : ra_tokens_write_documents(b, path, ti, extra, prov, &sum, &err);
    json_decref(extra);
    if (r) ra_die_error(&err);
    const char *where = strcmp(path, "-") == 0 ? "output" : path;
    if (o->pack && sum.n_dropped && !ra_progress_quiet)
        fprintf(stderr, "ra-tok: %s: dropped the final %" PRId64 " tokens (a partial row); --pad ID keeps them\n",
                where, sum.n_dropped);
    if (o->stats && o->pack)
        fprintf(stderr, "ra-tok: %s: %" PRId64 " rows of %" PRId64 ", %" PRId64 " documents, %" PRId64
                        " tokens, %" PRId64 " padding, %" PRId64 " dropped\n",
                where, sum.n_rows, o->pack, sum.n_docs, sum.n_tokens, sum.n_pad, sum.n_dropped);
    else if (o->stats && o->heldout)
        fprintf(stderr, "ra-tok: %s: %" PRId64 " documents, %" PRId64 " tokens\n", where, sum.n_docs, sum.n_tokens);
}

/* ---------------------------------------------------------------- reading inputs */

static FILE *open_input(const char *name) {
    if (strcmp(name, "-") == 0) return stdin;
    struct stat st;
    if (stat(name, &st) == 0 && S_ISDIR(st.st_mode)) ra_die(EX_NOINPUT, "%s: is a directory", name);
    FILE *f = fopen(name, "rb");
    if (!f) ra_die(errno == ENOENT ? EX_NOINPUT : EX_IOERR, "%s: cannot open: %s", name, strerror(errno));
    return f;
}

static void close_input(FILE *f, const char *name) {
    if (ferror(f)) ra_die(EX_IOERR, "%s: read error", name);
    if (f != stdin) fclose(f);
}

static void encode_doc(sink *s, ra_tokenizer *tok, const char *text, size_t n, ra_ids *ids, const char *name,
                       long long line) {
    ra_error err = {0};
    if (s->train) {
        if (ra_bpe_trainer_add(s->train, text, n, &err)) ra_die_error(&err);
        s->docs++;
        s->bytes += (int64_t)n;
        return;
    }
    ids->n = 0;
    if (ra_tokenizer_encode(tok, text, n, s->o->specials, ids, &err)) {
        if (line > 0) ra_error_prefix(&err, "%s:%lld", name, line);
        else ra_error_prefix(&err, "%s", name);
        ra_die_error(&err);
    }
    sink_add(s, ids->v, ids->n, (int64_t)n);
}

/* One line of --ids input: whitespace-separated integers. */
static void parse_id_line(char *line, ra_ids *ids, int64_t vocab, const char *name, long long lineno) {
    ids->n = 0;
    char *p = line;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\v' || *p == '\f') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        char *tok_end = end;
        while (*tok_end && *tok_end != ' ' && *tok_end != '\t' && *tok_end != '\r') tok_end++;
        if (end == p || end != tok_end || errno)
            ra_die(EX_DATAERR, "%s:%lld: '%.*s' is not an integer token id", name, lineno, (int)(tok_end - p), p);
        if (v < 0 || v > INT32_MAX) ra_die(EX_DATAERR, "%s:%lld: token id %lld is out of range [0, 2^31)", name, lineno, v);
        if (vocab > 0 && v >= vocab)
            ra_die(EX_DATAERR, "%s:%lld: token id %lld is not below the tokenizer's vocabulary size %" PRId64, name,
                   lineno, v, vocab);
        ra_ids_push(ids, (int32_t)v);
        p = end;
    }
}

static void read_input(sink *s, ra_tokenizer *tok, const char *name) {
    const opts *o = s->o;
    FILE *f = open_input(name);
    const char *shown = strcmp(name, "-") == 0 ? "<stdin>" : name;
    ra_ids ids = {0};
    if ((o->mode == MODE_TEXT || o->mode == MODE_TRAIN) && o->input == IN_WHOLE) {
        ra_bytes text = {0};
        char chunk[1 << 16];
        size_t n;
        while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) ra_bytes_append(&text, chunk, n);
        close_input(f, shown);
        encode_doc(s, tok, text.v ? text.v : "", text.n, &ids, shown, 0);
        sink_progress(s, (int64_t)text.n);
        ra_bytes_free(&text);
        ra_ids_free(&ids);
        return;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long long lineno = 0;
    while ((len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        sink_progress(s, (int64_t)len);
        size_t n = (size_t)len;
        if (n && line[n - 1] == '\n') n--;
        if (n && line[n - 1] == '\r') n--;
        line[n] = 0;
        if (o->mode == MODE_IDS) {
            if (memchr(line, 0, n)) ra_die(EX_DATAERR, "%s:%lld: NUL byte in an ids line", shown, lineno);
            parse_id_line(line, &ids, tok ? ra_tokenizer_vocab_size(tok) : 0, shown, lineno);
            sink_add(s, ids.v, ids.n, (int64_t)len);
        } else if (o->input == IN_LINES) {
            encode_doc(s, tok, line, n, &ids, shown, lineno);
        } else { /* JSONL; blank lines are skipped */
            size_t k = 0;
            while (k < n && (line[k] == ' ' || line[k] == '\t')) k++;
            if (k == n) continue;
            json_error_t jerr;
            json_t *obj = json_loadb(line, n, JSON_ALLOW_NUL, &jerr);
            if (!obj) ra_die(EX_DATAERR, "%s:%lld: not valid JSON: %s", shown, lineno, jerr.text);
            const json_t *v = json_object_get(obj, o->field);
            if (!json_is_string(v))
                ra_die(EX_DATAERR, "%s:%lld: %s field '%s'", shown, lineno,
                       !json_is_object(obj) ? "not a JSON object, so no" : v ? "expected a string in" : "no", o->field);
            encode_doc(s, tok, json_string_value(v), json_string_length(v), &ids, shown, lineno);
            json_decref(obj);
        }
    }
    free(line);
    close_input(f, shown);
    ra_ids_free(&ids);
}

static int64_t input_size(const opts *o) {
    int64_t total = 0;
    for (int i = 0; i < o->nfiles; i++) {
        struct stat st;
        if (strcmp(o->files[i], "-") == 0 || stat(o->files[i], &st) != 0 || !S_ISREG(st.st_mode)) return 0;
        total += st.st_size;
    }
    return total;
}

static ra_tokenizer *load_tokenizer(const char *path) {
    ra_tokenizer *tok;
    ra_error err = {0};
    if (ra_tokenizer_load(path, &tok, &err)) ra_die_error(&err);
    return tok;
}

static void tokenizer_info(const ra_tokenizer *tok, ra_tokens_tokenizer *ti) {
    memset(ti, 0, sizeof *ti);
    ti->bos_id = ti->eos_id = -1;
    if (!tok) return;
    ti->present = 1;
    memcpy(ti->id, ra_tokenizer_id(tok), 33);
    ti->vocab_size = ra_tokenizer_vocab_size(tok);
    ti->bos_id = ra_tokenizer_bos_id(tok);
    ti->eos_id = ra_tokenizer_eos_id(tok);
}

static int run_encode(const opts *o) {
    ra_error err = {0};
    if (strcmp(o->out, "-") == 0 && ra_check_binary_stdout(&err)) ra_die_error(&err);
    ra_tokenizer *tok = o->tokenizer ? load_tokenizer(o->tokenizer) : NULL;
    sink s = {.o = o};
    if (!(s.main = ra_tokens_builder_new(&err))) ra_die_error(&err);
    if (o->heldout && !(s.held = ra_tokens_builder_new(&err))) ra_die_error(&err);
    ra_progress_start(&s.progress, "ra-tok", "bytes", input_size(o));
    static char *stdin_only[] = {"-"};
    char **files = o->nfiles ? o->files : stdin_only;
    int nfiles = o->nfiles ? o->nfiles : 1;
    for (int i = 0; i < nfiles; i++) read_input(&s, tok, files[i]);
    if (s.progress_shown) ra_progress_finish(&s.progress, s.read);

    ra_tokens_tokenizer ti;
    tokenizer_info(tok, &ti);
    json_t *prov = provenance(o, tok);
    write_part(o, s.main, o->out, &ti, "train", prov);
    if (s.held) write_part(o, s.held, o->heldout, &ti, "heldout", prov);
    json_decref(prov);
    if (o->stats) {
        fprintf(stderr, "ra-tok: %" PRId64 " documents, %" PRId64 " tokens", s.docs, s.tokens);
        if (o->mode == MODE_TEXT)
            fprintf(stderr, ", %" PRId64 " bytes, %.3f bytes/token", s.bytes,
                    s.tokens ? (double)s.bytes / (double)s.tokens : 0.0);
        fputc('\n', stderr);
    }
    ra_tokens_builder_free(s.main);
    ra_tokens_builder_free(s.held);
    ra_tokenizer_free(tok);
    return 0;
}

static void out_write(FILE *f, const void *p, size_t n);

/* ---------------------------------------------------------------- training, data */

static int run_train(const opts *o) {
    ra_error err = {0};
    sink s = {.o = o};
    if (ra_bpe_trainer_new(&s.train, &err)) ra_die_error(&err);
    ra_progress_start(&s.progress, "ra-tok", "bytes", input_size(o));
    static char *stdin_only[] = {"-"};
    char **files = o->nfiles ? o->files : stdin_only;
    int nfiles = o->nfiles ? o->nfiles : 1;
    for (int i = 0; i < nfiles; i++) read_input(&s, NULL, files[i]);
    if (s.progress_shown) ra_progress_finish(&s.progress, s.read);
    double t0 = ra_now();
    ra_bytes json = {0};
    int merges = 0;
    if (ra_bpe_trainer_finish(s.train, (int)o->train_vocab, &json, &merges, &err)) ra_die_error(&err);
    ra_bytes_append(&json, "\n", 1);
    if (strcmp(o->out, "-") == 0) {
        out_write(stdout, json.v, json.n);
        if (fflush(stdout) != 0 || ferror(stdout)) ra_die(EX_IOERR, "standard output: write error");
    } else if (ra_write_file_atomic(o->out, json.v, json.n, &err)) {
        ra_die_error(&err);
    }
    if (!ra_progress_quiet)
        fprintf(stderr, "ra-tok: BPE from %" PRId64 " documents (%" PRId64 " bytes): %d merges, %.1f s\n", s.docs,
                s.bytes, merges, ra_now() - t0);
    ra_bytes_free(&json);
    ra_bpe_trainer_free(s.train);
    return 0;
}

static int run_gen_kv(const opts *o) {
    ra_error err = {0};
    ra_bytes out = {0};
    if (kv_docs_mix_jsonl(o->words ? o->words : PROBE_DEFAULT_WORDS, o->seed, o->gen_kv, o->files, o->nfiles, &out, &err))
        ra_die_error(&err);
    if (strcmp(o->out, "-") == 0) {
        out_write(stdout, out.v, out.n);
        if (fflush(stdout) != 0 || ferror(stdout)) ra_die(EX_IOERR, "standard output: write error");
    } else if (ra_write_file_atomic(o->out, out.v, out.n, &err)) {
        ra_die_error(&err);
    }
    ra_bytes_free(&out);
    return 0;
}

/* ---------------------------------------------------------------- stream -> text / ids */

static void out_write(FILE *f, const void *p, size_t n) {
    if (n && fwrite(p, 1, n, f) != n) ra_die(EX_IOERR, "write error: %s", strerror(errno));
}

static int run_from_stream(const opts *o) {
    ra_error err = {0};
    const char *in = o->nfiles ? o->files[0] : "-";
    ra_tokenizer *tok = o->mode == MODE_DECODE ? load_tokenizer(o->tokenizer) : NULL;
    ra_tokens_reader *r = ra_tokens_reader_open(in, &err);
    if (!r) ra_die_error(&err);
    const ra_tokens_tokenizer *st = ra_tokens_reader_tokenizer(r);
    if (tok && st->present && strcmp(st->id, ra_tokenizer_id(tok)) != 0)
        ra_die(EX_DATAERR, "%s: made with tokenizer %s, but %s is tokenizer %s", strcmp(in, "-") ? in : "<stdin>",
               st->id, o->tokenizer, ra_tokenizer_id(tok));
    ra_atomic_file af = {0};
    FILE *out = stdout;
    if (strcmp(o->out, "-") != 0) {
        if (ra_atomic_open(&af, o->out, &err)) ra_die_error(&err);
        out = af.f;
    }
    const int32_t *ids;
    int64_t n, index = 0;
    int rc;
    ra_bytes text = {0};
    while ((rc = ra_tokens_reader_next(r, &ids, &n, &err)) == 1) {
        if (o->mode == MODE_TO_IDS) {
            for (int64_t i = 0; i < n; i++) fprintf(out, i ? " %d" : "%d", ids[i]);
            fputc('\n', out);
        } else {
            text.n = 0;
            if (ra_tokenizer_decode(tok, ids, n, &text, &err)) {
                ra_error_prefix(&err, "%s: %s %" PRId64, in, ra_tokens_reader_packed(r) ? "row" : "doc", index);
                ra_die_error(&err);
            }
            if (o->input == IN_JSONL) {
                json_t *obj = json_object();
                json_object_set_new(obj, o->field, json_stringn(text.v ? text.v : "", text.n));
                char *s = json_dumps(obj, JSON_COMPACT | JSON_ENSURE_ASCII);
                out_write(out, s, strlen(s));
                out_write(out, "\n", 1);
                free(s);
                json_decref(obj);
            } else {
                out_write(out, text.v, text.n);
                if (o->input == IN_LINES) out_write(out, "\n", 1);
            }
        }
        index++;
    }
    if (rc < 0) {
        if (out != stdout) ra_atomic_abort(&af);
        ra_die_error(&err);
    }
    if (out != stdout) {
        if (ra_atomic_commit(&af, &err)) ra_die_error(&err);
    } else if (fflush(stdout) != 0 || ferror(stdout)) {
        ra_die(EX_IOERR, "standard output: write error");
    }
    ra_bytes_free(&text);
    ra_tokens_reader_close(r);
    ra_tokenizer_free(tok);
    return 0;
}

/* ---------------------------------------------------------------- flags */

static void parse_args(int argc, char **argv, opts *o) {
    enum { O_LINES = 256, O_JSONL, O_FIELD, O_SPECIALS, O_IDS, O_DECODE, O_TO_IDS, O_PACK, O_PAD, O_SPLIT,
           O_HELDOUT, O_SEED, O_STATS, O_TRAIN_BPE, O_GEN_KV, O_WORDS };
    static const struct option longs[] = {
        {"lines", no_argument, 0, O_LINES},     {"jsonl", no_argument, 0, O_JSONL},
        {"field", required_argument, 0, O_FIELD}, {"specials", required_argument, 0, O_SPECIALS},
        {"ids", no_argument, 0, O_IDS},         {"decode", no_argument, 0, O_DECODE},
        {"to-ids", no_argument, 0, O_TO_IDS},   {"pack", required_argument, 0, O_PACK},
        {"pad", required_argument, 0, O_PAD},   {"split", required_argument, 0, O_SPLIT},
        {"heldout", required_argument, 0, O_HELDOUT}, {"seed", required_argument, 0, O_SEED},
        {"stats", no_argument, 0, O_STATS},     {"train-bpe", required_argument, 0, O_TRAIN_BPE},
        {"gen-kv", required_argument, 0, O_GEN_KV}, {"words", required_argument, 0, O_WORDS},
        {0, 0, 0, 0}};
    *o = (opts){.mode = MODE_TEXT, .input = IN_WHOLE, .specials = 1, .field = NULL, .out = "-", .pad = -1,
                .seed = 1};
    int modes = 0, inputs = 0, specials_given = 0, c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":t:o:q", longs, NULL)) != -1) {
        switch (c) {
        case 't': o->tokenizer = optarg; break;
        case 'o': o->out = optarg; break;
        case 'q': ra_progress_quiet = 1; break;
        case O_LINES: o->input = IN_LINES, inputs++; break;
        case O_JSONL: o->input = IN_JSONL, inputs++; break;
        case O_FIELD: o->field = optarg; break;
        case O_SPECIALS:
            if (strcmp(optarg, "yes") == 0) o->specials = 1;
            else if (strcmp(optarg, "no") == 0) o->specials = 0;
            else ra_usage_error("--specials: expected yes or no, got '%s'", optarg);
            specials_given = 1;
            break;
        case O_IDS: o->mode = MODE_IDS, modes++; break;
        case O_DECODE: o->mode = MODE_DECODE, modes++; break;
        case O_TO_IDS: o->mode = MODE_TO_IDS, modes++; break;
        case O_PACK: o->pack = ra_parse_int("--pack", optarg, 1, INT32_MAX); break;
        case O_PAD: o->pad = (int32_t)ra_parse_int("--pad", optarg, 0, INT32_MAX); break;
        case O_SPLIT:
            o->split = ra_parse_double("--split", optarg, 0, 1);
            if (o->split <= 0 || o->split >= 1) ra_usage_error("--split: %s is not strictly between 0 and 1", optarg);
            break;
        case O_HELDOUT: o->heldout = optarg; break;
        case O_SEED: o->seed = (uint64_t)ra_parse_int("--seed", optarg, 0, INT64_MAX), o->seed_given = 1; break;
        case O_STATS: o->stats = 1; break;
        case O_TRAIN_BPE:
            o->train_vocab = ra_parse_int("--train-bpe", optarg, RA_BPE_MIN_VOCAB, RA_BPE_MAX_VOCAB);
            o->mode = MODE_TRAIN, modes++;
            break;
        case O_GEN_KV: o->gen_kv = ra_parse_int("--gen-kv", optarg, 1, 100000000), o->mode = MODE_GEN_KV, modes++; break;
        case O_WORDS: o->words = optarg; break;
        case ':': ra_usage_error("option '%s' needs an argument", argv[optind - 1]);
        default: ra_usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    o->files = argv + optind;
    o->nfiles = argc - optind;
    if (modes > 1) ra_usage_error("--ids, --decode, --to-ids, --train-bpe and --gen-kv exclude each other");
    if (o->words && o->mode != MODE_GEN_KV) ra_usage_error("--words is for --gen-kv");
    if (o->mode == MODE_GEN_KV) {
        if (!o->seed_given) o->seed = 7; /* 1 is ra-probe's prompt seed, refused by kv_docs */
        if (o->tokenizer || inputs || o->field || specials_given || o->pack || o->pad >= 0 || o->heldout ||
            o->split > 0 || o->stats)
            ra_usage_error("--gen-kv takes only --seed, --words, -o and text FILEs");
        return;
    }
    if (o->mode == MODE_TRAIN) {
        if (o->tokenizer) ra_usage_error("--train-bpe learns a tokenizer; -t does not apply");
        if (specials_given || o->pack || o->pad >= 0 || o->heldout || o->split > 0 || o->stats || o->seed_given)
            ra_usage_error("--train-bpe takes only --lines/--jsonl/--field, -o and input files");
        if (o->field && o->input != IN_JSONL) ra_usage_error("--field needs --jsonl");
        if (!o->field) o->field = "text";
        return;
    }
    if (inputs > 1) ra_usage_error("--lines and --jsonl exclude each other");
    if (o->field && o->input != IN_JSONL) ra_usage_error("--field needs --jsonl");
    if (!o->field) o->field = "text";
    int encoding = o->mode == MODE_TEXT || o->mode == MODE_IDS;
    if ((o->mode == MODE_TEXT || o->mode == MODE_DECODE) && !o->tokenizer)
        ra_usage_error("%s needs a tokenizer: -t MODEL_DIR or -t tokenizer.json",
                       o->mode == MODE_DECODE ? "--decode" : "encoding text");
    if (o->mode == MODE_TO_IDS && o->tokenizer) ra_usage_error("--to-ids takes no tokenizer");
    if (o->mode == MODE_IDS && (inputs || specials_given))
        ra_usage_error("--ids reads one document per line of ids; --lines, --jsonl and --specials do not apply");
    if (o->mode == MODE_TO_IDS && inputs) ra_usage_error("--to-ids writes one line per document; --lines/--jsonl do not apply");
    if (!encoding && (specials_given || o->pack || o->pad >= 0 || o->heldout || o->split > 0 || o->stats))
        ra_usage_error("--specials, --pack, --pad, --split, --heldout and --stats are for encoding");
    if (!encoding && o->nfiles > 1) ra_usage_error("%s reads one stream", o->mode == MODE_DECODE ? "--decode" : "--to-ids");
    if (o->pad >= 0 && !o->pack) ra_usage_error("--pad needs --pack");
    if ((o->split > 0) != (o->heldout != NULL)) ra_usage_error("--split and --heldout go together");
    if (o->heldout && strcmp(o->heldout, "-") == 0) ra_usage_error("--heldout needs a file name");
    if (o->heldout && strcmp(o->heldout, o->out) == 0) ra_usage_error("--heldout and -o name the same file");
}

int main(int argc, char **argv) {
    ra_cli_init(argc, argv, "ra-tok", usage);
    opts o;
    parse_args(argc, argv, &o);
    if (o.mode == MODE_TRAIN) return run_train(&o);
    if (o.mode == MODE_GEN_KV) return run_gen_kv(&o);
    if (o.mode == MODE_TEXT || o.mode == MODE_IDS) return run_encode(&o);
    return run_from_stream(&o);
}

#include <unistd.h>

#include "probe_prompts.h"
#include "test.h"

static char tmpdir[] = "/tmp/ra_test_prompts.XXXXXX";

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

TEST(word_filter_and_dedup) {
    char path[256];
    snprintf(path, sizeof path, "%s/w.txt", tmpdir);
    write_file(path, "apple\nApple\nab\nabc\nbanana\r\napple\nverylongword\ncafé\nabcdefghij\nx1y\n\ncherry\nbanana\n"
                     "zzz");
    probe_words w;
    ra_error err = {0};
    EXPECT_EQ_INT(probe_words_load(path, &w, &err), 0);
    const char *want[] = {"apple", "abc", "banana", "abcdefghij", "cherry", "zzz"};
    EXPECT_EQ_INT(w.n, 6);
    for (int i = 0; i < 6 && i < w.n; i++) EXPECT_STR(w.w[i], want[i]);
    probe_words_free(&w);
}

TEST(word_file_missing) {
    probe_words w;
    ra_error err = {0};
    EXPECT_EQ_INT(probe_words_load("/nonexistent/words", &w, &err), EX_NOINPUT);
    EXPECT(strstr(err.msg, "/nonexistent/words") != NULL);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

TEST(system_word_list_large_dedup) {
    probe_words w;
    ra_error err = {0};
    if (access(PROBE_DEFAULT_WORDS, R_OK) != 0) return; /* the default list is a package, not a given */
    EXPECT_EQ_INT(probe_words_load(PROBE_DEFAULT_WORDS, &w, &err), 0);
    EXPECT(w.n > 1000);
    /* independent quadratic-free check of distinctness: sort a copy */
    char **copy = malloc(w.n * sizeof(char *));
    memcpy(copy, w.w, w.n * sizeof(char *));
    qsort(copy, w.n, sizeof(char *), cmp_str);
    for (int i = 1; i < w.n; i++) EXPECT(strcmp(copy[i - 1], copy[i]) != 0);
    free(copy);
    probe_words_free(&w);
}

static probe_words make_words(int n) {
    probe_words w = {n, malloc(n * sizeof(char *)), strdup("mem")};
    for (int i = 0; i < n; i++) {
        w.w[i] = malloc(8);
        /* distinct lower-case words: base-26 digits of i, 3 letters */
        w.w[i][0] = 'a' + i / 676, w.w[i][1] = 'a' + i / 26 % 26, w.w[i][2] = 'a' + i % 26, w.w[i][3] = 0;
    }
    return w;
}

TEST(prompt_text_byte_for_byte) {
    probe_words w = make_words(200);
    probe_prompts ps;
    ra_error err = {0};
    EXPECT_EQ_INT(probe_prompts_generate(&w, 7, 3, 5, &ps, &err), 0);
    for (int i = 0; i < ps.n; i++) {
        const probe_prompt *p = &ps.p[i];
        char want[512];
        snprintf(want, sizeof want, "Memorize the following dictionary:\n%s:%d\n%s:%d\n%s:%d\nThe value of the key '%s' is",
                 p->key[0], p->value[0], p->key[1], p->value[1], p->key[2], p->value[2], p->key[p->query]);
        EXPECT_STR(p->text, want);
    }
    probe_prompts_free(&ps);
    probe_words_free(&w);
}

TEST(prompts_distinct_keys_values_and_in_range) {
    probe_words w = make_words(120);
    probe_prompts ps;
    ra_error err = {0};
    EXPECT_EQ_INT(probe_prompts_generate(&w, 3, 100, 40, &ps, &err), 0);
    for (int i = 0; i < ps.n; i++) {
        const probe_prompt *p = &ps.p[i];
        int seen_v[100] = {0};
        for (int j = 0; j < p->pairs; j++) {
            EXPECT(p->value[j] >= 0 && p->value[j] < 100);
            EXPECT(!seen_v[p->value[j]]);
            seen_v[p->value[j]] = 1;
            for (int k = 0; k < j; k++) EXPECT(strcmp(p->key[j], p->key[k]) != 0);
        }
        EXPECT(p->query >= 0 && p->query < p->pairs);
        EXPECT_EQ_INT(probe_answer(p), p->value[p->query]);
    }
    probe_prompts_free(&ps);
    probe_words_free(&w);
}

TEST(prompts_deterministic_for_seed_and_differ_across_seeds) {
    probe_words w = make_words(500);
    probe_prompts a, b, c;
    ra_error err = {0};
    EXPECT_EQ_INT(probe_prompts_generate(&w, 11, 50, 20, &a, &err), 0);
    EXPECT_EQ_INT(probe_prompts_generate(&w, 11, 50, 20, &b, &err), 0);
    EXPECT_EQ_INT(probe_prompts_generate(&w, 12, 50, 20, &c, &err), 0);
    int differ = 0;
    for (int i = 0; i < 20; i++) {
        EXPECT_STR(a.p[i].text, b.p[i].text);
        differ += strcmp(a.p[i].text, c.p[i].text) != 0;
    }
    EXPECT(differ == 20);
    probe_prompts_free(&a);
    probe_prompts_free(&b);
    probe_prompts_free(&c);
    probe_words_free(&w);
}

/* Statistical sanity: the queried index and the values are roughly uniform
 * (chi-square far below what a broken generator gives). */
TEST(query_and_values_roughly_uniform) {
    probe_words w = make_words(300);
    probe_prompts ps;
    ra_error err = {0};
    int K = 10, N = 20000;
    EXPECT_EQ_INT(probe_prompts_generate(&w, 5, K, N, &ps, &err), 0);
    double q[10] = {0}, v[100] = {0};
    for (int i = 0; i < N; i++) {
        q[ps.p[i].query]++;
        for (int j = 0; j < K; j++) v[ps.p[i].value[j]]++;
    }
    double chi_q = 0, chi_v = 0, eq = (double)N / K, ev = (double)N * K / 100;
    for (int i = 0; i < K; i++) chi_q += (q[i] - eq) * (q[i] - eq) / eq;
    for (int i = 0; i < 100; i++) chi_v += (v[i] - ev) * (v[i] - ev) / ev;
    EXPECT_MSG(chi_q < 40, "chi2 of query index %g (9 dof)", chi_q);
    EXPECT_MSG(chi_v < 200, "chi2 of values %g (99 dof)", chi_v);
    probe_prompts_free(&ps);
    probe_words_free(&w);
}

TEST(too_few_words_and_bad_pairs) {
    probe_words w = make_words(10);
    probe_prompts ps;
    ra_error err = {0};
    EXPECT_EQ_INT(probe_prompts_generate(&w, 1, 11, 4, &ps, &err), EX_DATAERR);
    EXPECT(strstr(err.msg, "10 usable words") != NULL);
    EXPECT_EQ_INT(probe_prompts_generate(&w, 1, 0, 4, &ps, &err), EX_USAGE);
    probe_words_free(&w);
    w = make_words(300);
    EXPECT_EQ_INT(probe_prompts_generate(&w, 1, 101, 4, &ps, &err), EX_USAGE);
    EXPECT_EQ_INT(probe_prompts_generate(&w, 1, 100, 4, &ps, &err), 0);
    probe_prompts_free(&ps);
    probe_words_free(&w);
}

TEST(continuations) {
    char buf[8];
    EXPECT_STR(probe_continuation(42, PROBE_SCORE_CHOICE, buf), "42");
    EXPECT_STR(probe_continuation(7, PROBE_SCORE_LAST_TOKEN, buf), " 7");
    probe_score_mode m;
    EXPECT_EQ_INT(probe_score_parse("last-token", &m), 0);
    EXPECT_EQ_INT(m, PROBE_SCORE_LAST_TOKEN);
    EXPECT_EQ_INT(probe_score_parse("bogus", &m), -1);
}

TEST(dump_format) {
    probe_words w = make_words(50);
    probe_prompts ps;
    ra_error err = {0};
    EXPECT_EQ_INT(probe_prompts_generate(&w, 2, 2, 2, &ps, &err), 0);
    char path[256];
    snprintf(path, sizeof path, "%s/dump.txt", tmpdir);
    EXPECT_EQ_INT(probe_prompts_dump(&ps, path, &err), 0);
    char want[2048], got[2048] = {0};
    snprintf(want, sizeof want, "# prompt 1 of 2: answer %d\n%s\n\n# prompt 2 of 2: answer %d\n%s\n\n",
             probe_answer(&ps.p[0]), ps.p[0].text, probe_answer(&ps.p[1]), ps.p[1].text);
    FILE *f = fopen(path, "r");
    size_t n = fread(got, 1, sizeof got - 1, f);
    fclose(f);
    got[n] = 0;
    EXPECT_STR(got, want);
    unlink(path);
    probe_prompts_free(&ps);
    probe_words_free(&w);
}

int main(void) {
    if (!mkdtemp(tmpdir)) return 1;
    RUN(word_filter_and_dedup);
    RUN(word_file_missing);
    RUN(system_word_list_large_dedup);
    RUN(prompt_text_byte_for_byte);
    RUN(prompts_distinct_keys_values_and_in_range);
    RUN(prompts_deterministic_for_seed_and_differ_across_seeds);
    RUN(query_and_values_roughly_uniform);
    RUN(too_few_words_and_bad_pairs);
    RUN(continuations);
    RUN(dump_format);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd)) {}
    return test_summary();
}

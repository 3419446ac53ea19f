/* Test helper: print a plan in a stable text form for the bats suites.
 *
 *   plan-info PLAN
 *
 * Output: "teacher ID", "shape L H KV HD", "kept N", "kv B SHARED", then one
 * line per layer "layer L: h h h" (kept heads ascending), then the
 * selection as JSON.  Exit codes are ra_plan_load's. */
#include <stdio.h>
#include <stdlib.h>

#include "error.h"
#include "plan.h"

int main(int argc, char **argv) {
    ra_progname = "plan-info";
    if (argc != 2) ra_die(64, "usage: plan-info PLAN");
    ra_plan p;
    ra_error err = {0};
    if (ra_plan_load(argv[1], &p, &err)) ra_die_error(&err);
    printf("teacher %s\nshape %d %d %d %d\nkept %d\nkv %lld %lld\n", p.teacher_id, p.shape.layers, p.shape.heads,
           p.shape.kv_heads, p.shape.head_dim, p.kept, (long long)ra_kv_bytes_per_token(&p.shape, p.keep),
           (long long)ra_kv_bytes_per_token_shared(&p.shape, p.keep));
    int *heads = xmalloc((size_t)p.shape.heads * sizeof(int));
    for (int l = 0; l < p.shape.layers; l++) {
        int n = ra_plan_layer_heads(&p, l, heads);
        printf("layer %d:", l);
        for (int i = 0; i < n; i++) printf(" %d", heads[i]);
        printf("\n");
    }
    ra_reader *r = ra_reader_open(argv[1], &err);
    if (!r) ra_die_error(&err);
    char *sel = json_dumps(json_object_get(ra_reader_meta(r), "selection"), JSON_SORT_KEYS | JSON_COMPACT);
    printf("selection %s\n", sel ? sel : "null");
    free(sel);
    ra_reader_close(r);
    free(heads);
    ra_plan_free(&p);
    return 0;
}

#include <sys/stat.h>
#include <unistd.h>

#include "atomic_file.h"
#include "test.h"

/* Writing "atomically" to /dev/null must not rename a temp file over the
 * device node (a tool run with -o /dev/null as root would destroy it). */
TEST(device_targets_are_written_in_place) {
    struct stat before, after;
    EXPECT(stat("/dev/null", &before) == 0 && S_ISCHR(before.st_mode));
    ra_atomic_file af;
    ra_error err = {0};
    EXPECT(ra_atomic_open(&af, "/dev/null", &err) == 0);
    EXPECT(fwrite("x", 1, 1, af.f) == 1);
    EXPECT(ra_atomic_commit(&af, &err) == 0);
    EXPECT(stat("/dev/null", &after) == 0 && S_ISCHR(after.st_mode));
    EXPECT(after.st_rdev == before.st_rdev);
}

TEST(regular_targets_appear_only_on_commit) {
    char dir[] = "/tmp/ra-atomic-XXXXXX";
    EXPECT(mkdtemp(dir) != NULL);
    char path[256];
    snprintf(path, sizeof path, "%s/out.bin", dir);
    ra_atomic_file af;
    ra_error err = {0};
    EXPECT(ra_atomic_open(&af, path, &err) == 0);
    EXPECT(fwrite("abc", 1, 3, af.f) == 3);
    EXPECT(access(path, F_OK) != 0);
    EXPECT(ra_atomic_commit(&af, &err) == 0);
    struct stat st;
    EXPECT(stat(path, &st) == 0 && st.st_size == 3);
    EXPECT(ra_atomic_open(&af, dir, &err) == EX_USAGE);
    unlink(path);
    rmdir(dir);
}

int main(void) {
    RUN(device_targets_are_written_in_place);
    RUN(regular_targets_appear_only_on_commit);
    return test_summary();
}

#include "atomic_file.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* An existing target that is not a regular file (/dev/null, a FIFO, a
 * terminal) cannot be replaced by rename without destroying it: write it in
 * place.  There is nothing half-written for Make to mistake for done there. */
static int open_in_place(ra_atomic_file *af, const char *path, ra_error *err) {
    af->f = fopen(path, "wb");
    if (!af->f) return ra_fail(err, EX_CANTCREAT, "%s: cannot open: %s", path, strerror(errno));
    af->path = xstrdup(path);
    return 0;
}

int ra_atomic_open(ra_atomic_file *af, const char *path, ra_error *err) {
    memset(af, 0, sizeof *af);
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
        if (S_ISDIR(st.st_mode)) return ra_fail(err, EX_USAGE, "%s: output path names a directory", path);
        return open_in_place(af, path, err);
    }
    const char *slash = strrchr(path, '/');
    size_t dirlen = slash ? (size_t)(slash - path + 1) : 0;
    const char *base = slash ? slash + 1 : path;
    if (!*base) return ra_fail(err, EX_USAGE, "%s: output path names a directory", path);
    size_t n = strlen(path) + 32;
    af->tmp_path = xmalloc(n);
    snprintf(af->tmp_path, n, "%.*s.%s.tmp.XXXXXX", (int)dirlen, path, base);
    int fd = mkstemp(af->tmp_path);
    if (fd < 0) {
        int e = errno;
        free(af->tmp_path);
        af->tmp_path = NULL;
        return ra_fail(err, e == ENOENT ? EX_CANTCREAT : EX_IOERR, "%s: cannot create: %s", path,
                       strerror(e));
    }
    /* mkstemp creates 0600; artifacts are ordinary files, so honour the umask. */
    mode_t mask = umask(0);
    umask(mask);
    fchmod(fd, 0666 & ~mask);
    af->f = fdopen(fd, "wb");
    if (!af->f) {
        close(fd);
        unlink(af->tmp_path);
        free(af->tmp_path);
        af->tmp_path = NULL;
        return ra_fail(err, EX_IOERR, "%s: fdopen failed", path);
    }
    af->path = xstrdup(path);
    return 0;
}

static void atomic_free(ra_atomic_file *af) {
    free(af->path);
    free(af->tmp_path);
    memset(af, 0, sizeof *af);
}

int ra_atomic_commit(ra_atomic_file *af, ra_error *err) {
    int rc = 0;
    if (fflush(af->f) != 0 || ferror(af->f))
        rc = ra_fail(err, EX_IOERR, "%s: write failed: %s", af->path, strerror(errno));
    else if (af->tmp_path && fsync(fileno(af->f)) != 0 && errno != EINVAL)
        rc = ra_fail(err, EX_IOERR, "%s: fsync failed: %s", af->path, strerror(errno));
    if (fclose(af->f) != 0 && !rc) rc = ra_fail(err, EX_IOERR, "%s: close failed: %s", af->path, strerror(errno));
    af->f = NULL;
    if (af->tmp_path) {
        if (!rc && rename(af->tmp_path, af->path) != 0)
            rc = ra_fail(err, EX_IOERR, "%s: rename failed: %s", af->path, strerror(errno));
        if (rc) unlink(af->tmp_path);
    }
    atomic_free(af);
    return rc;
}

void ra_atomic_abort(ra_atomic_file *af) {
    if (af->f) fclose(af->f);
    if (af->tmp_path) unlink(af->tmp_path);
    atomic_free(af);
}

int ra_write_file_atomic(const char *path, const void *data, size_t n, ra_error *err) {
    ra_atomic_file af;
    int rc = ra_atomic_open(&af, path, err);
    if (rc) return rc;
    if (n && fwrite(data, 1, n, af.f) != n) {
        ra_atomic_abort(&af);
        return ra_fail(err, EX_IOERR, "%s: write failed: %s", path, strerror(errno));
    }
    return ra_atomic_commit(&af, err);
}

int ra_check_binary_stdout(ra_error *err) {
    if (isatty(STDOUT_FILENO))
        return ra_fail(err, EX_USAGE, "refusing to write binary data to a terminal (use -o FILE or a redirect)");
    return 0;
}

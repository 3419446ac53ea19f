/* The start of every GPU test program (tests/gpu/test_gpu_*.c): open the
 * device and name it in a TAP comment, or report one failed test and let
 * main return 1 when there is no usable GPU. */
#ifndef RA_GPU_TEST_H
#define RA_GPU_TEST_H

#include <stdio.h>

#include "error.h"
#include "ops_cuda.h"

static int gpu_test_start(void) {
    ra_error err = {0, ""};
    if (cuda_device_init(0, &err)) {
        printf("not ok 1 - CUDA device: %s\n1..1\n", err.msg);
        return 1;
    }
    char desc[256];
    cuda_device_describe(desc, sizeof desc);
    printf("# %s\n", desc);
    return 0;
}

#endif

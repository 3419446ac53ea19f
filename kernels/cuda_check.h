/* Return-code checks for the CUDA runtime and cuBLAS: print file:line, the
 * failing expression and the library's own message, then exit.  A failed
 * allocation says how much was asked and suggests a smaller batch. */
#ifndef RA_CUDA_CHECK_H
#define RA_CUDA_CHECK_H

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <sysexits.h>

#define CUDA_CHECK(expr)                                                                  \
    do {                                                                                  \
        cudaError_t e_ = (expr);                                                          \
        if (e_ != cudaSuccess) {                                                          \
            fprintf(stderr, "%s:%d: CUDA error in %s: %s%s\n", __FILE__, __LINE__, #expr,  \
                    cudaGetErrorString(e_),                                               \
                    e_ == cudaErrorMemoryAllocation ? " (GPU out of memory: try a smaller --batch or --seq-len)" : ""); \
            exit(e_ == cudaErrorMemoryAllocation ? EX_TEMPFAIL : EX_SOFTWARE);            \
        }                                                                                 \
    } while (0)

/* After a kernel launch: launch-configuration errors show up here. */
#define CUDA_CHECK_LAST() CUDA_CHECK(cudaGetLastError())

#define CUBLAS_CHECK(expr)                                                                \
    do {                                                                                  \
        cublasStatus_t s_ = (expr);                                                       \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                \
            fprintf(stderr, "%s:%d: cuBLAS error in %s: %s\n", __FILE__, __LINE__, #expr,  \
                    cublasGetStatusString(s_));                                           \
            exit(s_ == CUBLAS_STATUS_ALLOC_FAILED ? EX_TEMPFAIL : EX_SOFTWARE);           \
        }                                                                                 \
    } while (0)

#endif

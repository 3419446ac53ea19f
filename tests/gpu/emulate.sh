#!/usr/bin/env bash
# The GPU tests on a machine without a GPU: the host code of
# kernels/forward_cuda.cu compiled as C++, every op of kernels/ops_cuda.h
# emulated on the CPU by tests/gpu/cuda_emul.c (CPU twins, bf16 storage).
# Checks the orchestration of the forward pass, the hybrid mixer and the
# decoder (layouts, strides, options, caches), not the kernels
# (tests/gpu/cuda_emul_hybrid.c emulates the hybrid and DiscreteMamba2 ops).
# EMUL_TESTS="tests/gpu/test_gpu_decode.c" runs a subset.  From the repository root:  tests/gpu/emulate.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
E=build/emul
mkdir -p $E
CFLAGS=(-O2 -g -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -fopenmp -Ilib -Ikernels
        -I/usr/include/x86_64-linux-gnu/openblas-pthread '-DRA_VERSION="emul"' -DRA_HAVE_CUDA=1)
LIBS=(-lmsgpackc -lxxhash -ljansson -lopenblas -lpcre2-8 -lm -lpthread -lstdc++)
rm -f $E/*.o $E/libemul.a
for f in lib/*.c; do gcc "${CFLAGS[@]}" -c "$f" -o "$E/$(basename "$f" .c).o"; done
extra=(); [ -f lib/model_load.c ] || extra=(-DEMUL_NO_MODEL_LOAD)
gcc "${CFLAGS[@]}" "${extra[@]}" -c tests/gpu/cuda_emul.c -o $E/cuda_emul.o
gcc "${CFLAGS[@]}" -c tests/gpu/cuda_emul_hybrid.c -o $E/cuda_emul_hybrid.o
# the host code of the CUDA forward, hybrid mixer and decoder
for f in forward_cuda forward_hybrid_cuda decode_cuda; do
    g++ -x c++ -std=c++17 -O2 -g -Wall -Wextra -Werror -Ilib -Ikernels -DRA_HAVE_CUDA=1 -c kernels/$f.cu -o $E/$f.o
done
# an archive, so only what the tests reach is linked (other CUDA parts are not emulated)
ar rcs $E/libemul.a $E/*.o
status=0
# the tests of kernels/ops_cuda.h, forward_cuda.h, the hybrid forward and decode_cuda.h
for t in ${EMUL_TESTS:-tests/gpu/test_gpu_ops.c tests/gpu/test_gpu_forward.c tests/gpu/test_gpu_hybrid.c tests/gpu/test_gpu_decode.c}; do
    name=$(basename "$t" .c)
    gcc "${CFLAGS[@]}" -Itests/unit "$t" $E/libemul.a -o "$E/$name" -fopenmp "${LIBS[@]}"
    echo "# $name (emulated)"
    "$E/$name" || status=1
done
exit $status

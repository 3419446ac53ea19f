# ra — retrieval-aware distillation toolkit.
#   make            build lib/libra.a and every tool in bin/ (CUDA kernels when nvcc is found)
#   make CUDA=0     CPU-only build
#   make test       C unit tests + bats suites (+ fuzz smoke when clang is present)
#   make test-gpu   CUDA ops vs CPU twins and golden logits (needs a GPU)
#   make deps       install the Debian packages the project needs (root)
#   make install PREFIX=/usr/local

PREFIX   ?= /usr/local
VERSION  := 0.1.0
CUDA_HOME ?= /usr/local/cuda
NVCC     ?= $(shell command -v nvcc 2>/dev/null || { test -x $(CUDA_HOME)/bin/nvcc && echo $(CUDA_HOME)/bin/nvcc; })
CUDA     ?= $(if $(NVCC),1,0)
# Optional prefix holding headers and static libraries of the dependencies
# (used on machines without the Debian packages, e.g. the GPU machine).
DEPS_PREFIX ?=

CC       ?= gcc
CFLAGS   ?= -O2 -g
CFLAGS   += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -fopenmp -MMD -MP \
            -Ilib -Ikernels -I/usr/include/x86_64-linux-gnu/openblas-pthread \
            -DRA_VERSION='"$(VERSION)"' -DRA_HAVE_CUDA=$(CUDA)
BASE_LDLIBS := -lmsgpackc -lxxhash -ljansson -lopenblas -lpcre2-8 -lm -lpthread
# ICU (optional): the NFC normalizer of Qwen2 tokenizers; without it NFC is refused.
ICU      ?= $(shell pkg-config --exists icu-uc 2>/dev/null && echo 1 || echo 0)
CFLAGS   += -DRA_HAVE_ICU=$(ICU)
ifeq ($(ICU),1)
BASE_LDLIBS += -licuuc
endif
LDLIBS   := $(BASE_LDLIBS)
LDFLAGS  += -fopenmp
ifneq ($(DEPS_PREFIX),)
CFLAGS   += -I$(DEPS_PREFIX)/include
LDFLAGS  += -L$(DEPS_PREFIX)/lib
endif

NVCCFLAGS ?= -O3 -g -lineinfo
NVCCFLAGS += -std=c++17 -Ilib -Ikernels -DRA_HAVE_CUDA=1 \
             -gencode arch=compute_90a,code=sm_90a -gencode arch=compute_90,code=compute_90 \
             -Xcompiler -Wall,-Wextra,-Werror,-fPIC -MMD -MP
ifneq ($(DEPS_PREFIX),)
NVCCFLAGS += -I$(DEPS_PREFIX)/include
endif
ifeq ($(CUDA),1)
LDLIBS   += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart -lstdc++
endif

LIB_SRC  := $(wildcard lib/*.c)
CU_SRC   := $(if $(filter 1,$(CUDA)),$(wildcard kernels/*.cu))
LIB_OBJ  := $(LIB_SRC:%.c=build/%.o) $(CU_SRC:%.cu=build/%.o)
TOOLS    := $(patsubst %.c,%,$(wildcard bin/ra-*.c))
UNIT     := $(patsubst tests/unit/%.c,build/tests/%,$(wildcard tests/unit/test_*.c))
# The flash attention kernel compiled for the host against a warp simulator
# (C++, no GPU needed), so CI checks its logic too.
UNIT     += build/tests/test_flash_sim
# The SSD and DiscreteMamba2 kernels compiled for the host against a warp
# simulator (tests/unit/cuda_sim.h) and checked against their CPU twins.
UNIT     += build/tests/test_ssd_sim
# The decode attention kernel on the same simulator, against float64 attention.
UNIT     += build/tests/test_decode_sim
GPU_TESTS := $(patsubst tests/gpu/%.c,build/tests/%,$(wildcard tests/gpu/test_*.c))
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
MAN      := $(wildcard man/*.[157])

# Objects are rebuilt when the configuration changes (e.g. CUDA=0 after a CUDA
# build): the stamp's content is the configuration, rewritten only when it differs.
CONFIG_STAMP := build/config.stamp
CONFIG_LINE  := CUDA=$(CUDA) ICU=$(ICU) DEPS_PREFIX=$(DEPS_PREFIX)
$(shell mkdir -p build; echo '$(CONFIG_LINE)' | cmp -s - $(CONFIG_STAMP) || echo '$(CONFIG_LINE)' > $(CONFIG_STAMP))

.PHONY: all test unit bats fuzz-smoke test-gpu test-gpu-bins bench-bins install deps clean
all: lib/libra.a $(TOOLS) $(UNIT) build/tests/mk-hf

lib/libra.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

build/lib/%.o: lib/%.c $(CONFIG_STAMP)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c $< -o $@

build/kernels/%.o: kernels/%.cu $(CONFIG_STAMP)
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

bin/ra-%: bin/ra-%.c lib/libra.a
	$(CC) $(CFLAGS) $< -o $@ $(LDFLAGS) lib/libra.a $(LDLIBS)

build/tests/%: tests/unit/%.c tests/unit/test.h lib/libra.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -Itests/unit $< -o $@ $(LDFLAGS) lib/libra.a $(LDLIBS)

# Test-only helpers for the bats suites (tests/helpers/ra-*.c), not installed.
HELPERS  := $(patsubst tests/helpers/%.c,build/tests/%,$(wildcard tests/helpers/ra-*.c))
all: $(HELPERS)
build/tests/ra-%: tests/helpers/ra-%.c lib/libra.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $< -o $@ $(LDFLAGS) lib/libra.a $(LDLIBS)

# Test helper: tiny random Hugging Face checkpoints (used by the bats suites).
build/tests/mk-hf: tests/helpers/mk-hf.c lib/libra.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $< -o $@ $(LDFLAGS) lib/libra.a $(LDLIBS)

build/tests/test_flash_sim: tests/unit/test_flash_sim.cpp kernels/flash_attention.cuh
	@mkdir -p $(@D)
	$(CXX) -std=c++17 -O2 -g -Wall -Wextra -Werror -Wno-unknown-pragmas -Ikernels $< -o $@

build/tests/test_ssd_sim: tests/unit/test_ssd_sim.cpp tests/unit/cuda_sim.h kernels/ssd_kernels.cuh \
                          kernels/ssd_matrix.cuh kernels/dm2_kernels.cuh lib/libra.a
	@mkdir -p $(@D)
	$(CXX) -std=c++17 -O2 -g -Wall -Wextra -Werror -Wno-unknown-pragmas -Ilib -Ikernels -Itests/unit $< -o $@ \
	    $(LDFLAGS) lib/libra.a $(BASE_LDLIBS)

build/tests/test_decode_sim: tests/unit/test_decode_sim.cpp tests/unit/cuda_sim.h kernels/decode_attention.cuh
	@mkdir -p $(@D)
	$(CXX) -std=c++17 -O2 -g -Wall -Wextra -Werror -Wno-unknown-pragmas -Ilib -Ikernels -Itests/unit $< -o $@

build/tests/test_gpu_%: tests/gpu/test_gpu_%.c tests/unit/test.h lib/libra.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -Itests/unit $< -o $@ $(LDFLAGS) lib/libra.a $(LDLIBS)

# Test-only helper that writes and dumps ra streams for the bats suites (not installed).
all: build/tests/ra-mkstream
build/tests/ra-mkstream: tests/helpers/ra-mkstream.c lib/libra.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $< -o $@ $(LDFLAGS) lib/libra.a $(LDLIBS)

# Test-only helpers of the ra-rank / ra-probe suites: write scores, print plans.
all: build/tests/mk-scores build/tests/plan-info
build/tests/mk-scores build/tests/plan-info: build/tests/%: tests/helpers/%.c lib/libra.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $< -o $@ $(LDFLAGS) lib/libra.a $(LDLIBS)

# The unit tests, the bats suites and (with clang) a short fuzz run; one summary line.
test: all
	@tests/run.sh $(UNIT)

unit: all
	@RA_SKIP_BATS=1 RA_SKIP_FUZZ=1 tests/run.sh $(UNIT)

bats: all
	@RA_SKIP_UNIT=1 RA_SKIP_FUZZ=1 tests/run.sh

# libFuzzer targets: clang with -fsanitize=fuzzer,address,undefined over the library sources.
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
               -Ilib -I/usr/include/x86_64-linux-gnu/openblas-pthread -DRA_VERSION='"$(VERSION)"' -DRA_HAVE_CUDA=0 -DRA_HAVE_ICU=$(ICU) -fopenmp
FUZZ_BIN := $(patsubst tests/fuzz/%.c,build/fuzz/%,$(FUZZ_SRC))
build/fuzz/%: tests/fuzz/%.c $(LIB_SRC)
	@mkdir -p $(@D)
	clang $(FUZZ_CFLAGS) $< $(LIB_SRC) -o $@ $(BASE_LDLIBS)
fuzz-build: $(FUZZ_BIN)
FUZZ_SECONDS ?= 30
fuzz-smoke: fuzz-build
	@RA_SKIP_UNIT=1 RA_SKIP_BATS=1 FUZZ_SECONDS=$(FUZZ_SECONDS) tests/run.sh

# Build the GPU test binaries without running them (for a build-then-run GPU job).
test-gpu-bins: all $(GPU_TESTS)

# Benchmarks (bench/*.c; CUDA builds only): make bench-bins, then bench/run_forward.sh.
BENCH := $(patsubst bench/%.c,build/bench/%,$(wildcard bench/*.c))
build/bench/%: bench/%.c lib/libra.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -I$(CUDA_HOME)/include $< -o $@ $(LDFLAGS) lib/libra.a $(LDLIBS)
bench-bins: $(BENCH)

test-gpu: test-gpu-bins
	@RA_SKIP_BATS=1 RA_SKIP_FUZZ=1 tests/run.sh $(GPU_TESTS)

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 \
	           $(DESTDIR)$(PREFIX)/share/man/man5 $(DESTDIR)$(PREFIX)/share/man/man7
	install -m 755 $(TOOLS) $(DESTDIR)$(PREFIX)/bin/
	for m in $(MAN); do install -m 644 $$m $(DESTDIR)$(PREFIX)/share/man/man$${m##*.}/; done

DEB_PACKAGES := build-essential clang libclang-rt-14-dev pkg-config libmsgpack-dev libxxhash-dev \
                libjansson-dev libopenblas-dev libpcre2-dev libicu-dev parallel bats bats-assert bats-support \
                bats-file wamerican gnuplot-nox jq
deps:
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(DEB_PACKAGES)

clean:
	rm -rf build lib/libra.a $(TOOLS)

-include $(LIB_OBJ:.o=.d) $(UNIT:%=%.d)

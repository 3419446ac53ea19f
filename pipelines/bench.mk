# bench.mk: the benchmarks of DESIGN §8, one target each; every one runs a
# script of bench/ that times ra next to its PyTorch / transformers reference
# (bench/torch_ref/) in the same run and writes a table to bench/results/.
#
#   make -f pipelines/bench.mk all            # build, then every benchmark (GPU machine)
#   make -f pipelines/bench.mk train          # build, then one benchmark
#   make -f pipelines/bench.mk list           # the targets, their scripts and results
#
#   target    script                 result                      needs
#   forward   bench/run_forward.sh   bench/results/forward.md    GPU; torch, transformers
#   ssd       bench/run_ssd.sh       bench/results/ssd.md        GPU; torch
#   decode    bench/decode.sh        bench/results/decode.md     GPU; torch, transformers
#   probe     bench/probe.sh         bench/results/probe.md      GPU; torch, transformers
#   train     bench/train.sh         bench/results/train.md      GPU; torch, transformers
#   profile   bench/train_profile.sh bench/results/profile.md    GPU; python3 (no torch work)
#   tokenize  bench/tokenize.sh      bench/results/tokenize.md   CPU (HF tokenizers if installed)
#
# `build` runs the top-level make (all bench-bins: the tools, the test helpers
# and build/bench/*; CUDA when nvcc is found) with DEPS_PREFIX passed on when
# set (a GPU machine without the Debian -dev packages: DEPS_PREFIX=$PWD/.deps).
# Every GPU benchmark depends on it; tokenize builds bin/ra-tok (CUDA=0) itself.  The benchmarks are phony: timings are never
# cached, each run rewrites its table.  They run one at a time (one GPU), in
# the order above for `all`.  Each script takes its own variables from the
# environment (B, L, STEPS, OUT, ...; see the script's header), e.g.
#   make -f pipelines/bench.mk train STEPS=20
# passes STEPS on, as make exports command-line variables to the recipes.

ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))/..)
BENCHMARKS := forward ssd decode probe train profile tokenize
script_forward := bench/run_forward.sh
script_ssd := bench/run_ssd.sh
script_decode := bench/decode.sh
script_probe := bench/probe.sh
script_train := bench/train.sh
script_profile := bench/train_profile.sh
script_tokenize := bench/tokenize.sh

.PHONY: all build list $(BENCHMARKS)
.NOTPARALLEL:

all: $(BENCHMARKS)

build:
	$(MAKE) -C $(ROOT) all bench-bins $(if $(DEPS_PREFIX),DEPS_PREFIX=$(DEPS_PREFIX))

$(filter-out tokenize,$(BENCHMARKS)): build
$(BENCHMARKS):
	cd $(ROOT) && $(script_$@)

list:
	@$(foreach b,$(BENCHMARKS),printf '%-9s %-22s bench/results/%s.md\n' $(b) $(script_$(b)) $(b);)

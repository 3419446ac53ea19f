# distill.mk: teacher -> hybrid student, the whole ra pipeline (DESIGN §6).
#
#   make -f pipelines/distill.mk TEACHER=path/to/Llama-3.2-1B TOKENS=train.ra HEADS=10
#
#   ra-probe -> scores -> ra-rank -> plan -> ra-graft -> student0
#   [-> ra-mohawk1 -> student1, with STAGE1=1]
#   -> ra-mohawk2, one job per layer with GNU parallel -> parts -> ra-merge -> student2
#   -> ra-mohawk3 -> student3 -> ra-eval -> results
#
# Every artifact is named by a content key: the first 16 hex digits of the
# SHA-256 of (tool, ra version, the step's parameters, the keys or content
# ids of its inputs; a file among the parameters counts by its bytes and
# TEACHER by its content id, not by path: pipelines/keys.mk).  The roots are the content ids of TEACHER and TOKENS
# (ra-show --id), so a second make does nothing, and changing one stage's
# parameters renames (reruns) that stage and everything after it while the
# earlier artifacts are reused.  Every tool writes atomically, so an
# interrupted make never leaves a half-written artifact that looks done.
#
# Targets: all (default: results), scores, plan, student0, student1,
# student2, student3, results, clean-intermediate (removes stage-2 parts and
# checkpoints).  `make ... print-KEYS` shows the artifact names.
#
# Stage 2 fans out one ra-mohawk2 job per layer with GNU parallel: JOBS jobs
# at a time (default: the number of GPUs nvidia-smi lists, else 1), each
# with CUDA_VISIBLE_DEVICES set from its job slot (slot 1 -> GPU 0, ...).
# Across machines: SSHLOGIN='8/gpu1,8/gpu2' is passed to parallel as
# --sshlogin (N/host = N jobs there; the slot numbers then count per host
# in GNU parallel >= 20200122, so CUDA_VISIBLE_DEVICES stays a local index;
# the hosts must see OUT, TEACHER and TOKENS at the same paths, e.g. on a
# shared file system, and have the ra tools on PATH).  A finished layer's
# part is kept, so a rerun after a failure trains only the missing layers;
# each job also checkpoints into OUT/s2-KEY/ck-L and resumes from there.
# GPUS (default: the number nvidia-smi lists, else 1) maps slots to devices
# round robin (slot s -> GPU (s - 1) mod GPUS), so JOBS may exceed the GPUs.
#
# RANK_SELECT (default --top $(HEADS)) is ra-rank's selection, e.g.
# RANK_SELECT='--random 10 --seed 1' for a control plan of random heads.
# TEACHER_ID, TOKENS_ID, EVAL_TOKENS_ID may be given by a caller that knows
# the content ids (pipelines/table1.mk does, to hash the teacher once);
# otherwise they are read with ra-show --id.

TEACHER ?=
TOKENS ?=
HEADS ?= 10
LAYOUT ?= routed
INIT ?= mohawk
D_STATE ?=
OUT ?= distill-out
STAGE1 ?= 0
PROBE_FLAGS ?=
RANK_FLAGS ?=
GRAFT_FLAGS ?=
S1_FLAGS ?=
S2_FLAGS ?= --seq-len 512 --batch 8
S3_FLAGS ?=
EVAL_FLAGS ?= --task logits
EVAL_TOKENS ?= $(TOKENS)
GPUS ?= $(or $(filter-out 0,$(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU')),1)
JOBS ?= $(GPUS)
RANK_SELECT ?= --top $(HEADS)
SSHLOGIN ?=
# directory prefix of the ra tools ("" = PATH), e.g. RA=$(PWD)/bin/
RA ?=

ifeq ($(strip $(TEACHER)),)
$(error TEACHER= is required (a Hugging Face directory or a model ra stream))
endif

SHELL := /bin/bash
.DELETE_ON_ERROR:
.SUFFIXES:

RA_VERSION := $(shell $(RA)ra-show --version | awk '{ print $$NF }')
ifeq ($(strip $(TEACHER_ID)),)
TEACHER_ID := $(shell $(RA)ra-show -q --id '$(TEACHER)')
endif
ifeq ($(strip $(TEACHER_ID)),)
$(error cannot read the content id of TEACHER=$(TEACHER))
endif
ifeq ($(strip $(TOKENS_ID)),)
TOKENS_ID := $(if $(strip $(TOKENS)),$(shell $(RA)ra-show -q --id '$(TOKENS)'))
endif
ifeq ($(strip $(EVAL_TOKENS_ID)),)
EVAL_TOKENS_ID := $(if $(strip $(EVAL_TOKENS)),$(shell $(RA)ra-show -q --id '$(EVAL_TOKENS)'))
endif

include $(dir $(lastword $(MAKEFILE_LIST)))keys.mk

GRAFT_ARGS := --layout $(LAYOUT) --init $(INIT) $(if $(D_STATE),--d-state $(D_STATE)) $(GRAFT_FLAGS)

SCORES   := $(OUT)/scores-$(call key,ra-probe $(RA_VERSION) $(call content,$(PROBE_FLAGS)) $(TEACHER_ID)).ra
PLAN     := $(OUT)/plan-$(call key,ra-rank $(RA_VERSION) $(RANK_SELECT) $(call content,$(RANK_FLAGS)) $(notdir $(SCORES))).ra
STUDENT0 := $(OUT)/student0-$(call key,ra-graft $(RA_VERSION) $(call content,$(GRAFT_ARGS)) $(TEACHER_ID) $(notdir $(PLAN))).ra
ifeq ($(STAGE1),1)
STUDENT1 := $(OUT)/student1-$(call key,ra-mohawk1 $(RA_VERSION) $(call content,$(S1_FLAGS)) $(TEACHER_ID) $(TOKENS_ID) $(notdir $(STUDENT0))).ra
else
STUDENT1 := $(STUDENT0)
endif
S2_KEY   := $(call key,ra-mohawk2 $(RA_VERSION) $(call content,$(S2_FLAGS)) $(TEACHER_ID) $(TOKENS_ID) $(notdir $(STUDENT1)))
S2_DIR   := $(OUT)/s2-$(S2_KEY)
STUDENT2 := $(OUT)/student2-$(S2_KEY).ra
STUDENT3 := $(OUT)/student3-$(call key,ra-mohawk3 $(RA_VERSION) $(call content,$(S3_FLAGS)) $(TEACHER_ID) $(TOKENS_ID) $(notdir $(STUDENT2))).ra
RESULTS  := $(OUT)/results-$(call key,ra-eval $(RA_VERSION) $(call content,$(EVAL_FLAGS)) $(EVAL_TOKENS_ID) $(notdir $(STUDENT3))).ra

.PHONY: all scores plan student0 student1 student2 student3 results clean-intermediate print-KEYS
all: results
scores: $(SCORES)
plan: $(PLAN)
student0: $(STUDENT0)
student1: $(STUDENT1)
student2: $(STUDENT2)
student3: $(STUDENT3)
results: $(RESULTS)

print-KEYS:
	@printf '%s\n' $(SCORES) $(PLAN) $(STUDENT0) $(STUDENT1) $(STUDENT2) $(STUDENT3) $(RESULTS)

need_tokens = test -n '$(TOKENS_ID)' || { echo 'distill.mk: TOKENS= (a tokens stream, ra-tok) is required for the training stages' >&2; exit 64; }

$(OUT):
	mkdir -p $@

$(SCORES): | $(OUT)
	$(RA)ra-probe -m '$(TEACHER)' $(PROBE_FLAGS) -o $@

$(PLAN): $(SCORES)
	$(RA)ra-rank -q $(RANK_SELECT) $(RANK_FLAGS) -o $@ $<

$(STUDENT0): $(PLAN)
	$(RA)ra-graft -q -m '$(TEACHER)' -p $< $(GRAFT_ARGS) -o $@

ifeq ($(STAGE1),1)
$(STUDENT1): $(STUDENT0)
	@$(need_tokens)
	$(RA)ra-mohawk1 -m '$(TEACHER)' -s $< -d '$(TOKENS)' $(S1_FLAGS) -o $@
endif

# One job per layer; a layer whose part exists is skipped.  The number of
# layers is read from the student's meta.config.
$(STUDENT2): $(STUDENT1)
	@$(need_tokens)
	@mkdir -p $(S2_DIR)
	n=$$($(RA)ra-show -q '$<' | grep -m1 '"num_hidden_layers"' | tr -dc 0-9); \
	test -n "$$n" || { echo "distill.mk: $<: no num_hidden_layers in its meta" >&2; exit 65; }; \
	seq 0 $$((n - 1)) | parallel --halt now,fail=1 -j $(JOBS) $(if $(SSHLOGIN),--sshlogin '$(SSHLOGIN)') \
	    'test -e $(S2_DIR)/part-{}.ra || CUDA_VISIBLE_DEVICES={= $$_ = (slot() - 1) % $(GPUS) =} $(RA)ra-mohawk2 \
	        -m $(TEACHER) -s $< -d $(TOKENS) --layers {} $(S2_FLAGS) -q \
	        --ckpt-dir $(S2_DIR)/ck-{} --resume -o $(S2_DIR)/part-{}.ra'
	$(RA)ra-merge -q -o $@ $< $(S2_DIR)/part-*.ra

$(STUDENT3): $(STUDENT2)
	@$(need_tokens)
	$(RA)ra-mohawk3 -m '$(TEACHER)' -s $< -d '$(TOKENS)' $(S3_FLAGS) -o $@

$(RESULTS): $(STUDENT3)
	$(RA)ra-eval -m $< $(if $(EVAL_TOKENS),-d '$(EVAL_TOKENS)') $(EVAL_FLAGS) -o $@

clean-intermediate:
	rm -rf $(OUT)/s2-*

# table1.mk: the headline experiment (DESIGN §2.6, the paper's Table 1 in
# miniature): one teacher, many students, one report.
#
#   make -f pipelines/table1.mk TEACHER=tests/fixtures/teacher             # CPU, slow
#   make -f pipelines/table1.mk TEACHER=... DEVICE=cuda -j8                 # GPU: see table1-gpu.sh
#
# For every configuration of the grid (pipelines/table1-configs.sh prints it):
#   heads kept  KEEP      = 0 1 2% 5% 10% all (N% of all heads, rounded, at least 1)
#   layout      LAYOUTS   = routed parallel
#   state size  D_STATES  = hd hd/8 (the teacher's head dim, and 8x smaller)
#   init        mohawk; and INIT_VARIANTS = attention svd at INIT_AT = 2% heads
#   control     RANDOM_AT = 2% 5% 10%: the same number of heads chosen at random
#               (ra-rank --random K --seed RANDOM_SEED), RANDOM_LAYOUTS, first d_state
# it runs pipelines/distill.mk (recursive make, one per configuration):
#   ra-probe (once: every configuration shares the one scores artifact)
#   -> ra-rank (once per plan) -> ra-graft -> ra-mohawk2 per layer (GNU
#   parallel, JOBS jobs) -> ra-merge -> ra-mohawk3 -> ra-eval --teacher
#   (kv at EVAL_PAIRS pairs in both scorings, ppl, kd, mem, speed)
# and then extracts each results stream to OUT/json/NAME-KEY.json (jq), evaluates
# the teacher alone (OUT/teacher-eval-KEY.ra), and writes the report
# REPORT/table1.md with plots REPORT/table1/*.png (pipelines/table1-report.sh:
# shell, awk, jq, gnuplot).
#
# Data: TOKENS (a packed tokens stream for training) and EVAL_TOKENS (held-out
# documents for ppl/kd), both or neither.  Neither: OUT/data-KEY/ is made with
# the teacher's tokenizer from `ra-tok --gen-kv` KV-retrieval documents
# (DATA_KV_DOCS, seed DATA_SEED; held out: DATA_HELDOUT_DOCS, DATA_HELDOUT_SEED)
# mixed with the text files DATA_TEXT (default: tests/fixtures/table1-text, the
# README and formats/*.md frozen so that doc edits do not rerun the grid; every
# DATA_HELDOUT_EVERY-th file held out), the teacher's kind
# of data (pipelines/teacher.mk).  The KV prompts of the probe (seed 1) and of
# ra-eval (seed 1000003) are never among them (ra-tok refuses those seeds).
#
# Budgets (the same makefile runs tiny on CI and real on a GPU):
#   DEVICE=cpu|cuda (default cuda when nvidia-smi lists a GPU), GPUS, JOBS;
#   S2_DEVICE, S3_DEVICE (default DEVICE: where stages 2 and 3 train)
#   PROBE_PAIRS, PROBE_SAMPLES               ra-probe
#   SEQ_LEN, BATCH, S2_TOKENS, S2_LR, S3_TOKENS, S3_LR, S2_EXTRA, S3_EXTRA
#   EVAL_PAIRS, EVAL_SAMPLES, MEM_LENGTHS, SPEED_FLAGS, EVAL_EXTRA
#
# Caching: every artifact is content-keyed by distill.mk (the key of a step
# is a hash of its tool, version, parameters (files among them by their bytes,
# the teacher by its content id: pipelines/keys.mk) and the keys of its inputs), so
# a second make does nothing, and changing one stage's parameter (S3_TOKENS,
# say) renames that stage's artifacts and everything after them: only those
# are made, the earlier ones are reused.  Prerequisites between keyed
# artifacts are order-only (a key already names its inputs; mtimes do not
# matter), and an artifact that exists needs nothing before it: a report can
# be made from the results streams alone.  The JSON files and the report
# do follow their results streams' mtimes: a results stream made again is
# read again.  Before building, every artifact of the grid not verified since
# it last changed is checked with `ra-show --verify` (its XXH3 digest); one
# that fails is reported by name and removed, so this make rebuilds it (and
# only it: its dependants are keyed by its key, not its bytes).  Verified
# files get a stamp under OUT/.verified/ so the check costs one hash per
# artifact, once.  The tools themselves refuse a corrupt input with a
# message naming it.
#
# Targets: all (default: streams and the report), streams (every ra artifact:
# students, results streams, the teacher's evaluation; needs neither jq nor
# gnuplot, so a GPU machine can make them and the report can be made
# elsewhere from the results streams alone: see table1-gpu.sh), data, scores,
# plans, students, results (the JSON files), report, teacher-eval,
# print-CONFIGS (name, group, K, layout, N, init, selection, results file),
# clean-report.
# Paths must not contain spaces or quotes.

TEACHER ?=
TOKENIZER ?=
TOKENS ?=
EVAL_TOKENS ?=
OUT ?= table1-out
REPORT ?= results
GPUS ?= $(or $(filter-out 0,$(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU')),1)
DEVICE ?= $(if $(shell nvidia-smi -L 2>/dev/null | grep -m1 '^GPU'),cuda,cpu)
JOBS ?= $(GPUS)
S2_DEVICE ?= $(DEVICE)
S3_DEVICE ?= $(DEVICE)
RA ?=
# a line for the report's settings (e.g. the GPU's name)
RUN_NOTE ?=

KEEP ?= 0 1 2% 5% 10% all
LAYOUTS ?= routed parallel
D_STATES ?= hd hd/8
INIT_VARIANTS ?= attention svd
INIT_AT ?= 2%
RANDOM_AT ?= 2% 5% 10%
RANDOM_LAYOUTS ?= $(LAYOUTS)
RANDOM_SEED ?= 1
# ranked plans: ra-rank --by logprob (default: on the test teacher 63 of 64
# single-head accuracy drops are zero or one prompt, so accuracy ranks by
# noise; see results/focused/) or acc (the paper's accuracy drop, ties broken
# by log-prob drop)
RANK_BY ?= logprob

WORDS ?= /usr/share/dict/words
PROBE_PAIRS ?= 50
PROBE_SAMPLES ?= 256
PROBE_EXTRA ?=
SEQ_LEN ?= 512
BATCH ?= 8
S2_TOKENS ?= 1000000
S2_LR ?=
S2_EXTRA ?=
S3_TOKENS ?= 2000000
S3_LR ?=
S3_EXTRA ?=
EVAL_PAIRS ?= 10,20,30,40,50
EVAL_SAMPLES ?= 256
MEM_LENGTHS ?= 128,256,512,1024,2048,4096
SPEED_FLAGS ?= --max-batch 16
EVAL_EXTRA ?=

PIPE := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
DATA_TEXT ?= $(PIPE)/../tests/fixtures/table1-text/README.md $(sort $(wildcard $(PIPE)/../tests/fixtures/table1-text/formats/*.md))
DATA_KV_DOCS ?= 20000
DATA_HELDOUT_DOCS ?= 500
DATA_SEED ?= 21
DATA_HELDOUT_SEED ?= 22
DATA_HELDOUT_EVERY ?= 4

ifeq ($(strip $(TEACHER)),)
$(error TEACHER= is required (a Hugging Face directory with tokenizer.json, or a model stream with TOKENIZER=))
endif

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DELETE_ON_ERROR:
.SUFFIXES:
# Sub-makes get exactly the variables passed to them, not this command line's.
MAKEOVERRIDES :=

DISTILL := $(PIPE)/distill.mk
RA_VERSION := $(shell $(RA)ra-show --version | awk '{ print $$NF }')
comma := ,
include $(PIPE)/keys.mk

# ------------------------------------------------------------------ teacher

TEACHER_ID := $(shell $(RA)ra-show -q --id '$(TEACHER)')
ifeq ($(strip $(TEACHER_ID)),)
$(error cannot read the content id of TEACHER=$(TEACHER))
endif
ifeq ($(strip $(TOKENIZER)),)
ifneq ($(wildcard $(TEACHER)/tokenizer.json),)
TOKENIZER_PATH := $(TEACHER)
endif
else
TOKENIZER_PATH := $(TOKENIZER)
endif
ifeq ($(strip $(TOKENIZER_PATH)),)
$(error TEACHER=$(TEACHER) has no tokenizer.json: give TOKENIZER= (tokenizer.json or its directory))
endif
TOKENIZER_FLAG := $(if $(strip $(TOKENIZER)),--tokenizer $(TOKENIZER))

# layers, heads per layer, head dim: from ra-show's summary (a Hugging Face
# directory's "layers"/"heads" lines, or a model stream's meta.config)
TEACHER_SHAPE := $(shell $(RA)ra-show -q '$(TEACHER)' | awk ' \
    function num(s) { gsub(/[^0-9]/, "", s); return s } \
    /^layers / && L == "" { L = num($$2) } \
    /^heads / && H == "" { H = num($$2); for (i = 1; i < NF; i++) if ($$i == "head_dim") D = num($$(i + 1)) } \
    /"num_hidden_layers":/ && L == "" { L = num($$2) } \
    /"num_attention_heads":/ && H == "" { H = num($$2) } \
    /"head_dim":/ && D == "" { D = num($$2) } \
    /"hidden_size":/ && X == "" { X = num($$2) } \
    END { if (D == "" && H > 0) D = int(X / H); if (L > 0 && H > 0 && D > 0) print L, H, D }')
TEACHER_LAYERS := $(word 1,$(TEACHER_SHAPE))
TEACHER_HEADS := $(word 2,$(TEACHER_SHAPE))
HEAD_DIM := $(word 3,$(TEACHER_SHAPE))
ifeq ($(strip $(HEAD_DIM)),)
$(error cannot read num_hidden_layers, num_attention_heads, head_dim of TEACHER=$(TEACHER))
endif
HEADS_TOTAL := $(shell echo $$(($(TEACHER_LAYERS) * $(TEACHER_HEADS))))

# --------------------------------------------------------------------- data

ifeq ($(strip $(TOKENS))$(strip $(EVAL_TOKENS)),)
tok_json := $(if $(filter %.json,$(TOKENIZER_PATH)),$(TOKENIZER_PATH),$(TOKENIZER_PATH)/tokenizer.json)
DATA_HELDOUT_TEXT := $(shell printf '%s\n' $(DATA_TEXT) | awk 'NR % $(DATA_HELDOUT_EVERY) == 0')
DATA_TRAIN_TEXT := $(filter-out $(DATA_HELDOUT_TEXT),$(DATA_TEXT))
DATA_KEY := $(call key,ra-tok $(RA_VERSION) --gen-kv $(DATA_KV_DOCS) $(DATA_SEED) $(DATA_HELDOUT_DOCS) $(DATA_HELDOUT_SEED) \
    --pack $(SEQ_LEN) $(call sha,$(WORDS)) $(call sha,$(tok_json)) $(call sha,$(DATA_TRAIN_TEXT)) $(call sha,$(DATA_HELDOUT_TEXT)))
DATA_DIR := $(OUT)/data-$(DATA_KEY)
TOKENS_FILE := $(DATA_DIR)/train.ra
EVAL_FILE := $(DATA_DIR)/heldout-docs.ra
TOKENS_ID := $(DATA_KEY)-train
EVAL_ID := $(DATA_KEY)-heldout
DATA_FILES := $(TOKENS_FILE) $(EVAL_FILE)
else
ifeq ($(strip $(TOKENS)),)
$(error EVAL_TOKENS= needs TOKENS= too (or give neither to make both))
endif
ifeq ($(strip $(EVAL_TOKENS)),)
$(error TOKENS= needs EVAL_TOKENS= (held-out documents) too (or give neither to make both))
endif
TOKENS_FILE := $(TOKENS)
EVAL_FILE := $(EVAL_TOKENS)
TOKENS_ID := $(shell $(RA)ra-show -q --id '$(TOKENS)')
EVAL_ID := $(shell $(RA)ra-show -q --id '$(EVAL_TOKENS)')
DATA_FILES :=
endif

# ---------------------------------------------------------------- the grid

PROBE_FLAGS := --pairs $(PROBE_PAIRS) --samples $(PROBE_SAMPLES) --words $(WORDS) --device $(DEVICE) $(TOKENIZER_FLAG) -q $(PROBE_EXTRA)
S2_FLAGS := --seq-len $(SEQ_LEN) --batch $(BATCH) --tokens $(S2_TOKENS) $(if $(S2_LR),--lr $(S2_LR)) --device $(S2_DEVICE) $(S2_EXTRA)
S3_FLAGS := --seq-len $(SEQ_LEN) --batch $(BATCH) --tokens $(S3_TOKENS) $(if $(S3_LR),--lr $(S3_LR)) --device $(S3_DEVICE) -q $(S3_EXTRA)
EVAL_COMMON := --pairs $(EVAL_PAIRS) --samples $(EVAL_SAMPLES) --words $(WORDS) --lengths $(MEM_LENGTHS) \
    $(SPEED_FLAGS) --device $(DEVICE) $(TOKENIZER_FLAG) -q $(EVAL_EXTRA)
EVAL_FLAGS := --teacher $(TEACHER) --task kv,ppl,kd,mem,speed $(EVAL_COMMON)

CONFIG_LINES := $(shell KEEP='$(KEEP)' LAYOUTS='$(LAYOUTS)' D_STATES='$(D_STATES)' INIT_VARIANTS='$(INIT_VARIANTS)' \
    INIT_AT='$(INIT_AT)' RANDOM_AT='$(RANDOM_AT)' RANDOM_LAYOUTS='$(RANDOM_LAYOUTS)' $(PIPE)/table1-configs.sh $(HEADS_TOTAL) $(HEAD_DIM) | tr ' ' ':')
ifeq ($(strip $(CONFIG_LINES)),)
$(error table1-configs.sh gave no configurations (see its message above))
endif
CONFIGS := $(foreach c,$(CONFIG_LINES),$(word 1,$(subst :, ,$(c))))
# the K of INIT_AT (the "~2%" row the verdicts compare at)
INIT_AT_K := $(shell KEEP='$(INIT_AT)' LAYOUTS=routed D_STATES=hd INIT_VARIANTS= RANDOM_AT= $(PIPE)/table1-configs.sh $(HEADS_TOTAL) $(HEAD_DIM) | awk '{ print $$3; exit }')

# $(call field,NAME,N): field N of configuration NAME (1 name, 2 group, 3 K,
# 4 layout, 5 d_state, 6 init, 7 selection)
field = $(word $(2),$(subst :, ,$(filter $(1):%,$(CONFIG_LINES))))
rank_select = $(if $(filter random,$(call field,$(1),7)),--random $(call field,$(1),3) --seed $(RANDOM_SEED),--top $(call field,$(1),3)$(if $(filter-out acc,$(RANK_BY)), --by $(RANK_BY)))

# The variables of configuration $(1)'s distill.mk (every one given, so the
# sub-make's keys depend on nothing else).
sub_vars = TEACHER=$(TEACHER) TEACHER_ID=$(TEACHER_ID) TOKENS=$(TOKENS_FILE) TOKENS_ID=$(TOKENS_ID) \
    EVAL_TOKENS=$(EVAL_FILE) EVAL_TOKENS_ID=$(EVAL_ID) OUT=$(OUT) JOBS=$(JOBS) GPUS=$(GPUS) RA=$(RA) \
    RA_VERSION=$(RA_VERSION) HEADS=$(call field,$(1),3) RANK_SELECT='$(call rank_select,$(1))' RANK_FLAGS= \
    LAYOUT=$(call field,$(1),4) D_STATE=$(call field,$(1),5) INIT=$(call field,$(1),6) GRAFT_FLAGS= STAGE1=0 \
    S1_FLAGS= PROBE_FLAGS='$(PROBE_FLAGS)' S2_FLAGS='$(S2_FLAGS)' S3_FLAGS='$(S3_FLAGS)' EVAL_FLAGS='$(EVAL_FLAGS)'
submake = $(MAKE) --no-print-directory -f $(DISTILL) $(call sub_vars,$(1))

# Each configuration's artifact names, from distill.mk itself (print-KEYS:
# scores, plan, student0, student1, student2, student3, results).
define config_keys
K_$(1) := $$(shell MAKEFLAGS= MFLAGS= $$(MAKE) -s --no-print-directory -f $(DISTILL) $$(call sub_vars,$(1)) print-KEYS)
SCORES_$(1) := $$(word 1,$$(K_$(1)))
PLAN_$(1) := $$(word 2,$$(K_$(1)))
S0_$(1) := $$(word 3,$$(K_$(1)))
S2_$(1) := $$(word 5,$$(K_$(1)))
S3_$(1) := $$(word 6,$$(K_$(1)))
RES_$(1) := $$(word 7,$$(K_$(1)))
JSON_$(1) := $(OUT)/json/$(1)-$$(patsubst results-%.ra,%,$$(notdir $$(RES_$(1)))).json
endef
$(foreach c,$(CONFIGS),$(eval $(call config_keys,$(c))))

SCORES := $(SCORES_$(firstword $(CONFIGS)))
ifneq ($(words $(sort $(foreach c,$(CONFIGS),$(SCORES_$(c))))),1)
$(error the configurations disagree on the scores artifact: $(sort $(foreach c,$(CONFIGS),$(SCORES_$(c)))))
endif
ifeq ($(strip $(RES_$(firstword $(CONFIGS)))),)
$(error cannot read the artifact names from $(DISTILL) print-KEYS)
endif
PLANS := $(sort $(foreach c,$(CONFIGS),$(PLAN_$(c))))
STUDENTS := $(foreach c,$(CONFIGS),$(S0_$(c)) $(S2_$(c)) $(S3_$(c)))
RESULTS := $(foreach c,$(CONFIGS),$(RES_$(c)))
JSONS := $(foreach c,$(CONFIGS),$(JSON_$(c)))

TEACHER_EVAL_FLAGS := --task kv,ppl,mem,speed $(EVAL_COMMON)
TEACHER_RES := $(OUT)/teacher-eval-$(call key,ra-eval $(RA_VERSION) $(call content,$(TEACHER_EVAL_FLAGS)) $(TEACHER_ID) $(EVAL_ID)).ra
TEACHER_JSON := $(OUT)/json/teacher-$(patsubst teacher-eval-%.ra,%,$(notdir $(TEACHER_RES))).json

# The manifest names every configuration's JSON and the budgets; it is keyed
# by its own text, so a change of the grid or a budget makes a new one and
# the report is rewritten.
MANIFEST_TEXT := $(strip \
    param teacher $(TEACHER);param teacher_id $(TEACHER_ID);param shape $(TEACHER_LAYERS) layers x $(TEACHER_HEADS) heads, head_dim $(HEAD_DIM);\
    param device $(DEVICE);param note $(RUN_NOTE);param probe --pairs $(PROBE_PAIRS) --samples $(PROBE_SAMPLES);\
    param stage2 $(S2_FLAGS);param stage3 $(S3_FLAGS);param eval $(EVAL_COMMON);\
    param data $(if $(DATA_FILES),ra-tok --gen-kv $(DATA_KV_DOCS) (seed $(DATA_SEED)) + $(words $(DATA_TRAIN_TEXT)) text files$(comma) held out $(DATA_HELDOUT_DOCS) (seed $(DATA_HELDOUT_SEED)) + $(words $(DATA_HELDOUT_TEXT)) text files,TOKENS=$(TOKENS) EVAL_TOKENS=$(EVAL_TOKENS));\
    param random_seed $(RANDOM_SEED);param heads_total $(HEADS_TOTAL);param head_dim $(HEAD_DIM);\
    param init_at $(INIT_AT);param init_at_k $(INIT_AT_K);param keep $(KEEP);param init_variants $(INIT_VARIANTS);\
    param random_at $(RANDOM_AT);param layouts $(LAYOUTS);param d_states $(D_STATES);\
    teacher $(TEACHER_JSON);$(foreach c,$(CONFIGS),config $(subst :, ,$(filter $(c):%,$(CONFIG_LINES))) $(JSON_$(c));))
MANIFEST := $(OUT)/manifest-$(call key,$(MANIFEST_TEXT)).txt

# ------------------------------------------------------------ cache check

S2_PARTS := $(wildcard $(foreach c,$(CONFIGS),$(dir $(S2_$(c)))s2-$(patsubst student2-%.ra,%,$(notdir $(S2_$(c))))/part-*.ra))
# EXISTING: the artifacts that exist and verify.
EXISTING := $(shell d='$(OUT)/.verified'; \
    for f in $(DATA_FILES) $(SCORES) $(PLANS) $(STUDENTS) $(S2_PARTS) $(RESULTS) $(TEACHER_RES); do \
        [ -e "$$f" ] || continue; s="$$d/$$(printf '%s' "$$f" | tr / +).ok"; \
        if [ -e "$$s" ] && ! [ "$$f" -nt "$$s" ]; then echo "$$f"; continue; fi; \
        if msg=$$($(RA)ra-show -q --verify "$$f" 2>&1); then mkdir -p "$$d" && touch "$$s" && echo "$$f"; \
        else echo "table1.mk: $$f failed verification: $$msg" >&2; \
             echo "table1.mk: $$f removed (it will be rebuilt)" >&2; rm -f "$$f" "$$s"; fi; \
    done)
# $(call before,ARTIFACT,PREREQUISITES): what must exist before ARTIFACT is
# made; nothing once it exists (its key already names its inputs), so a
# report made from results streams alone never asks for their students.
before = $(if $(filter $(1),$(EXISTING)),,$(2))

# -------------------------------------------------------------------- rules

.PHONY: all streams data scores plans students results report teacher-eval print-CONFIGS clean-report
all: streams report
data: $(TOKENS_FILE) $(EVAL_FILE)
streams: $(STUDENTS) $(RESULTS) $(TEACHER_RES)
scores: $(SCORES)
plans: $(PLANS)
students: $(STUDENTS)
results: $(JSONS) $(TEACHER_JSON)
teacher-eval: $(TEACHER_JSON)
report: $(REPORT)/table1.md

print-CONFIGS:
	@$(foreach c,$(CONFIGS),printf '%s %s\n' '$(subst :, ,$(filter $(c):%,$(CONFIG_LINES)))' $(RES_$(c));)

$(OUT) $(OUT)/json:
	mkdir -p $@

ifneq ($(DATA_FILES),)
$(TOKENS_FILE): | $(OUT)
	mkdir -p $(@D)
	$(RA)ra-tok --gen-kv $(DATA_KV_DOCS) --seed $(DATA_SEED) --words $(WORDS) -o $(@D)/train.jsonl $(DATA_TRAIN_TEXT)
	$(RA)ra-tok -t $(TOKENIZER_PATH) --jsonl --pack $(SEQ_LEN) -q -o $@ $(@D)/train.jsonl

$(EVAL_FILE): | $(OUT)
	mkdir -p $(@D)
	$(RA)ra-tok --gen-kv $(DATA_HELDOUT_DOCS) --seed $(DATA_HELDOUT_SEED) --words $(WORDS) -o $(@D)/heldout.jsonl $(DATA_HELDOUT_TEXT)
	$(RA)ra-tok -t $(TOKENIZER_PATH) --jsonl -q -o $@ $(@D)/heldout.jsonl
endif

$(SCORES): | $(OUT)
	+$(call submake,$(firstword $(CONFIGS))) scores

# One rule per configuration's artifacts; a plan shared by several
# configurations gets its rule once.
define config_rules
ifeq ($$(filter $(PLAN_$(1)),$$(PLAN_RULES)),)
PLAN_RULES += $(PLAN_$(1))
$(PLAN_$(1)): | $(call before,$(PLAN_$(1)),$(SCORES))
	+$$(call submake,$(1)) plan
endif
$(S0_$(1)): | $(call before,$(S0_$(1)),$(PLAN_$(1)))
	+$$(call submake,$(1)) student0
$(S2_$(1)): | $(call before,$(S2_$(1)),$(S0_$(1)) $(TOKENS_FILE))
	+$$(call submake,$(1)) student2
$(S3_$(1)): | $(call before,$(S3_$(1)),$(S2_$(1)))
	+$$(call submake,$(1)) student3
$(RES_$(1)): | $(call before,$(RES_$(1)),$(S3_$(1)) $(EVAL_FILE))
	+$$(call submake,$(1)) results
$(JSON_$(1)): $(RES_$(1)) | $(OUT)/json
	$$(call to_json,$(RES_$(1)),$(1)) > $$@.tmp && mv $$@.tmp $$@
endef
$(foreach c,$(CONFIGS),$(eval $(call config_rules,$(c))))

$(TEACHER_RES): | $(call before,$(TEACHER_RES),$(EVAL_FILE)) $(OUT)
	$(RA)ra-eval -m $(TEACHER) -d $(EVAL_FILE) $(TEACHER_EVAL_FLAGS) -o $@ > /dev/null

$(TEACHER_JSON): $(TEACHER_RES) | $(OUT)/json
	$(call to_json,$(TEACHER_RES),teacher) > $@.tmp && mv $@.tmp $@

# $(call to_json,RESULTS,NAME): the results stream as one JSON object: name,
# results id, metrics (ra-eval --format json) and every table as an array of
# row objects keyed by column ("nan" -> null).
to_json = $(RA)ra-show --json --values $(1) | jq -c --arg name '$(2)' '. as $$r \
    | ($$r.meta.tables | map({key: .name, value: .columns}) | from_entries) as $$cols \
    | {name: $$name, results: $$r.content_id, model: $$r.meta.model, metrics: $$r.meta.metrics, \
       tables: ([$$r.tensors[] | select(.name | startswith("table/")) | (.name | ltrimstr("table/")) as $$t \
         | .shape[1] as $$nc | .values as $$v \
         | {key: $$t, value: [range(0; .shape[0]) as $$i | [range(0; $$nc) as $$j \
             | {key: $$cols[$$t][$$j], value: ($$v[$$i * $$nc + $$j] | if . == "nan" then null else . end)}] \
             | from_entries]}] | from_entries)}'

$(MANIFEST): | $(OUT)
	printf '%s\n' '$(MANIFEST_TEXT)' | tr ';' '\n' | sed 's/^ *//' > $@.tmp && mv $@.tmp $@

$(REPORT)/table1.md: $(MANIFEST) $(JSONS) $(TEACHER_JSON) $(PIPE)/table1-report.sh
	$(PIPE)/table1-report.sh $(MANIFEST) $(REPORT)

clean-report:
	rm -rf $(REPORT)/table1.md $(REPORT)/table1

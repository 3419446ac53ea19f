# teacher.mk: data, tokenizer and token streams for a small real teacher
# trained from scratch (issue 8), then its training and KV evaluation.
#
#   make -f pipelines/teacher.mk tokens            # CPU: data -> tokenizer -> tokens (minutes)
#   make -f pipelines/teacher.mk eval DEVICE=cuda  # GPU: + init -> ra-mohawk3 --loss ce -> ra-eval kv
#
#   data      OUT/text/*.txt: natural English from the Debian documentation every
#             install has: /usr/share/doc/*/README* and /usr/share/doc/*/copyright
#             (gzip'd ones decompressed), files of 200..TEXT_MAX_BYTES bytes, in
#             sorted path order, at most TEXT_MAX_FILES; every HELDOUT_EVERY-th
#             file is held out.  (Rendered man pages are not used: CI's fresh
#             Debian image has no man-db/groff.)
#             OUT/train.jsonl, OUT/heldout.jsonl: `ra-tok --gen-kv` mixtures of
#             KV-retrieval documents (lib/kv_docs.h: varied templates, 1-60 pairs)
#             and those text files, shuffled by seed.  SEED_TRAIN / SEED_HELDOUT
#             differ from each other and from ra-probe's (1) and ra-eval kv's
#             (1000003) prompt seeds, which ra-tok refuses anyway.
#   tokenizer OUT/tokenizer/{tokenizer.json,tokenizer_config.json}:
#             `ra-tok --train-bpe VOCAB` on train.jsonl (byte-level BPE,
#             Llama-3 pre-tokenizer, <|begin_of_text|> / <|end_of_text|>).
#   tokens    OUT/train.ra, OUT/heldout.ra: packed rows of SEQ tokens;
#             OUT/heldout-docs.ra: held-out documents (for ra-eval ppl).
#   init      OUT/model/config.json (a small Llama: LAYERS, HIDDEN, HEADS,
#             KV_HEADS, INTER, vocabulary VOCAB, tied embeddings) and
#             OUT/init.ra: `ra-graft --random-init` of it.
#   teacher   OUT/teacher.ra: `ra-mohawk3 --loss ce` on train.ra (held-out
#             loss on heldout.ra).  NEEDS ra-mohawk3 with --device cuda on a
#             GPU machine for a useful number of TRAIN_TOKENS; the target is
#             here so the chain is complete.
#   eval      OUT/eval.md: `ra-eval --task kv,ppl` of the teacher (the KV
#             prompts use ra-eval's own held-out seed).
#
# Everything is a deterministic function of the variables and the installed
# /usr/share/doc files; outputs are written atomically by the tools.

RA_BIN ?=
OUT ?= teacher-out
VOCAB ?= 8192
SEQ ?= 1024
KV_TRAIN ?= 20000
KV_HELDOUT ?= 1000
SEED_TRAIN ?= 11
SEED_HELDOUT ?= 12
WORDS ?= /usr/share/dict/words
DOC_ROOT ?= /usr/share/doc
TEXT_MAX_BYTES ?= 200000
TEXT_MAX_FILES ?= 5000
HELDOUT_EVERY ?= 20
LAYERS ?= 8
HIDDEN ?= 512
HEADS ?= 8
KV_HEADS ?= 2
INTER ?= 1536
DEVICE ?= cpu
TRAIN_TOKENS ?= 200000000
LR ?= 1e-3
BATCH ?= 32
INIT_SEED ?= 1
MAX_POS ?= 4096

RA_TOK := $(RA_BIN)ra-tok
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DELETE_ON_ERROR:
.PHONY: all data tokenizer tokens init teacher eval

all: tokens
data: $(OUT)/train.jsonl $(OUT)/heldout.jsonl
tokenizer: $(OUT)/tokenizer/tokenizer.json
tokens: $(OUT)/train.ra $(OUT)/heldout.ra $(OUT)/heldout-docs.ra
init: $(OUT)/init.ra
teacher: $(OUT)/teacher.ra
eval: $(OUT)/eval.md

# The natural-text files, numbered in sorted source order; text.list names
# them with a T (train) or H (held out) mark.
$(OUT)/text.list:
	mkdir -p $(OUT)/text
	rm -f $(OUT)/text/*.txt
	i=0; : > $@.tmp; \
	while IFS= read -r f; do \
	    case "$$f" in *.gz) zcat -- "$$f" > $(OUT)/text/cur 2>/dev/null || continue ;; \
	                  *) cat -- "$$f" > $(OUT)/text/cur ;; esac; \
	    n=$$(wc -c < $(OUT)/text/cur); \
	    if [ "$$n" -lt 200 ] || [ "$$n" -gt $(TEXT_MAX_BYTES) ]; then continue; fi; \
	    i=$$((i + 1)); name=$$(printf '%s/text/%05d.txt' $(OUT) $$i); mv $(OUT)/text/cur "$$name"; \
	    if [ $$((i % $(HELDOUT_EVERY))) -eq 0 ]; then echo "H $$name"; else echo "T $$name"; fi >> $@.tmp; \
	    [ $$i -lt $(TEXT_MAX_FILES) ] || break; \
	done < <(find -L $(DOC_ROOT) -type f \( -name 'README*' -o -name copyright \) | LC_ALL=C sort)
	rm -f $(OUT)/text/cur
	mv $@.tmp $@

$(OUT)/train.jsonl: $(OUT)/text.list
	$(RA_TOK) --gen-kv $(KV_TRAIN) --seed $(SEED_TRAIN) --words $(WORDS) -o $@ $$(sed -n 's/^T //p' $<)

$(OUT)/heldout.jsonl: $(OUT)/text.list
	$(RA_TOK) --gen-kv $(KV_HELDOUT) --seed $(SEED_HELDOUT) --words $(WORDS) -o $@ $$(sed -n 's/^H //p' $<)

$(OUT)/tokenizer/tokenizer.json: $(OUT)/train.jsonl
	mkdir -p $(@D)
	$(RA_TOK) --train-bpe $(VOCAB) --jsonl -q -o $@ $<
	printf '{"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}\n' > $(@D)/tokenizer_config.json

$(OUT)/train.ra: $(OUT)/train.jsonl $(OUT)/tokenizer/tokenizer.json
	$(RA_TOK) -t $(OUT)/tokenizer --jsonl --pack $(SEQ) -q -o $@ $<

$(OUT)/heldout.ra: $(OUT)/heldout.jsonl $(OUT)/tokenizer/tokenizer.json
	$(RA_TOK) -t $(OUT)/tokenizer --jsonl --pack $(SEQ) -q -o $@ $<

$(OUT)/heldout-docs.ra: $(OUT)/heldout.jsonl $(OUT)/tokenizer/tokenizer.json
	$(RA_TOK) -t $(OUT)/tokenizer --jsonl -q -o $@ $<

# A Llama-3-style config (RoPE theta 500000, tied embeddings) of the tokenizer's vocabulary.
$(OUT)/model/config.json: $(OUT)/tokenizer/tokenizer.json
	mkdir -p $(@D)
	printf '{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": %d, "hidden_size": %d, "intermediate_size": %d, "num_hidden_layers": %d, "num_attention_heads": %d, "num_key_value_heads": %d, "head_dim": %d, "max_position_embeddings": %d, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": true, "hidden_act": "silu", "bos_token_id": %d, "eos_token_id": %d}\n' \
	    $(VOCAB) $(HIDDEN) $(INTER) $(LAYERS) $(HEADS) $(KV_HEADS) $$(($(HIDDEN) / $(HEADS))) $(MAX_POS) $$(($(VOCAB) - 2)) $$(($(VOCAB) - 1)) > $@
	cp $(OUT)/tokenizer/tokenizer.json $(OUT)/tokenizer/tokenizer_config.json $(@D)/

$(OUT)/init.ra: $(OUT)/model/config.json
	$(RA_BIN)ra-graft --random-init $< --seed $(INIT_SEED) > $@.tmp && mv $@.tmp $@

# Needs ra-mohawk3 with --device cuda on a GPU machine for a real run.
$(OUT)/teacher.ra: $(OUT)/init.ra $(OUT)/train.ra $(OUT)/heldout.ra
	$(RA_BIN)ra-mohawk3 --loss ce -s $< -d $(OUT)/train.ra --heldout $(OUT)/heldout.ra --seq-len $(SEQ) \
	    --batch $(BATCH) --tokens $(TRAIN_TOKENS) --lr $(LR) --eval-every 500 --ckpt-dir $(OUT)/ck --ckpt-every 1000 \
	    --log $(OUT)/teacher.log.tsv --device $(DEVICE) -o $@

$(OUT)/eval.md: $(OUT)/teacher.ra $(OUT)/heldout-docs.ra
	$(RA_BIN)ra-eval -m $< --tokenizer $(OUT)/tokenizer --task kv,ppl -d $(OUT)/heldout-docs.ra --words $(WORDS) \
	    --device $(DEVICE) -o $(OUT)/eval.ra > $@.tmp && mv $@.tmp $@

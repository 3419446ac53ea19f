# teacher.mk: the small real teacher (issue 8), made with the project's own
# tools: data -> tokenizer -> token streams -> random-init Llama -> next-token
# pretraining (ra-mohawk3 --loss ce) -> Hugging Face export -> KV and ppl eval.
#
#   make -f pipelines/teacher.mk tokenizer         # CPU: text + tokenizer (a minute)
#   make -f pipelines/teacher.mk tokens            # CPU: + the token streams
#   make -f pipelines/teacher.mk eval DEVICE=cuda  # GPU: + init, training, export, eval
#
# tests/gpu/train_teacher.sh runs the GPU part in one device call from the
# text and tokenizer made here (the GPU machine has another /usr/share/doc);
# tests/fixtures/teacher/REBUILD.md has the exact commands of the committed
# teacher.
#
#   text      OUT/text/NNNNN.txt, OUT/text.list: natural English from the
#             Debian documentation of the machine: /usr/share/doc/**/ README*,
#             copyright, NEWS*, *.txt, *.md, *.rst (gzip'd ones decompressed;
#             no changelogs), in sorted path order; files of 200..TEXT_MAX_BYTES
#             bytes, text (grep -I), each distinct content once (the same GPL
#             copyright file ships with hundreds of packages), at most
#             TEXT_MAX_FILES.  text.list marks every HELDOUT_EVERY-th file H
#             (held out), the others T; text.sources names each file's source.  (Rendered man pages are not used:
#             CI's fresh Debian image has no man-db/groff.)
#   tokenizer OUT/tokenizer/{tokenizer.json,tokenizer_config.json}:
#             `ra-tok --train-bpe VOCAB` (byte-level BPE, Llama-3
#             pre-tokenizer, <|begin_of_text|> / <|end_of_text|>) on
#             OUT/tok.jsonl: KV_TOK KV documents of the training stream
#             (document i of a seed does not depend on the count) and the
#             T text files once.
#   data      OUT/train.jsonl: `ra-tok --gen-kv` mixture of KV_TRAIN
#             KV-retrieval documents (lib/kv_docs.h: the probe's format half
#             the time, varied templates, 1-60 pairs, 1-8 questions) and the T
#             text files TEXT_REPEAT times each, shuffled by SEED_TRAIN.
#             OUT/heldout.jsonl: KV_HELDOUT documents of SEED_HELDOUT and the
#             H files.  SEED_TRAIN / SEED_HELDOUT differ from each other and
#             from ra-probe's (1) and ra-eval kv's (1000003) prompt seeds,
#             which ra-tok refuses anyway; the KV documents draw from their
#             own generator, not the probe's.
#   tokens    OUT/train.ra, OUT/heldout.ra: packed rows of SEQ tokens (every
#             document starts with <|begin_of_text|>); OUT/heldout-text.ra:
#             the H text files as documents (for ra-eval ppl).
#   init      OUT/model/config.json (a Llama: LAYERS, HIDDEN, HEADS,
#             KV_HEADS, head_dim HIDDEN/HEADS, INTER, vocabulary VOCAB, RoPE
#             theta 500000, tied embeddings, max_position_embeddings SEQ)
#             and OUT/init.ra: `ra-graft --random-init` of it.
#   teacher   OUT/teacher.ra: `ra-mohawk3 --loss ce` on train.ra for
#             TRAIN_TOKENS tokens (held-out loss on heldout.ra), stored in
#             DTYPE.  Needs --device cuda for a useful TRAIN_TOKENS.
#   hf        OUT/hf/: config.json + model.safetensors (`ra-show --hf-out`)
#             + tokenizer.json + tokenizer_config.json: the teacher in
#             Hugging Face layout.
#   eval      OUT/eval.md, OUT/eval.ra: `ra-eval --task kv,ppl` of OUT/hf
#             (KV prompts with ra-eval's own held-out seed, keys from
#             EVAL_WORDS; ppl on heldout-text.ra in windows of SEQ), and
#             OUT/eval-kv-words2.md: the KV part again with keys from WORDS2
#             (default tests/fixtures/words.txt, the word list of machines
#             without /usr/share/dict/words).
#   gpu-data  OUT/gpu-data/: what tests/gpu/train_teacher.sh needs from this
#             machine: text.tar.gz, text.list, tokenizer/, words (WORDS).
#   probe     OUT/probe.log: PROBE_STEPS training steps of the teacher's
#             shape and batch, for its tokens/s (tests/gpu/train_teacher.sh
#             sizes TRAIN_TOKENS with it).
#
# Everything is a deterministic function of the variables, the word list and
# the installed /usr/share/doc files; the tools write their outputs
# atomically.  The defaults are the committed teacher's: 8 layers, hidden
# 256, 8 heads (hd 32), 2 KV heads, intermediate 704, vocabulary 8192:
# 7.7 M parameters, 15.5 MB in bf16.

RA_BIN ?=
OUT ?= teacher-out
VOCAB ?= 8192
SEQ ?= 1024
KV_TOK ?= 20000
KV_TRAIN ?= 450000
KV_HELDOUT ?= 2000
TEXT_REPEAT ?= 7
SEED_TRAIN ?= 11
SEED_HELDOUT ?= 12
WORDS ?= /usr/share/dict/words
EVAL_WORDS ?= $(WORDS)
DOC_ROOT ?= /usr/share/doc
TEXT_MAX_BYTES ?= 200000
TEXT_MAX_FILES ?= 5000
HELDOUT_EVERY ?= 20
LAYERS ?= 8
HIDDEN ?= 256
HEADS ?= 8
KV_HEADS ?= 2
INTER ?= 704
MAX_POS ?= $(SEQ)
INIT_SEED ?= 1
DEVICE ?= cpu
TRAIN_TOKENS ?= 60000000
LR ?= 2e-3
WARMUP ?= 0.05
DECAY ?= 0.2
CLIP ?= 1
BATCH ?= 32
TRAIN_SEED ?= 1
EVAL_EVERY ?= 200
EVAL_BATCHES ?= 4
CKPT_EVERY ?= 1000
DTYPE ?= bf16
KV_PAIRS ?= 10,20,30,40,50
KV_SAMPLES ?= 256
WORDS2 ?= $(patsubst %/pipelines/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))/tests/fixtures/words.txt
PROBE_STEPS ?= 30

RA_TOK := $(RA_BIN)ra-tok
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DELETE_ON_ERROR:
.PHONY: all text tokenizer data tokens init teacher hf eval probe gpu-data

all: tokens
text: $(OUT)/text.list
tokenizer: $(OUT)/tokenizer/tokenizer.json
data: $(OUT)/train.jsonl $(OUT)/heldout.jsonl
tokens: $(OUT)/train.ra $(OUT)/heldout.ra $(OUT)/heldout-text.ra
init: $(OUT)/init.ra
teacher: $(OUT)/teacher.ra
hf: $(OUT)/hf/model.safetensors
eval: $(OUT)/eval.md $(OUT)/eval-kv-words2.md
probe: $(OUT)/probe.log
gpu-data: $(OUT)/gpu-data/text.tar.gz

# The natural-text files, numbered in sorted source order; text.list names
# them with a T (train) or H (held out) mark.
$(OUT)/text.list:
	mkdir -p $(OUT)/text
	rm -f $(OUT)/text/*.txt $(OUT)/text/seen
	i=0; : > $@.tmp; : > $(OUT)/text/seen; : > $(OUT)/text.sources; \
	while IFS= read -r f; do \
	    case "$$f" in *.gz) zcat -- "$$f" > $(OUT)/text/cur 2>/dev/null || continue ;; \
	                  *) cat -- "$$f" > $(OUT)/text/cur ;; esac; \
	    n=$$(wc -c < $(OUT)/text/cur); \
	    if [ "$$n" -lt 200 ] || [ "$$n" -gt $(TEXT_MAX_BYTES) ]; then continue; fi; \
	    grep -qI . $(OUT)/text/cur || continue; \
	    h=$$(md5sum < $(OUT)/text/cur); h=$${h%% *}; \
	    if grep -qxF "$$h" $(OUT)/text/seen; then continue; fi; \
	    echo "$$h" >> $(OUT)/text/seen; \
	    i=$$((i + 1)); name=$$(printf '%s/text/%05d.txt' $(OUT) $$i); mv $(OUT)/text/cur "$$name"; \
	    if [ $$((i % $(HELDOUT_EVERY))) -eq 0 ]; then echo "H $$name"; else echo "T $$name"; fi >> $@.tmp; \
	    printf '%05d.txt\t%s\n' $$i "$$f" >> $(OUT)/text.sources; \
	    [ $$i -lt $(TEXT_MAX_FILES) ] || break; \
	done < <(find -L $(DOC_ROOT) -type f \( -name 'README*' -o -name copyright -o -name 'NEWS*' \
	                -o -name '*.txt' -o -name '*.md' -o -name '*.rst' \
	                -o -name '*.txt.gz' -o -name '*.md.gz' -o -name '*.rst.gz' \) | LC_ALL=C sort)
	rm -f $(OUT)/text/cur $(OUT)/text/seen
	mv $@.tmp $@

$(OUT)/tok.jsonl: $(OUT)/text.list
	$(RA_TOK) --gen-kv $(KV_TOK) --seed $(SEED_TRAIN) --words $(WORDS) -o $@ $$(sed -n 's/^T //p' $<)

$(OUT)/tokenizer/tokenizer.json: $(OUT)/tok.jsonl
	mkdir -p $(@D)
	$(RA_TOK) --train-bpe $(VOCAB) --jsonl -q -o $@ $<
	printf '{"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}\n' > $(@D)/tokenizer_config.json

$(OUT)/gpu-data/text.tar.gz: $(OUT)/text.list $(OUT)/tokenizer/tokenizer.json
	mkdir -p $(@D)/tokenizer
	cp $(OUT)/text.list $(@D)/
	cp $(OUT)/tokenizer/tokenizer.json $(OUT)/tokenizer/tokenizer_config.json $(@D)/tokenizer/
	cp $(WORDS) $(@D)/words
	tar -C $(OUT) -czf $@.tmp text
	mv $@.tmp $@

$(OUT)/train.jsonl: $(OUT)/text.list
	$(RA_TOK) --gen-kv $(KV_TRAIN) --seed $(SEED_TRAIN) --words $(WORDS) -o $@ \
	    $$(for r in $$(seq $(TEXT_REPEAT)); do sed -n 's/^T //p' $<; done)

$(OUT)/heldout.jsonl: $(OUT)/text.list
	$(RA_TOK) --gen-kv $(KV_HELDOUT) --seed $(SEED_HELDOUT) --words $(WORDS) -o $@ $$(sed -n 's/^H //p' $<)

$(OUT)/train.ra: $(OUT)/train.jsonl $(OUT)/tokenizer/tokenizer.json
	$(RA_TOK) -t $(OUT)/tokenizer --jsonl --pack $(SEQ) -q -o $@ $<

$(OUT)/heldout.ra: $(OUT)/heldout.jsonl $(OUT)/tokenizer/tokenizer.json
	$(RA_TOK) -t $(OUT)/tokenizer --jsonl --pack $(SEQ) -q -o $@ $<

$(OUT)/heldout-text.ra: $(OUT)/text.list $(OUT)/tokenizer/tokenizer.json
	$(RA_TOK) -t $(OUT)/tokenizer -q -o $@ $$(sed -n 's/^H //p' $<)

# A Llama-3-style config (RoPE theta 500000, tied embeddings) of the tokenizer's vocabulary.
$(OUT)/model/config.json: $(OUT)/tokenizer/tokenizer.json
	mkdir -p $(@D)
	printf '{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": %d, "hidden_size": %d, "intermediate_size": %d, "num_hidden_layers": %d, "num_attention_heads": %d, "num_key_value_heads": %d, "head_dim": %d, "max_position_embeddings": %d, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": true, "hidden_act": "silu", "bos_token_id": %d, "eos_token_id": %d, "torch_dtype": "bfloat16"}\n' \
	    $(VOCAB) $(HIDDEN) $(INTER) $(LAYERS) $(HEADS) $(KV_HEADS) $$(($(HIDDEN) / $(HEADS))) $(MAX_POS) $$(($(VOCAB) - 2)) $$(($(VOCAB) - 1)) > $@

$(OUT)/init.ra: $(OUT)/model/config.json
	$(RA_BIN)ra-graft --random-init $< --seed $(INIT_SEED) -q -o $@

# Training speed of this shape, batch and device (the model is thrown away).
$(OUT)/probe.log: $(OUT)/init.ra $(OUT)/train.ra
	$(RA_BIN)ra-mohawk3 --loss ce -s $< -d $(OUT)/train.ra --seq-len $(SEQ) --batch $(BATCH) --steps $(PROBE_STEPS) \
	    --lr 1e-4 --log $@.tmp --device $(DEVICE) -q -o $(OUT)/probe.ra
	rm -f $(OUT)/probe.ra
	mv $@.tmp $@

# Needs ra-mohawk3 with --device cuda on a GPU machine for a real run.
$(OUT)/teacher.ra: $(OUT)/init.ra $(OUT)/train.ra $(OUT)/heldout.ra
	$(RA_BIN)ra-mohawk3 --loss ce -s $< -d $(OUT)/train.ra --heldout $(OUT)/heldout.ra --seq-len $(SEQ) \
	    --batch $(BATCH) --tokens $(TRAIN_TOKENS) --lr $(LR) --warmup $(WARMUP) --decay $(DECAY) --clip $(CLIP) \
	    --seed $(TRAIN_SEED) --eval-every $(EVAL_EVERY) --eval-batches $(EVAL_BATCHES) \
	    --ckpt-dir $(OUT)/ck --ckpt-every $(CKPT_EVERY) --keep 1 \
	    --log $(OUT)/train.log --dtype $(DTYPE) --device $(DEVICE) -o $@

$(OUT)/hf/model.safetensors: $(OUT)/teacher.ra $(OUT)/tokenizer/tokenizer.json
	$(RA_BIN)ra-show -q --hf-out $(@D) $<
	cp $(OUT)/tokenizer/tokenizer.json $(OUT)/tokenizer/tokenizer_config.json $(@D)/

$(OUT)/eval.md: $(OUT)/hf/model.safetensors $(OUT)/heldout-text.ra
	$(RA_BIN)ra-eval -m $(OUT)/hf --task kv,ppl --pairs $(KV_PAIRS) --samples $(KV_SAMPLES) --words $(EVAL_WORDS) \
	    -d $(OUT)/heldout-text.ra --ctx $(SEQ) --device $(DEVICE) -q -o $(OUT)/eval.ra > $@.tmp && mv $@.tmp $@

$(OUT)/eval-kv-words2.md: $(OUT)/hf/model.safetensors
	$(RA_BIN)ra-eval -m $(OUT)/hf --task kv --pairs $(KV_PAIRS) --samples $(KV_SAMPLES) --words $(WORDS2) \
	    --device $(DEVICE) -q > $@.tmp && mv $@.tmp $@

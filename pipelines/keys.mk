# keys.mk: how distill.mk and table1.mk name their artifacts (included by both).
#
# $(call key,STRING): 16 hex digits naming an artifact (a key names the tool,
#   its version, its parameters and the keys or content ids of its inputs)
# $(call sha,FILES): 16 hex digits of the files' bytes, in order
# $(call content,FLAGS): FLAGS with every word that names a regular file
#   replaced by file:<sha of its bytes> and the word $(TEACHER) by the teacher's
#   content id, so a key follows what a words list, tokenizer or teacher holds,
#   not where it lies: moving the checkout reruns nothing, and a changed file at
#   the same path is not taken for the old one.  (A directory's trailing "/."
#   tells it from a file: $(wildcard FILE/) matches files too.)
key = $(shell printf '%s' '$(1)' | sha256sum | cut -c1-16)
sha = $(shell cat $(1) | sha256sum | cut -c1-16)
content = $(foreach w,$(1),$(if $(filter $(TEACHER),$(w)),teacher:$(TEACHER_ID),$(if $(wildcard $(w)),$(if \
    $(wildcard $(w)/.),$(w),file:$(call sha,$(w))),$(w))))

#!/usr/bin/env bash
# Regenerates the seed corpora of fuzz_tokenizer_json and fuzz_encode
# (tests/fuzz/corpus/tokenizer_json/, tests/fuzz/corpus/encode/) from the
# committed parity fixtures, cut down to the first merges so each seed stays
# far below the fuzz run's 64 KiB input limit.  Needs jq.
set -eu
cd "$(dirname "$0")/../.."
fix=tests/fixtures/tokenizers
out=tests/fuzz/corpus/tokenizer_json
mkdir -p "$out"
# Merge i of a trained tokenizer makes token 256 + i, so keeping the first K
# merges and the ids below 256 + K (plus the added tokens) stays consistent.
cut() { # SRC K DEST [extra jq filter]
    jq -c --argjson k "$2" "
        .model.merges |= .[:\$k]
        | .model.vocab |= with_entries(select(.value < 256 + \$k))
        ${4:-}" "$fix/$1/tokenizer.json" >"$3"
}
cut llama3-style 60 "$out/llama3.json"
cut qwen2-style 40 "$out/qwen2.json"
cut gpt2-style 40 "$out/gpt2.json"
cut llama3-style 30 "$out/legacy-merges.json" '| .model.merges |= map(join(" "))'
cut gpt2-style 20 "$out/added-flags.json" \
    '| .added_tokens += [{"id": 9000, "content": "tool", "single_word": true, "lstrip": true, "rstrip": true,
                          "normalized": true, "special": false}]'
printf '{"model": {"type": "Unigram"}}' >"$out/unigram.json"
printf '{"model": {"type": "BPE", "vocab": {}, "merges": []}, "pre_tokenizer": {"type": "ByteLevel"}}' \
    >"$out/empty-vocab.json"

out=tests/fuzz/corpus/encode
mkdir -p "$out"
i=0
while IFS= read -r hex; do
    printf "$(printf '\\x%02x' $((i % 2)))$(printf '%s' "$hex" | sed 's/../\\x&/g')" >"$out/case-$i"
    i=$((i + 1))
done < <(jq -r 'select(.tokenizer == "llama3-style" and .specials) | .input_hex' "$fix/cases.jsonl" |
         awk 'length($0) <= 2000' | head -n 40)

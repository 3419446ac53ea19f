#!/usr/bin/env bash
# The small real teacher (issue 8) in one GPU-machine job: build, the token
# streams, a throughput probe, next-token pretraining sized to TRAIN_SECONDS,
# Hugging Face export, KV retrieval and perplexity, all through
# pipelines/teacher.mk.  The text and the tokenizer are made beforehand on a
# machine with the Debian documentation (make -f pipelines/teacher.mk
# tokenizer) and brought in DATA (the GPU machine has another /usr/share/doc
# and no word list):
#
#   DATA/text.tar.gz    text/NNNNN.txt of that OUT (tar -C OUT -czf ... text)
#   DATA/text.list      that OUT's text.list
#   DATA/tokenizer/     tokenizer.json, tokenizer_config.json
#   DATA/words          the word list of the KV documents (/usr/share/dict/words)
#
#   tests/gpu/train_teacher.sh DATA      (from the repository root)
#
# Environment: OUT (results, default /tmp/ra-teacher), DEVICE (cuda; cpu
# rehearses the whole job), TRAIN_SECONDS (210: the training budget),
# TRAIN_TOKENS (skips the probe), BUILD (1: make the tools; 0: use bin/ as
# is), MAKEFLAGS_TEACHER (extra teacher.mk variables, e.g. small sizes for a
# rehearsal).  Results under $OUT: teacher/ (config.json, model.safetensors,
# train.log, eval.md, eval-kv-words2.md) and job.log; a short table last.
set -uo pipefail
cd "$(dirname "$0")/../.."
DATA=$(cd "${1:?usage: tests/gpu/train_teacher.sh DATA}" && pwd)
OUT=${OUT:-/tmp/ra-teacher}
DEVICE=${DEVICE:-cuda}
TRAIN_SECONDS=${TRAIN_SECONDS:-210}
BUILD=${BUILD:-1}
W=${WORK:-/tmp/ra-teacher-work}
mkdir -p "$OUT/teacher"
exec > >(tee "$OUT/job.log") 2>&1
t0=$(date +%s)
stamp() { echo "== $(($(date +%s) - t0)) s: $*"; }
die() { stamp "FAILED: $*"; exit 1; }

if [ "$BUILD" = 1 ]; then
    stamp "build"
    mv=(CUDA=0)
    if [ "$DEVICE" = cuda ]; then mv=(CUDA=1); [ -d .deps ] && mv+=(DEPS_PREFIX=$PWD/.deps); fi
    make "${mv[@]}" -j"$(nproc)" bin/ra-tok bin/ra-graft bin/ra-mohawk3 bin/ra-show bin/ra-eval >"$OUT/build.log" 2>&1 ||
        { grep -E 'error' "$OUT/build.log" | head -n 30; die "build (see build.log)"; }
fi
[ "$DEVICE" != cuda ] || nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

stamp "data: text and tokenizer from $DATA; KV documents and token streams here"
rm -rf "$W" && mkdir -p "$W/tokenizer"
tar -C "$W" -xzf "$DATA/text.tar.gz" || die "untar text"
sed "s| .*/text/| $W/text/|" "$DATA/text.list" > "$W/text.list"
cp "$DATA"/tokenizer/tokenizer.json "$DATA"/tokenizer/tokenizer_config.json "$W/tokenizer/"
sha256sum "$W/tokenizer/tokenizer.json" "$DATA/words"
# text.list and the tokenizer are given: -o keeps make from remaking them
TMK=(make -s -f pipelines/teacher.mk OUT="$W" RA_BIN="$PWD/bin/" WORDS="$DATA/words" DEVICE="$DEVICE"
     -o "$W/text.list" -o "$W/tok.jsonl" -o "$W/tokenizer/tokenizer.json" ${MAKEFLAGS_TEACHER:-})
"${TMK[@]}" -j3 tokens init || die "token streams"
for f in train heldout; do bin/ra-tok --to-ids "$W/$f.ra" | wc -w | sed "s/^/$f tokens: /"; done

tokens=${TRAIN_TOKENS:-}
if [ -z "$tokens" ]; then
    stamp "throughput probe"
    "${TMK[@]}" probe || die "throughput probe"
    # tokens / elapsed over the second half of the steps (the first ones warm up)
    tps=$(awk -F'\t' 'NR > 1 { n++; t[n] = $2; e[n] = $7 } END { h = int(n / 2);
        if (n > 2 && e[n] > e[h]) printf "%d", (t[n] - t[h]) / (e[n] - e[h]) }' "$W/probe.log")
    [ -n "$tps" ] && [ "$tps" -gt 0 ] || die "no tokens/s in probe.log"
    tokens=$((tps * TRAIN_SECONDS))
    echo "probe: $tps tokens/s -> TRAIN_TOKENS=$tokens for $TRAIN_SECONDS s"
fi

stamp "train: ra-mohawk3 --loss ce, $tokens tokens"
"${TMK[@]}" TRAIN_TOKENS="$tokens" teacher || die "training"
stamp "export and evaluate"
"${TMK[@]}" TRAIN_TOKENS="$tokens" eval || die "eval"
cp "$W/hf/config.json" "$W/hf/model.safetensors" "$W/train.log" "$W/eval.md" "$W/eval-kv-words2.md" "$OUT/teacher/"
sha256sum "$W/hf/tokenizer.json" "$OUT/teacher/model.safetensors"
stamp "done"

echo
echo "== summary ($DEVICE, $(($(date +%s) - t0)) s)"
echo "| what | value |"
echo "|---|---|"
echo "| training tokens | $tokens |"
awk -F'\t' 'NR > 1 { last = $0; if ($8 != "") ev = $8 } END { split(last, a, "\t");
    printf "| steps, last loss, tokens/s, elapsed s | %s, %s, %s, %s |\n| last held-out loss | %s |\n", a[1], a[3], a[6], a[7], ev }' "$W/train.log"
echo "| model.safetensors bytes | $(stat -c %s "$OUT/teacher/model.safetensors") |"
for f in eval.md eval-kv-words2.md; do
    awk -v f="$f" '/^### / { sec = $0 } /^\| [0-9]/ { gsub(/ /, ""); split($0, a, "|");
        if (sec ~ /Language/) printf "| %s: held-out text, %s documents, %s tokens | ppl %s |\n", f, a[2], a[3], a[5];
        else printf "| %s: KV %s, %s pairs | acc %s |\n", f, (sec ~ /choice/ ? "choice" : "last-token"), a[2], a[4] }' "$W/$f"
done

#!/usr/bin/env bash
# ra-tok throughput on English text (a benchmark, never a test).
#
#   bench/tokenize.sh [TEXT]        TEXT defaults to 20 MB of English prose
#                                   (Debian's license and copyright texts)
#   TOKENIZERS="dir ..." bench/tokenize.sh     tokenizers to time (default:
#                                   the parity fixtures; add a real Llama-3 or
#                                   Qwen2 model directory for real vocabularies)
#
# For each tokenizer: ra-tok on the whole file as one document, and with
# --lines (one document per line), timed with /usr/bin/time.  "MB/s per core"
# is bytes / (user + sys CPU seconds), which does not count waiting for the
# disk (the output is fsynced) or for other processes on a busy machine.
# When python3 has the `tokenizers` library, Hugging Face's encode of the same
# text is timed next to it (one thread).  Writes bench/results/tokenize.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/ra-bench-tokenize}
mkdir -p "$OUT" bench/results
TEXT=${1:-$OUT/english.txt}
TOKENIZERS=${TOKENIZERS:-"tests/fixtures/tokenizers/llama3-style tests/fixtures/tokenizers/qwen2-style tests/fixtures/tokenizers/gpt2-style"}
[ -x bin/ra-tok ] || make -s CUDA=0 bin/ra-tok || { echo "bench: build failed"; exit 1; }
if [ ! -s "$TEXT" ]; then
    cat /usr/share/common-licenses/* /usr/share/doc/*/copyright 2>/dev/null | head -c 20000000 >"$TEXT"
fi
bytes=$(stat -c %s "$TEXT")
mb=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1e6 }')

# run LABEL ARGS...: one timed ra-tok run; prints a table row
run() {
    local label=$1
    shift
    /usr/bin/time -f '%e %U %S %M' -o "$OUT/time" bin/ra-tok -q --stats "$@" -o "$OUT/out.ra" 2>"$OUT/stats" ||
        { echo "| $label | failed: $(tail -n 1 "$OUT/stats") |"; return; }
    read -r wall user sys rss <"$OUT/time"
    local toks
    toks=$(grep -o '[0-9]* tokens' "$OUT/stats" | head -n 1 | cut -d' ' -f1)
    awk -v l="$label" -v b="$bytes" -v w="$wall" -v u="$user" -v s="$sys" -v r="$rss" -v t="$toks" 'BEGIN {
        printf "| %s | %d | %.2f | %.2f | %.1f | %.1f | %.0f |\n", l, t, w, u + s, b / 1e6 / (u + s), b / 1e6 / w, r / 1024 }'
}

{
    echo "# ra-tok throughput"
    echo
    echo "Input: $TEXT, $mb MB of English text. Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')."
    echo "Load average at the start: $(cut -d' ' -f1-3 /proc/loadavg). ra $(bin/ra-tok --version | awk '{print $3}'), $(date -u +%Y-%m-%d)."
    echo
    echo "| run | tokens | wall s | CPU s | MB/s per core (CPU) | MB/s (wall) | peak RSS MB |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    for t in $TOKENIZERS; do
        name=$(basename "$t")
        run "$name, whole file" -t "$t" "$TEXT"
        run "$name, --lines" -t "$t" --lines "$TEXT"
        run "$name, --pack 2048" -t "$t" --pack 2048 "$TEXT"
    done
    if python3 -c 'import tokenizers' 2>/dev/null; then
        echo
        echo "Hugging Face tokenizers $(python3 -c 'import tokenizers; print(tokenizers.__version__)'), same text, one thread:"
        echo
        echo "| run | tokens | s | MB/s |"
        echo "| --- | ---: | ---: | ---: |"
        for t in $TOKENIZERS; do
            RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false python3 - "$t" "$TEXT" <<'PY'
import os, sys, time
from tokenizers import Tokenizer
d, path = sys.argv[1], sys.argv[2]
tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json") if os.path.isdir(d) else d)
text = open(path, "rb").read().decode("utf-8", errors="replace")
t0 = time.process_time(); ids = tok.encode(text).ids; t1 = time.process_time()
n = len(text.encode("utf-8"))
print(f"| {os.path.basename(d.rstrip('/'))}, whole file | {len(ids)} | {t1 - t0:.2f} | {n / 1e6 / (t1 - t0):.1f} |")
PY
        done
    fi
} | tee bench/results/tokenize.md

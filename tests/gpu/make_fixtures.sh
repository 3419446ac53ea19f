#!/usr/bin/env bash
# Run on the GPU machine (it has torch, transformers, tokenizers, safetensors):
# regenerates every golden fixture that needs the Python reference libraries
# and packs them into $OUT/fixtures.tar.gz for committing.
#   tests/gpu/make_fixtures.sh            (from the repository root)
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/ra-fixtures}; mkdir -p "$OUT"
python3 -c 'import torch, transformers, tokenizers, safetensors; print("torch", torch.__version__, "transformers", transformers.__version__, "tokenizers", tokenizers.__version__)' | tee "$OUT/versions.txt"
status=0
for script in tests/fixtures/make_golden.py tests/fixtures/make_tokenizers.py tests/ref/dm2.py; do
    [ -f "$script" ] || { echo "skip $script (absent)"; continue; }
    echo "== $script"
    if python3 "$script" >"$OUT/$(basename "$script" .py).log" 2>&1; then
        echo "ok $script"; tail -n 5 "$OUT/$(basename "$script" .py).log"
    else
        echo "FAILED $script"; tail -n 30 "$OUT/$(basename "$script" .py).log"; status=1
    fi
done
dirs=$(ls -d tests/fixtures/golden tests/fixtures/tokenizers tests/fixtures/dm2 2>/dev/null)
[ -n "$dirs" ] && tar czf "$OUT/fixtures.tar.gz" $dirs && ls -la "$OUT"
exit $status

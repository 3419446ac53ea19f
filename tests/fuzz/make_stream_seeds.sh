#!/usr/bin/env bash
# Regenerates the seed corpus of fuzz_stream (tests/fuzz/corpus/stream/) with
# the test helper build/tests/ra-mkstream (run `make CUDA=0` first).
set -eu
cd "$(dirname "$0")/../.."
mk=build/tests/ra-mkstream
out=tests/fuzz/corpus/stream
mkdir -p "$out"
printf 'kind plan\n' | $mk -o "$out/header-only.ra"
$mk -o "$out/mixed.ra" <<'DESC'
kind model
meta {"config": {"hidden_size": 8, "num_hidden_layers": 2, "rope_theta": 500000.0, "tie": true, "bias": null}}
provenance {"tool": "ra-mkstream", "inputs": [{"path": "a.ra", "id": "00112233445566778899aabbccddeeff"}]}
tensor emb f32 4x2
tensor norm bf16 scalar 3
split 7
tensor w u8 3x5
tensor e i32 2x0
DESC
$mk -o "$out/dtypes.ra" <<'DESC'
kind scores
meta {"nested": [1, [2, [3, {"x": [false, -7, 1.5e-300, "h\u00e9"]}]]]}
tensor a bf16 3
tensor b f16 2x1
tensor c f32 1x1x1
tensor d f64 2
tensor e i32 3
tensor f i64 1
tensor g u8 5
DESC
$mk -o "$out/parts.ra" <<'DESC'
kind checkpoint
split 12
tensor big f32 5x4 9
tensor small i64 2
DESC

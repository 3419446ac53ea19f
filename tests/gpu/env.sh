# Sourced by the GPU-machine job scripts (tests/gpu/run*.sh) from the
# repository root: the log folder $OUT (default /tmp/ra-gpu) and the make
# variables of a CUDA build, with .deps/ (tests/gpu/pack-deps.sh) as
# DEPS_PREFIX when present.
OUT=${OUT:-/tmp/ra-gpu}
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1
if [ -z "${DEPS_PREFIX:-}" ] && [ -d .deps ]; then DEPS_PREFIX=$PWD/.deps; fi
MAKEVARS=(CUDA=1 ${DEPS_PREFIX:+DEPS_PREFIX=$DEPS_PREFIX})

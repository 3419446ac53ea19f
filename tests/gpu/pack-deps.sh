#!/usr/bin/env bash
# Gather the headers and static libraries of the Debian -dev packages into
# .deps/ so the GPU machine (which lacks them) can build with
#   make DEPS_PREFIX=$PWD/.deps
# Carry .deps in the device call.  Run here, after `make deps`.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .deps && mkdir -p .deps/include .deps/lib
inc=/usr/include; arch=/usr/lib/x86_64-linux-gnu
cp -r $inc/msgpack $inc/msgpack.h $inc/xxhash.h $inc/jansson.h $inc/jansson_config.h $inc/pcre2.h .deps/include/
cp $inc/x86_64-linux-gnu/openblas-pthread/*.h .deps/include/
for l in msgpackc xxhash jansson pcre2-8; do cp $arch/lib$l.a .deps/lib/; done
du -sh .deps

#!/usr/bin/env bash
# table1-gpu.sh: the headline experiment (pipelines/table1.mk) with GPU budgets
# on a GPU machine, and its report made afterwards on a machine with jq and
# gnuplot (the GPU machine may have neither).  Run from the repository root.
#
#   pipelines/table1-gpu.sh run [OUTDIR]    # GPU machine; OUTDIR default $OUT, else /tmp/table1-gpu
#   pipelines/table1-gpu.sh report DIR      # here: DIR = a copy of OUTDIR; writes results/table1.md
#                                           # (REPORT_DIR=D: D/table1.md and D/table1/ instead)
#
# run: builds the tools with CUDA (BUILD=0: use bin/ as it is), checks which
# training stages run on CUDA for a hybrid student (ra-mohawk2/3 --device cuda
# on one grafted student, one step; a stage that exits 69 trains on the CPU
# with the CPU_* budgets instead, and the report says so in its settings),
# then makes the grid's ra artifacts (table1.mk streams) in two phases:
#   core  heads kept 0, ~2%, all; routed and parallel; N = head dim; random control at ~2%
#   full  table1.mk's whole grid (1, ~5%, ~10% heads, N = hd/8, attention and svd inits,
#         controls at ~5% and ~10% too)
# The phases share every artifact (the full grid contains the core).  After
# each phase the results streams (and scores, plans, the log) are copied to
# OUTDIR/table1-out, so a run cut short still brings the core back.  The
# students stay on the machine (too large to bring back, and not needed).
#
# report: copies DIR/table1-out to a scratch directory and makes the report
# with exactly the run's variables: the full grid when every one of its
# results streams is there, else the core.  Nothing is trained or evaluated
# here: it refuses if the results of the grid it reports are missing.
#
# Environment (both modes must see the same values): TEACHER (default
# tests/fixtures/teacher), WORDS (tests/fixtures/words.txt), and the budgets
# below; run also: BUILD, PHASES ("core full"), MAKE_JOBS (configurations at once, default 8), JOBS
# (stage-2 layers at once per configuration, 2), S2_DEVICE / S3_DEVICE
# (auto: the check above; cuda or cpu to force), DEVICE (cuda; cpu rehearses
# the script with tiny budgets, e.g. in CI-like conditions), PROBE_PAIRS,
# EVAL_PAIRS, SEQ_LEN, BATCH, S2_TOKENS, S3_TOKENS, S2_LR, S3_LR,
# CPU_S2_TOKENS, CPU_S3_TOKENS, PROBE_SAMPLES, EVAL_SAMPLES, DATA_KV_DOCS, SPEED_FLAGS.
#
# Budgets for an ~8-layer, ~64-head teacher (hidden 256..512) on one H200,
# aiming at <= 8 minutes of machine time in all: probe 256 prompts of 50
# pairs; stage 2 S2_TOKENS per layer, stage 3 S3_TOKENS, rows of SEQ_LEN x
# BATCH; ra-eval 128 prompts at 10..50 pairs, speed up to batch 32.
set -uo pipefail

TEACHER=${TEACHER:-tests/fixtures/teacher}
REPORT_DIR=${REPORT_DIR:-results}
WORDS=${WORDS:-tests/fixtures/words.txt}
SEQ_LEN=${SEQ_LEN:-1024}
BATCH=${BATCH:-16}
S2_TOKENS=${S2_TOKENS:-2000000}
S3_TOKENS=${S3_TOKENS:-4000000}
S2_LR=${S2_LR:-1e-3}
S3_LR=${S3_LR:-3e-4}
CPU_S2_TOKENS=${CPU_S2_TOKENS:-8192}
CPU_S3_TOKENS=${CPU_S3_TOKENS:-32768}
PROBE_PAIRS=${PROBE_PAIRS:-50}
PROBE_SAMPLES=${PROBE_SAMPLES:-256}
EVAL_PAIRS=${EVAL_PAIRS:-10,20,30,40,50}
EVAL_SAMPLES=${EVAL_SAMPLES:-128}
DEVICE=${DEVICE:-cuda}
DATA_KV_DOCS=${DATA_KV_DOCS:-20000}
SPEED_FLAGS=${SPEED_FLAGS:---max-batch 32 --prompt-len 128 --gen-len 32}

die() { echo "table1-gpu.sh: $*" >&2; exit 1; }
NOTE=
mode=${1:-}
[ -f pipelines/table1.mk ] || die "run me from the repository root"

# The make command of a phase: table1-gpu.sh's variables, the same in both modes.
mk() { # PHASE S2_DEVICE S3_DEVICE OUT [make arguments...]
    local phase=$1 s2dev=$2 s3dev=$3 out=$4
    shift 4
    local s2tok=$S2_TOKENS s3tok=$S3_TOKENS
    [ "$s2dev" = cuda ] || s2tok=$CPU_S2_TOKENS
    [ "$s3dev" = cuda ] || s3tok=$CPU_S3_TOKENS
    local grid=()
    [ "$phase" = core ] && grid=(KEEP="0 2% all" D_STATES=hd INIT_VARIANTS= RANDOM_AT=2%)
    make --no-print-directory -f pipelines/table1.mk TEACHER="$TEACHER" WORDS="$WORDS" OUT="$out" \
        DEVICE="$DEVICE" S2_DEVICE="$s2dev" S3_DEVICE="$s3dev" SEQ_LEN="$SEQ_LEN" BATCH="$BATCH" \
        S2_TOKENS="$s2tok" S3_TOKENS="$s3tok" S2_LR="$S2_LR" S3_LR="$S3_LR" PROBE_PAIRS="$PROBE_PAIRS" \
        PROBE_SAMPLES="$PROBE_SAMPLES" EVAL_PAIRS="$EVAL_PAIRS" EVAL_SAMPLES="$EVAL_SAMPLES" DATA_KV_DOCS="$DATA_KV_DOCS" \
        SPEED_FLAGS="$SPEED_FLAGS" RUN_NOTE="$NOTE" "${grid[@]}" "$@"
}

case $mode in
run)
    OUTDIR=${2:-${OUT:-/tmp/table1-gpu}}
    W=${WORK:-/tmp/table1-work}
    mkdir -p "$OUTDIR/table1-out" "$W"
    exec > >(tee -a "$OUTDIR/table1-gpu.log") 2>&1
    t0=$(date +%s)
    stamp() { echo "== $(($(date +%s) - t0)) s: $*"; }
    [ -d .tools ] && PATH="$PWD/.tools:$PATH"   # e.g. a carried GNU parallel
    export PATH="$PWD/bin:$PATH"
    command -v parallel >/dev/null || die "GNU parallel is not on PATH (carry /usr/bin/parallel in .tools/)"
    [ -d "$TEACHER" ] || die "TEACHER=$TEACHER: no such directory"
    if [ "${BUILD:-1}" = 1 ]; then
        stamp "build"
        deps=(CUDA=0); [ "$DEVICE" = cuda ] && deps=(CUDA=1)
        [ "$DEVICE" = cuda ] && [ -d .deps ] && deps+=(DEPS_PREFIX="$PWD/.deps")
        make "${deps[@]}" -j"$(nproc)" bin/ra-probe bin/ra-rank bin/ra-graft bin/ra-mohawk2 \
            bin/ra-mohawk3 bin/ra-merge bin/ra-eval bin/ra-show bin/ra-tok >"$OUTDIR/build.log" 2>&1 ||
            { grep -E 'error' "$OUTDIR/build.log" | head -n 30; die "build failed (build.log)"; }
    fi
    NOTE="$DEVICE run"
    if [ "$DEVICE" = cuda ]; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
        NOTE="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)"
    fi

    # The artifacts stay on the machine's disk under O; only small ones go back.
    O="$W/table1-out"
    mkdir -p "$O"
    bring_back() {
        cp "$O"/results-*.ra "$O"/teacher-eval-*.ra "$O"/scores-*.ra "$O"/plan-*.ra "$O"/manifest-*.txt \
            "$OUTDIR/table1-out/" 2>/dev/null
        return 0
    }
    # Which stages train a hybrid on CUDA: one step each on a student keeping 1 head.
    s2dev=${S2_DEVICE:-auto} s3dev=${S3_DEVICE:-auto}
    if [ "$s2dev" = auto ] || [ "$s3dev" = auto ]; then
        stamp "data, probe, and the CUDA check of stages 2 and 3"
        mk core cuda cuda "$O" data scores >"$OUTDIR/make-check.log" 2>&1 ||
            { tail -n 30 "$OUTDIR/make-check.log"; die "data or probe failed"; }
        train=$(ls "$O"/data-*/train.ra | head -n 1)
        ra-rank -q --top 1 -o "$W/check-plan.ra" "$(ls "$O"/scores-*.ra | head -n 1)" &&
            ra-graft -q -m "$TEACHER" -p "$W/check-plan.ra" -o "$W/check0.ra" || die "rank/graft for the check failed"
        ra-mohawk3 -q -m "$TEACHER" -s "$W/check0.ra" -d "$train" --seq-len 32 --batch 2 --steps 1 --device cuda \
            -o "$W/check3.ra" 2>"$W/check3.log"
        rc3=$?
        ra-mohawk2 -q -m "$TEACHER" -s "$W/check0.ra" -d "$train" --layers 0 --seq-len 32 --batch 2 --steps 1 \
            --device cuda -o "$W/check2.ra" 2>"$W/check2.log"
        rc2=$?
        echo "CUDA check: ra-mohawk2 exit $rc2 ($(tail -n 1 "$W/check2.log")); ra-mohawk3 exit $rc3 ($(tail -n 1 "$W/check3.log"))"
        [ "$s2dev" = auto ] && { [ $rc2 -eq 0 ] && s2dev=cuda || s2dev=cpu; }
        [ "$s3dev" = auto ] && { [ $rc3 -eq 0 ] && s3dev=cuda || s3dev=cpu; }
    fi
    echo "stage 2 on $s2dev, stage 3 on $s3dev"
    NOTE="$NOTE, stage 2 on $s2dev, stage 3 on $s3dev"
    printf 'S2_DEVICE=%s\nS3_DEVICE=%s\nNOTE=%s\n' "$s2dev" "$s3dev" "$NOTE" >"$OUTDIR/devices"
    MAKE_JOBS=${MAKE_JOBS:-8}
    if [ "$s2dev" = cpu ] || [ "$s3dev" = cpu ]; then
        # CPU training: share the cores among the configurations made at once
        t=$(($(nproc) / MAKE_JOBS)); [ "$t" -ge 1 ] || t=1
        export OMP_NUM_THREADS=$t OPENBLAS_NUM_THREADS=$t
    fi
    for phase in ${PHASES:-core full}; do
        stamp "phase $phase: $(mk "$phase" "$s2dev" "$s3dev" "$O" print-CONFIGS | wc -l) configurations"
        mk "$phase" "$s2dev" "$s3dev" "$O" -k -j"$MAKE_JOBS" JOBS="${JOBS:-2}" GPUS=1 streams \
            >"$OUTDIR/make-$phase.log" 2>&1
        rc=$?
        bring_back
        grep -E 'Error|error|failed' "$OUTDIR/make-$phase.log" | head -n 20
        [ $rc -eq 0 ] || die "phase $phase failed (make-$phase.log)"
        stamp "phase $phase done"
    done
    echo
    echo "== $(($(date +%s) - t0)) s in all; results streams: $(ls "$OUTDIR"/table1-out/results-*.ra | wc -l)"
    ;;
report)
    DIR=${2:?usage: table1-gpu.sh report DIR}
    [ -d "$DIR/table1-out" ] || die "$DIR/table1-out: no such directory"
    [ -r "$DIR/devices" ] || die "$DIR/devices: missing (written by the run)"
    s2dev=$(sed -n 's/^S2_DEVICE=//p' "$DIR/devices") s3dev=$(sed -n 's/^S3_DEVICE=//p' "$DIR/devices")
    NOTE=$(sed -n 's/^NOTE=//p' "$DIR/devices")
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    cp -r "$DIR/table1-out" "$scratch/" && chmod -R u+w "$scratch"
    O="$scratch/table1-out"
    export PATH="$PWD/bin:$PATH"
    for phase in full core; do
        mk "$phase" "$s2dev" "$s3dev" "$O" print-CONFIGS >"$scratch/configs" && [ -s "$scratch/configs" ] ||
            die "cannot list the $phase grid"
        missing=$(awk '{ print $NF }' "$scratch/configs" | while read -r f; do [ -e "$f" ] || echo "$f"; done | wc -l)
        if [ "$missing" -eq 0 ] && [ -n "$(ls "$O"/teacher-eval-*.ra 2>/dev/null)" ]; then
            echo "table1-gpu.sh: reporting the $phase grid"
            mk "$phase" "$s2dev" "$s3dev" "$O" REPORT="$REPORT_DIR" report || die "report failed"
            exit 0
        fi
        echo "table1-gpu.sh: the $phase grid lacks $missing results streams"
    done
    die "no complete grid in $DIR"
    ;;
*)
    die "usage: table1-gpu.sh run [OUTDIR] | report DIR"
    ;;
esac

#!/usr/bin/env bash
# table1-configs.sh: the configurations of the headline experiment (table1.mk).
#
#   table1-configs.sh HEADS_TOTAL HEAD_DIM
#
# Reads the grid from the environment (table1.mk exports it):
#   KEEP            heads kept: integers, N% (of all heads, rounded, at least 1), all
#   LAYOUTS         routed parallel
#   D_STATES        integers, hd (the head dim), hd/M (head dim / M, at least 1)
#   INIT_VARIANTS   inits besides mohawk, tried at INIT_AT heads (attention: N = hd only;
#                   svd: N <= hd), every layout and d_state
#   INIT_AT         one KEEP-style token
#   RANDOM_AT       KEEP-style tokens: controls with that many random heads (0 and all skipped)
#   RANDOM_LAYOUTS  layouts of the random controls (at the first d_state, mohawk init)
#
# Prints one configuration per line, sorted:
#   NAME GROUP K LAYOUT N INIT SELECT
# GROUP is grid, init (an init variant, or its mohawk twin when INIT_AT is not
# in the grid) or random / ranked (a random control and its ranked twin when
# the grid lacks it); SELECT is top or random.  Duplicates are dropped: two
# tokens that round to the same K are one row; a routed student that keeps
# every head is the teacher whatever N, so it gets the first d_state only.
set -euo pipefail

total=${1:?usage: table1-configs.sh HEADS_TOTAL HEAD_DIM}
hd=${2:?usage: table1-configs.sh HEADS_TOTAL HEAD_DIM}

die() { echo "table1-configs.sh: $*" >&2; exit 64; }

# KEEP-style token -> number of heads
heads_of() {
    case $1 in
        all) echo "$total" ;;
        *%) awk -v p="${1%\%}" -v t="$total" 'BEGIN {
                if (p !~ /^[0-9]+(\.[0-9]+)?$/) exit 1
                k = int(p * t / 100 + 0.5); if (k < 1) k = 1; if (k > t) k = t; print k }' ||
                die "'$1': expected N%" ;;
        *[!0-9]* | '') die "'$1': expected an integer, N% or all" ;;
        *) [ "$1" -le "$total" ] || die "'$1': the teacher has only $total heads"; echo "$1" ;;
    esac
}

# D_STATES token -> state size
state_of() {
    case $1 in
        hd) echo "$hd" ;;
        hd/*) local m=${1#hd/}
              case $m in *[!0-9]* | '' | 0) die "'$1': expected hd/M with an integer M >= 1" ;; esac
              local n=$((hd / m)); [ "$n" -ge 1 ] || n=1; echo "$n" ;;
        *[!0-9]* | '' | 0) die "'$1': expected an integer >= 1, hd or hd/M" ;;
        *) echo "$1" ;;
    esac
}

uniq_words() { tr ' ' '\n' | awk 'NF && !seen[$0]++' | tr '\n' ' '; }

keeps=$(for t in ${KEEP:?KEEP is empty}; do heads_of "$t"; done | sort -n | uniq_words)
states=$(for t in ${D_STATES:?D_STATES is empty}; do state_of "$t"; done | uniq_words)
first_state=${states%% *}
layouts=$(echo "${LAYOUTS:?LAYOUTS is empty}" | uniq_words)
for l in $layouts ${RANDOM_LAYOUTS:-}; do
    case $l in routed | parallel) ;; *) die "layout '$l': expected routed or parallel" ;; esac
done
for i in ${INIT_VARIANTS:-}; do
    case $i in mohawk | attention | svd) ;; *) die "init '$i': expected mohawk, attention or svd" ;; esac
done

rows=$(mktemp)
trap 'rm -f "$rows"' EXIT
row() { # GROUP K LAYOUT N INIT SELECT
    local prefix=k
    [ "$6" = random ] && prefix=r
    echo "$prefix$2-$3-n$4-$5 $1 $2 $3 $4 $5 $6" >>"$rows"
}
in_grid() { # K LAYOUT N: is it a grid row?
    case " $keeps " in *" $1 "*) ;; *) return 1 ;; esac
    case " $layouts " in *" $2 "*) ;; *) return 1 ;; esac
    case " $states " in *" $3 "*) return 0 ;; esac
    return 1
}

for k in $keeps; do
    for l in $layouts; do
        for n in $states; do
            [ "$l" = routed ] && [ "$k" -eq "$total" ] && [ "$n" != "$first_state" ] && continue
            row grid "$k" "$l" "$n" mohawk top
        done
    done
done

if [ -n "${INIT_VARIANTS:-}" ]; then
    k=$(heads_of "${INIT_AT:?INIT_AT is empty}")
    for l in $layouts; do
        [ "$l" = routed ] && [ "$k" -eq "$total" ] && continue # no SSM heads to initialise
        for n in $states; do
            in_grid "$k" "$l" "$n" || row init "$k" "$l" "$n" mohawk top
            for i in $INIT_VARIANTS; do
                [ "$i" = mohawk ] && continue
                [ "$i" = attention ] && [ "$n" -ne "$hd" ] && continue
                [ "$i" = svd ] && [ "$n" -gt "$hd" ] && continue
                row init "$k" "$l" "$n" "$i" top
            done
        done
    done
fi

for t in ${RANDOM_AT:-}; do
    k=$(heads_of "$t")
    { [ "$k" -eq 0 ] || [ "$k" -eq "$total" ]; } && continue
    for l in ${RANDOM_LAYOUTS:-$layouts}; do
        row random "$k" "$l" "$first_state" mohawk random
        in_grid "$k" "$l" "$first_state" || row ranked "$k" "$l" "$first_state" mohawk top
    done
done

sort -u "$rows" | sort -k1,1 -u

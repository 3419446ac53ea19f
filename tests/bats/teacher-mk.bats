#!/usr/bin/env bats
# pipelines/teacher.mk data and tokenizer steps (CPU), and ra-tok --train-bpe / --gen-kv.

load '/usr/lib/bats/bats-support/load'
load '/usr/lib/bats/bats-assert/load'

ROOT="$BATS_TEST_DIRNAME/../.."
W="$ROOT/tests/fixtures/words.txt"

small() {
    make -s -f "$ROOT/pipelines/teacher.mk" OUT="$1" VOCAB=400 SEQ=64 KV_TRAIN=40 KV_HELDOUT=8 TEXT_MAX_FILES=12 \
        TEXT_MAX_BYTES=20000 HELDOUT_EVERY=4 WORDS="$W" tokens
}

@test "ra-tok --gen-kv: JSON lines, deterministic, seeds matter, evaluation seeds refused" {
    ra-tok --gen-kv 20 --seed 5 --words "$W" -o "$BATS_TEST_TMPDIR/a.jsonl"
    ra-tok --gen-kv 20 --seed 5 --words "$W" > "$BATS_TEST_TMPDIR/b.jsonl"
    cmp "$BATS_TEST_TMPDIR/a.jsonl" "$BATS_TEST_TMPDIR/b.jsonl"
    [ "$(wc -l < "$BATS_TEST_TMPDIR/a.jsonl")" -eq 20 ]
    ra-tok --gen-kv 20 --seed 6 --words "$W" > "$BATS_TEST_TMPDIR/c.jsonl"
    run cmp -s "$BATS_TEST_TMPDIR/c.jsonl" "$BATS_TEST_TMPDIR/a.jsonl"
    assert_failure
    run ra-tok --gen-kv 3 --seed 1 --words "$W"
    assert_failure 64
    assert_output --partial "reserved"
    run ra-tok --gen-kv 3 --seed 1000003 --words "$W"
    assert_failure 64
    run ra-tok --gen-kv 3 --seed 5 --words "$W" /nonexistent
    assert_failure 66
}

@test "ra-tok --train-bpe: a tokenizer.json ra-tok loads; text round-trips; deterministic; bad sizes refused" {
    ra-tok --gen-kv 50 --seed 5 --words "$W" "$ROOT/README.md" > "$BATS_TEST_TMPDIR/c.jsonl"
    mkdir "$BATS_TEST_TMPDIR/t"
    ra-tok --train-bpe 500 --jsonl -q -o "$BATS_TEST_TMPDIR/t/tokenizer.json" "$BATS_TEST_TMPDIR/c.jsonl"
    ra-tok --train-bpe 500 --jsonl -q "$BATS_TEST_TMPDIR/c.jsonl" | cmp - "$BATS_TEST_TMPDIR/t/tokenizer.json"
    ra-tok -t "$BATS_TEST_TMPDIR/t" --jsonl --specials no -q -o "$BATS_TEST_TMPDIR/c.ra" "$BATS_TEST_TMPDIR/c.jsonl"
    ra-tok --decode --jsonl -t "$BATS_TEST_TMPDIR/t" "$BATS_TEST_TMPDIR/c.ra" > "$BATS_TEST_TMPDIR/back.jsonl"
    # the same texts (JSON escaping may differ: compare the decoded strings with ra-tok itself)
    ra-tok -t "$BATS_TEST_TMPDIR/t" --jsonl --specials no -q -o "$BATS_TEST_TMPDIR/back.ra" "$BATS_TEST_TMPDIR/back.jsonl"
    cmp <(ra-tok --to-ids "$BATS_TEST_TMPDIR/c.ra") <(ra-tok --to-ids "$BATS_TEST_TMPDIR/back.ra")
    run ra-tok --stats -t "$BATS_TEST_TMPDIR/t" "$ROOT/README.md" -o "$BATS_TEST_TMPDIR/r.ra"
    assert_success
    run ra-tok --train-bpe 257 < /dev/null
    assert_failure 64
    run ra-tok --train-bpe 300 -t "$BATS_TEST_TMPDIR/t" < /dev/null
    assert_failure 64
}

@test "teacher.mk: data -> tokenizer -> tokens streams, reproducible" {
    small "$BATS_TEST_TMPDIR/o1"
    small "$BATS_TEST_TMPDIR/o2"
    for f in train.jsonl heldout.jsonl tokenizer/tokenizer.json train.ra heldout.ra heldout-docs.ra; do
        [ -s "$BATS_TEST_TMPDIR/o1/$f" ]
        cmp "$BATS_TEST_TMPDIR/o1/$f" "$BATS_TEST_TMPDIR/o2/$f"
    done
    [ "$(wc -l < "$BATS_TEST_TMPDIR/o1/heldout.jsonl")" -ge 8 ]
    # held-out and training text files are disjoint
    run grep -Fxf <(sed -n 's/^H .*\///p' "$BATS_TEST_TMPDIR/o1/text.list") <(sed -n 's/^T .*\///p' "$BATS_TEST_TMPDIR/o1/text.list")
    assert_failure
    run ra-tok --decode -t "$BATS_TEST_TMPDIR/o1/tokenizer" "$BATS_TEST_TMPDIR/o1/heldout-docs.ra"
    assert_success
    assert_output --partial "<|begin_of_text|>"
    # a second make does nothing
    run small "$BATS_TEST_TMPDIR/o1"
    assert_success
    assert_output ""
}

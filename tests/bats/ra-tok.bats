#!/usr/bin/env bats
# ra-tok: text and --ids encoding, --decode, --to-ids, packing, splitting;
# every flag and exit code; parity with Hugging Face through the command line.

load '/usr/lib/bats/bats-support/load'
load '/usr/lib/bats/bats-assert/load'
bats_require_minimum_version 1.5.0

setup() {
    FIX=$BATS_TEST_DIRNAME/../fixtures/tokenizers
    L3=$FIX/llama3-style
    QW=$FIX/qwen2-style
    T=$BATS_TEST_TMPDIR
}

# meta field of a stream, compact JSON
meta() { ra-show --json "$1" | jq -c ".meta.$2"; }

# Bytes of a hex string into a file.
unhex() { printf "$(printf '%s' "$1" | sed 's/../\\x&/g')" >"$2"; }

# ------------------------------------------------------------ conventions

@test "--help and --version exit 0 on stdout" {
    run ra-tok --help
    assert_success
    assert_output --partial "Usage: ra-tok -t MODEL_DIR|tokenizer.json"
    assert_output --partial "--ids"
    assert_output --partial "--pack L"
    run ra-tok --version
    assert_success
    assert_output --regexp '^ra-tok \(ra\) [0-9]+\.[0-9]+\.[0-9]+$'
}

@test "usage errors exit 64 with a message" {
    echo hi >"$T/a.txt"
    run ra-tok "$T/a.txt" -o "$T/o.ra"
    assert_failure 64
    assert_output --partial "needs a tokenizer"
    run ra-tok --bogus -t "$L3" "$T/a.txt"
    assert_failure 64
    assert_output --partial "unknown option '--bogus'"
    run ra-tok -t
    assert_failure 64
    assert_output --partial "needs an argument"
    run ra-tok -t "$L3" --specials maybe "$T/a.txt"
    assert_failure 64
    assert_output --partial "--specials: expected yes or no"
    run ra-tok -t "$L3" --lines --jsonl "$T/a.txt"
    assert_failure 64
    run ra-tok -t "$L3" --field x "$T/a.txt"
    assert_failure 64
    assert_output --partial "--field needs --jsonl"
    run ra-tok -t "$L3" --pad 0 "$T/a.txt"
    assert_failure 64
    assert_output --partial "--pad needs --pack"
    run ra-tok -t "$L3" --pack 0 "$T/a.txt"
    assert_failure 64
    run ra-tok -t "$L3" --pack x "$T/a.txt"
    assert_failure 64
    run ra-tok -t "$L3" --split 0.9 "$T/a.txt" -o "$T/o.ra"
    assert_failure 64
    assert_output --partial "--split and --heldout go together"
    run ra-tok -t "$L3" --heldout "$T/h.ra" "$T/a.txt" -o "$T/o.ra"
    assert_failure 64
    run ra-tok -t "$L3" --split 1 --heldout "$T/h.ra" "$T/a.txt" -o "$T/o.ra"
    assert_failure 64
    run ra-tok -t "$L3" --split 0.5 --heldout "$T/o.ra" "$T/a.txt" -o "$T/o.ra"
    assert_failure 64
    assert_output --partial "same file"
    run ra-tok --decode "$T/o.ra"
    assert_failure 64
    assert_output --partial "--decode needs a tokenizer"
    run ra-tok --to-ids -t "$L3" "$T/o.ra"
    assert_failure 64
    run ra-tok --decode --to-ids -t "$L3" "$T/o.ra"
    assert_failure 64
    run ra-tok --to-ids "$T/a.ra" "$T/b.ra"
    assert_failure 64
    assert_output --partial "reads one stream"
    run ra-tok --decode -t "$L3" --pack 4 "$T/a.ra"
    assert_failure 64
    [ ! -e "$T/o.ra" ]
}

@test "a terminal is refused for the binary stream" {
    echo hi >"$T/a.txt"
    run script -qec "ra-tok -t '$L3' '$T/a.txt'" "$T/typescript"
    assert_failure
    assert_output --partial "terminal"
}

@test "missing inputs exit 66" {
    run ra-tok -t "$T/nope" "$T/a.txt"
    assert_failure 66
    assert_output --partial "$T/nope"
    echo hi >"$T/a.txt"
    run ra-tok -t "$L3" "$T/a.txt" "$T/absent.txt" -o "$T/o.ra"
    assert_failure 66
    assert_output --partial "absent.txt: cannot open"
    [ ! -e "$T/o.ra" ]
    run ra-tok --to-ids "$T/absent.ra"
    assert_failure 66
    run ra-tok --ids "$T/absent.ids" -o "$T/o.ra"
    assert_failure 66
}

# ------------------------------------------------------------ encoding text

@test "ids match Hugging Face through the command line (cases.jsonl)" {
    # The first 30 llama3-style and qwen2-style cases, with and without specials.
    n=0
    while IFS= read -r line; do
        tok=$(printf '%s' "$line" | jq -r .tokenizer)
        [ "$tok" = gpt2-style ] && continue
        hex=$(printf '%s' "$line" | jq -r .input_hex)
        sp=$(printf '%s' "$line" | jq -r 'if .specials then "yes" else "no" end')
        want=$(printf '%s' "$line" | jq -r '.ids | map(tostring) | join(" ")')
        unhex "$hex" "$T/in.txt"
        ra-tok -q -t "$FIX/$tok" --specials "$sp" "$T/in.txt" -o "$T/o.ra"
        got=$(ra-tok --to-ids "$T/o.ra")
        [ "$got" = "$want" ] || { echo "case: $line"; echo "got:  $got"; false; }
        n=$((n + 1))
    done < <(head -n 30 "$FIX/cases.jsonl"; grep '"qwen2-style"' "$FIX/cases.jsonl" | head -n 30)
    [ "$n" -eq 60 ]
}

@test "invalid UTF-8 is replaced like Python's errors='replace', never a crash" {
    printf 'abc\xff\xfe \xed\xa0\x80 ok \xc3' >"$T/bad.txt"
    printf 'abc\xef\xbf\xbd\xef\xbf\xbd \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd ok \xef\xbf\xbd' >"$T/fixed.txt"
    ra-tok -q -t "$L3" "$T/bad.txt" -o "$T/a.ra"
    ra-tok -q -t "$L3" "$T/fixed.txt" -o "$T/b.ra"
    [ "$(ra-tok --to-ids "$T/a.ra")" = "$(ra-tok --to-ids "$T/b.ra")" ]
    ra-tok --decode -t "$L3" "$T/a.ra" -o "$T/back.txt"
    printf '<|begin_of_text|>' | cat - "$T/fixed.txt" | cmp - "$T/back.txt"
}

@test "--specials yes adds BOS (the template), no leaves it out; meta names the tokenizer" {
    printf 'Hello world' >"$T/a.txt"
    ra-tok -t "$L3" "$T/a.txt" -o "$T/y.ra"
    ra-tok -t "$L3" --specials no "$T/a.txt" -o "$T/n.ra"
    y=$(ra-tok --to-ids "$T/y.ra")
    n=$(ra-tok --to-ids "$T/n.ra")
    [ "$y" = "2000 $n" ]
    [ "$(meta "$T/y.ra" layout)" = '"documents"' ]
    [ "$(meta "$T/y.ra" n_docs)" = 1 ]
    [ "$(meta "$T/y.ra" 'tokenizer.vocab_size')" = 2003 ]
    [ "$(meta "$T/y.ra" 'tokenizer.bos_id')" = 2000 ]
    [ "$(meta "$T/y.ra" 'tokenizer.eos_id')" = 2001 ]
    id=$(meta "$T/y.ra" 'tokenizer.id')
    [ ${#id} -eq 34 ]
    # Qwen2 style: no BOS in the template; tokenizer_config.json says bos null
    ra-tok -t "$QW" "$T/a.txt" -o "$T/q.ra"
    ra-tok -t "$QW" --specials no "$T/a.txt" -o "$T/q2.ra"
    [ "$(ra-tok --to-ids "$T/q.ra")" = "$(ra-tok --to-ids "$T/q2.ra")" ]
    [ "$(meta "$T/q.ra" 'tokenizer.bos_id')" = null ]
    # -t accepts the tokenizer.json itself
    ra-tok -t "$L3/tokenizer.json" "$T/a.txt" -o "$T/f.ra"
    [ "$(ra-tok --to-ids "$T/f.ra")" = "$y" ]
}

@test "default input: each file and stdin is one document; decode gives the text back" {
    printf 'First file.\nTwo lines.\n' >"$T/a.txt"
    printf 'Second — file, caf\xc3\xa9 中文\r\n' >"$T/b.txt"
    ra-tok -q -t "$L3" --specials no "$T/a.txt" "$T/b.txt" -o "$T/o.ra"
    [ "$(meta "$T/o.ra" n_docs)" = 2 ]
    ra-tok --decode -t "$L3" "$T/o.ra" -o "$T/back.txt"
    cat "$T/a.txt" "$T/b.txt" | cmp - "$T/back.txt"
    # stdin, and '-' among files
    cat "$T/a.txt" | ra-tok -q -t "$L3" --specials no -o "$T/s.ra"
    [ "$(meta "$T/s.ra" n_docs)" = 1 ]
    cat "$T/b.txt" | ra-tok -q -t "$L3" --specials no "$T/a.txt" - -o "$T/s2.ra"
    [ "$(ra-tok --to-ids "$T/s2.ra")" = "$(ra-tok --to-ids "$T/o.ra")" ]
    # stream on stdout
    ra-tok -q -t "$L3" "$T/a.txt" | ra-tok --decode -t "$L3" >"$T/back2.txt"
    printf '<|begin_of_text|>' | cat - "$T/a.txt" | cmp - "$T/back2.txt"
}

@test "--lines: one document per line, CRLF stripped, empty lines are empty documents" {
    printf 'one\r\ntwo two\n\nfour' >"$T/a.txt"
    ra-tok -q -t "$L3" --lines --specials no "$T/a.txt" -o "$T/o.ra"
    [ "$(meta "$T/o.ra" n_docs)" = 4 ]
    run ra-tok --decode --lines -t "$L3" "$T/o.ra"
    assert_success
    assert_output "$(printf 'one\ntwo two\n\nfour')"
    [ "$(ra-tok --to-ids "$T/o.ra" | sed -n 3p)" = "" ]
    ra-tok -q -t "$L3" --lines "$T/a.txt" -o "$T/b.ra"
    [ "$(ra-tok --to-ids "$T/b.ra" | sed -n 3p)" = 2000 ]
}

@test "--jsonl --field: documents from JSON lines; decode --jsonl writes them back" {
    printf '{"text": "alpha beta", "id": 1}\n\n{"text": "gamma\\nline", "body": "x"}\n' >"$T/a.jsonl"
    ra-tok -q -t "$L3" --jsonl --specials no "$T/a.jsonl" -o "$T/o.ra"
    [ "$(meta "$T/o.ra" n_docs)" = 2 ]
    run ra-tok --decode --jsonl -t "$L3" "$T/o.ra"
    assert_success
    assert_line --index 0 '{"text":"alpha beta"}'
    assert_line --index 1 '{"text":"gamma\nline"}'
    run ra-tok --decode --jsonl --field body -t "$L3" "$T/o.ra"
    assert_line --index 0 '{"body":"alpha beta"}'
    printf '{"body": "a"}\n{"body": "b"}\n' >"$T/b.jsonl"
    ra-tok -q -t "$L3" --jsonl --field body "$T/b.jsonl" -o "$T/b.ra"
    [ "$(meta "$T/b.ra" n_docs)" = 2 ]
}

@test "bad JSONL exits 65 naming the line; no output is left behind" {
    printf '{"text": "ok"}\n{"txt": "no field"}\n' >"$T/a.jsonl"
    run ra-tok -q -t "$L3" --jsonl "$T/a.jsonl" -o "$T/o.ra"
    assert_failure 65
    assert_output --partial "a.jsonl:2: no field 'text'"
    [ ! -e "$T/o.ra" ]
    printf '{"text": 5}\n' >"$T/b.jsonl"
    run ra-tok -q -t "$L3" --jsonl "$T/b.jsonl" -o "$T/o.ra"
    assert_failure 65
    assert_output --partial "b.jsonl:1: expected a string in field 'text'"
    printf '{"text": "a"}\n{"text": \n' >"$T/c.jsonl"
    run ra-tok -q -t "$L3" --jsonl "$T/c.jsonl" -o "$T/o.ra"
    assert_failure 65
    assert_output --partial "c.jsonl:2: not valid JSON"
    printf '["text"]\n' >"$T/d.jsonl"
    run ra-tok -q -t "$L3" --jsonl "$T/d.jsonl" -o "$T/o.ra"
    assert_failure 65
    assert_output --partial "d.jsonl:1: not a JSON object"
    [ ! -e "$T/o.ra" ]
}

@test "a malformed or unsupported tokenizer.json exits 65 naming what is wrong" {
    mkdir -p "$T/t1" "$T/t2" "$T/t3"
    jq 'del(.model.vocab)' "$L3/tokenizer.json" >"$T/t1/tokenizer.json"
    echo hi >"$T/a.txt"
    run ra-tok -t "$T/t1" "$T/a.txt" -o "$T/o.ra"
    assert_failure 65
    assert_output --partial "model.vocab: missing"
    jq '.model.type = "Unigram"' "$L3/tokenizer.json" >"$T/t2/tokenizer.json"
    run ra-tok -t "$T/t2" "$T/a.txt" -o "$T/o.ra"
    assert_failure 65
    assert_output --partial "model type 'Unigram' is not supported"
    head -c 100 "$L3/tokenizer.json" >"$T/t3/tokenizer.json"
    run ra-tok -t "$T/t3" "$T/a.txt" -o "$T/o.ra"
    assert_failure 65
    assert_output --partial "not valid JSON"
    [ ! -e "$T/o.ra" ]
}

# ------------------------------------------------------------ packing and splitting

@test "--pack L: rows of L with starts; the partial row is dropped and reported" {
    # documents of varying lengths, so that they start anywhere in a row
    for i in $(seq 1 40); do echo "document $i$(printf ' word%d' $(seq 1 $((i % 7))))"; done >"$T/a.txt"
    ra-tok -q -t "$L3" --lines "$T/a.txt" -o "$T/d.ra"
    total=$(ra-tok --to-ids "$T/d.ra" | wc -w)
    L=16
    while [ $((total % L)) -eq 0 ]; do L=$((L + 1)); done
    run ra-tok -t "$L3" --lines --pack $L "$T/a.txt" -o "$T/p.ra"
    assert_success
    assert_output --partial "dropped the final $((total % L)) tokens"
    [ "$(meta "$T/p.ra" layout)" = '"packed"' ]
    [ "$(meta "$T/p.ra" seq_len)" = $L ]
    [ "$(meta "$T/p.ra" n_rows)" = $((total / L)) ]
    [ "$(meta "$T/p.ra" n_dropped_tokens)" = $((total % L)) ]
    [ "$(meta "$T/p.ra" n_tokens)" = $((total / L * L)) ]
    [ "$(meta "$T/p.ra" n_docs)" = 40 ]
    # rows are the concatenated documents, in order
    [ "$(ra-tok --to-ids "$T/p.ra" | tr '\n' ' ')" = "$(ra-tok --to-ids "$T/d.ra" | tr '\n' ' ' | cut -d' ' -f1-$((total / L * L))) " ]
    # starts: 1 at every document's BOS (id 2000) and at each row start
    ra-show --json --values "$T/p.ra" >"$T/p.json"
    jq -e --argjson L $L '[.tensors[] | select(.name=="tokens") | .values] as [$t] |
           [.tensors[] | select(.name=="starts") | .values] as [$s] |
           [range(0; $t|length) | select(($s[.] == 1) != ($t[.] == 2000 or . % $L == 0))] | length == 0' "$T/p.json"
    # -q silences the drop message
    run ra-tok -q -t "$L3" --lines --pack $L "$T/a.txt" -o "$T/p.ra"
    assert_output ""
}

@test "--pad ID keeps the final row, padded; --stats reports rows and padding" {
    printf 'a b c d e\n' >"$T/a.txt"
    run ra-tok -t "$L3" --specials no --lines --pack 4 --pad 7 --stats "$T/a.txt" -o "$T/p.ra"
    assert_success
    n=$(printf 'a b c d e' | ra-tok -q -t "$L3" --specials no -o - | ra-tok --to-ids | wc -w)
    rows=$(( (n + 3) / 4 ))
    assert_output --partial "$rows rows of 4"
    [ "$(meta "$T/p.ra" pad_id)" = 7 ]
    [ "$(meta "$T/p.ra" n_pad)" = $((rows * 4 - n)) ]
    [ "$(ra-tok --to-ids "$T/p.ra" | tail -n 1 | awk '{print $NF}')" = 7 ]
}

@test "--split F --heldout: deterministic whole-document split by --seed" {
    for i in $(seq 1 200); do echo "line $i"; done >"$T/a.txt"
    ra-tok -q -t "$L3" --lines --split 0.8 --heldout "$T/h.ra" "$T/a.txt" -o "$T/m.ra"
    m=$(meta "$T/m.ra" n_docs)
    h=$(meta "$T/h.ra" n_docs)
    [ $((m + h)) -eq 200 ]
    [ "$m" -gt 130 ] && [ "$m" -lt 190 ]
    [ "$(meta "$T/m.ra" split.part)" = '"train"' ]
    [ "$(meta "$T/h.ra" split.part)" = '"heldout"' ]
    [ "$(meta "$T/h.ra" split.seed)" = 1 ]
    # every line lands in exactly one part
    cat <(ra-tok --decode --lines -t "$L3" "$T/m.ra") <(ra-tok --decode --lines -t "$L3" "$T/h.ra") |
        sed 's/<|begin_of_text|>//' | sort >"$T/all.txt"
    sort "$T/a.txt" | cmp - "$T/all.txt"
    # same seed: same split; another seed: another split
    ra-tok -q -t "$L3" --lines --split 0.8 --heldout "$T/h2.ra" "$T/a.txt" -o "$T/m2.ra"
    cmp "$T/h.ra" "$T/h2.ra"
    ra-tok -q -t "$L3" --lines --split 0.8 --seed 99 --heldout "$T/h3.ra" "$T/a.txt" -o "$T/m3.ra"
    [ "$(ra-tok --to-ids "$T/h.ra")" != "$(ra-tok --to-ids "$T/h3.ra")" ]
    # with --pack both parts are packed
    ra-tok -q -t "$L3" --lines --pack 8 --pad 0 --split 0.8 --heldout "$T/hp.ra" "$T/a.txt" -o "$T/mp.ra"
    [ "$(meta "$T/hp.ra" layout)" = '"packed"' ]
    [ "$(meta "$T/hp.ra" n_docs)" = "$h" ]
}

@test "--stats prints documents, tokens and bytes per token" {
    printf 'Hello world\nsecond line\n' >"$T/a.txt"
    run ra-tok -q -t "$L3" --lines --stats "$T/a.txt" -o "$T/o.ra"
    assert_success
    assert_output --regexp '^ra-tok: 2 documents, [0-9]+ tokens, 22 bytes, [0-9.]+ bytes/token$'
}

# ------------------------------------------------------------ --ids

@test "--ids: one document per line of ids; --to-ids gives them back" {
    printf '1 2 3\n\n  4\t5  \r\n0\n' >"$T/a.ids"
    ra-tok --ids "$T/a.ids" -o "$T/o.ra"
    [ "$(meta "$T/o.ra" n_docs)" = 4 ]
    [ "$(meta "$T/o.ra" n_tokens)" = 6 ]
    [ "$(meta "$T/o.ra" tokenizer)" = null ]
    run ra-tok --to-ids "$T/o.ra"
    assert_success
    assert_output "$(printf '1 2 3\n\n4 5\n0')"
    # from stdin, and to stdout
    printf '7 8\n9\n' | ra-tok --ids | ra-tok --to-ids >"$T/out.txt"
    printf '7 8\n9\n' | cmp - "$T/out.txt"
    # several files are concatenated, in order
    printf '10\n' >"$T/b.ids"
    ra-tok --ids "$T/a.ids" "$T/b.ids" -o "$T/ab.ra"
    [ "$(meta "$T/ab.ra" n_docs)" = 5 ]
    # empty input: no documents
    printf '' | ra-tok --ids -o "$T/e.ra"
    [ "$(meta "$T/e.ra" n_docs)" = 0 ]
    [ "$(ra-tok --to-ids "$T/e.ra")" = "" ]
}

@test "--ids with -t records the tokenizer and checks ids against its vocabulary" {
    printf '1 2002\n' >"$T/a.ids"
    ra-tok --ids -t "$L3" "$T/a.ids" -o "$T/o.ra"
    [ "$(meta "$T/o.ra" 'tokenizer.vocab_size')" = 2003 ]
    [ "$(ra-tok --decode -t "$L3" "$T/o.ra")" = '"<|eot_id|>' ]
    printf '1 2\n5 2003\n' >"$T/b.ids"
    run ra-tok --ids -t "$L3" "$T/b.ids" -o "$T/o2.ra"
    assert_failure 65
    assert_output --partial "b.ids:2: token id 2003 is not below the tokenizer's vocabulary size 2003"
    [ ! -e "$T/o2.ra" ]
}

@test "--ids: bad tokens exit 65 naming the file and line" {
    printf '1 2\n3 x 4\n' >"$T/a.ids"
    run ra-tok --ids "$T/a.ids" -o "$T/o.ra"
    assert_failure 65
    assert_output --partial "a.ids:2: 'x' is not an integer token id"
    printf '1 -2\n' >"$T/b.ids"
    run ra-tok --ids "$T/b.ids" -o "$T/o.ra"
    assert_failure 65
    assert_output --partial "b.ids:1: token id -2 is out of range"
    printf '2147483648\n' >"$T/c.ids"
    run ra-tok --ids "$T/c.ids" -o "$T/o.ra"
    assert_failure 65
    assert_output --partial "out of range"
    printf '12abc\n' >"$T/d.ids"
    run ra-tok --ids "$T/d.ids" -o "$T/o.ra"
    assert_failure 65
    assert_output --partial "'12abc' is not an integer"
    printf '1.5\n' | { run ra-tok --ids -o "$T/o.ra"; assert_failure 65; assert_output --partial "<stdin>:1"; }
    [ ! -e "$T/o.ra" ]
}

@test "--ids flags: usage errors exit 64" {
    printf '1 2\n' >"$T/a.ids"
    run ra-tok --ids --lines "$T/a.ids"
    assert_failure 64
    run ra-tok --ids --jsonl "$T/a.ids"
    assert_failure 64
    run ra-tok --ids --specials no "$T/a.ids"
    assert_failure 64
    assert_output --partial "--ids reads one document per line of ids"
    run ra-tok --ids --decode "$T/a.ids"
    assert_failure 64
    run ra-tok --ids --pad 3 "$T/a.ids"
    assert_failure 64
    run ra-tok --ids --split 0.5 "$T/a.ids"
    assert_failure 64
    run ra-tok --ids --seed -1 "$T/a.ids"
    assert_failure 64
    run ra-tok --ids --pack 0 "$T/a.ids"
    assert_failure 64
}

@test "--ids with --pack, --pad, --split, --seed, --stats and -q" {
    for i in $(seq 1 50); do echo "$i $((i + 1)) $((i + 2))"; done >"$T/a.ids"
    run ra-tok --ids --pack 7 --stats "$T/a.ids" -o "$T/p.ra"
    assert_success
    assert_output --partial "dropped the final 3 tokens"
    assert_output --partial "21 rows of 7, 50 documents, 147 tokens, 0 padding, 3 dropped"
    assert_output --partial "50 documents, 150 tokens"
    [ "$(ra-tok --to-ids "$T/p.ra" | head -n 1)" = "1 2 3 2 3 4 3" ]
    run ra-tok --ids -q --pack 7 --pad 0 "$T/a.ids" -o "$T/pp.ra"
    assert_output ""
    [ "$(meta "$T/pp.ra" n_rows)" = 22 ]
    [ "$(ra-tok --to-ids "$T/pp.ra" | tail -n 1)" = "50 51 52 0 0 0 0" ]
    ra-tok --ids --split 0.5 --seed 3 --heldout "$T/h.ra" "$T/a.ids" -o "$T/m.ra"
    [ $(( $(meta "$T/m.ra" n_docs) + $(meta "$T/h.ra" n_docs) )) -eq 50 ]
    [ "$(meta "$T/h.ra" split.seed)" = 3 ]
}

# ------------------------------------------------------------ reading streams

@test "--decode refuses a stream made with another tokenizer, and bad streams" {
    printf 'hello' >"$T/a.txt"
    ra-tok -q -t "$L3" "$T/a.txt" -o "$T/o.ra"
    run ra-tok --decode -t "$QW" "$T/o.ra"
    assert_failure 65
    assert_output --partial "made with tokenizer"
    head -c 60 "$T/o.ra" >"$T/trunc.ra"
    run ra-tok --to-ids "$T/trunc.ra"
    assert_failure 65
    run ra-tok --decode -t "$L3" -o "$T/out.txt" "$T/trunc.ra"
    assert_failure 65
    [ ! -e "$T/out.txt" ]
    printf 'not a stream' >"$T/junk.ra"
    run ra-tok --to-ids "$T/junk.ra"
    assert_failure 65
    # ids beyond the vocabulary (stream without a tokenizer): decode names the document
    printf '5\n99999\n' | ra-tok --ids -o "$T/ids.ra"
    run ra-tok --decode -t "$L3" "$T/ids.ra"
    assert_failure 65
    assert_output --partial "doc 1"
    assert_output --partial "99999"
}

@test "--decode and --to-ids read packed streams row by row" {
    printf '1 2 3 4 5 6 7\n' | ra-tok --ids --pack 3 -q -o "$T/p.ra"
    run ra-tok --to-ids "$T/p.ra"
    assert_output "$(printf '1 2 3\n4 5 6')"
    printf 'abcdef' | ra-tok -q -t "$L3" --specials no -o - | ra-tok --to-ids | tr ' ' '\n' >"$T/ids"
    printf '%s\n' "$(tr '\n' ' ' <"$T/ids")" | ra-tok --ids -t "$L3" --pack 1 -o "$T/p1.ra"
    run ra-tok --decode --lines -t "$L3" "$T/p1.ra"
    assert_success
    [ "$(printf '%s' "$output" | tr -d '\n')" = abcdef ]
}

#!/usr/bin/env bash
# Instructions per call of the in-process pipeline, counted by valgrind (callgrind): a figure
# that, unlike throughput on a shared 2-core machine, does not move with the neighbours' load,
# so it tells whether a change to the hot path made it cheaper.
#
#   benches/instructions.sh            # builds the `host` benchmark, then counts
#
# Runs the benchmark's fixed run (no criterion) twice under callgrind, with 4,000 and 14,000
# calls from 512 concurrent callers, and prints the difference divided by 10,000: the setup
# cancels out. Under valgrind the CPU has no SHA extensions, so sha2 falls back to its software
# compressor, which costs several times what SHA-NI does; the second figure leaves SHA-256 out
# and is the one to compare. Valgrind runs one thread at a time, so group commits form
# differently than on the real machine; compare runs of this script with each other only.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 2; }

binary=$(cargo bench -p aesp-benches --bench host --no-run --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*\/host-[^"]*\)".*/\1/p' | tail -1)
[ -x "$binary" ] || { echo "could not build the host benchmark" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Prints the total instructions and those of SHA-256 for a fixed run of $1 calls.
count() {
  AESP_BENCH_RUNS=plain AESP_BENCH_CALLS=$1 valgrind --tool=callgrind \
    --callgrind-out-file="$out/$1" "$binary" --bench no-criterion-benchmark-matches >/dev/null 2>&1
  local total sha
  total=$(callgrind_annotate "$out/$1" | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  sha=$(callgrind_annotate --threshold=100 "$out/$1" | awk '/sha2::sha256/ {gsub(",", "", $1); s += $1} END {print s + 0}')
  echo "$total $sha"
}

read -r small small_sha <<<"$(count 4000)"
read -r large large_sha <<<"$(count 14000)"
echo "instructions per call: $(( (large - small) / 10000 ))"
echo "instructions per call without SHA-256: $(( (large - large_sha - small + small_sha) / 10000 ))"

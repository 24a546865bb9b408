#!/usr/bin/env bash
# Side by side on one machine: `abd ads backup` into a fresh store vs
# `restic backup` into a fresh local repository, on the same seeded 2 GiB disk
# image, first run and a second (incremental) run on the image a day later.
# Needs restic (Debian package `restic`). Usage: benches/compare-restic.sh [WORKDIR] [SIZE]
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-/tmp/abd-vs-restic}"
size="${2:-2GiB}"
command -v restic >/dev/null || { echo "restic not found: apt-get install restic" >&2; exit 1; }
cargo build --release -q --bin abd
abd="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/abd"
rm -rf "$work" && mkdir -p "$work"
"$abd" sim image "$work/day0.raw" --size "$size" --seed 1 --day 0
"$abd" sim image "$work/day1.raw" --size "$size" --seed 1 --day 1
export RESTIC_PASSWORD=benchmark
runs="${RUNS:-5}"
seconds() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }
stored() { du -sb "$1" | cut -f1; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
results="$work/results.txt"
: > "$results"
for ((r = 1; r <= runs; r++)); do
  rm -rf "$work/restic" "$work/ads"
  restic init -q -r "$work/restic"
  "$abd" ads init "$work/ads" >/dev/null
  for run in day0 day1; do
    # The same file name for both runs, as a disk image being re-read.
    cp "$work/$run.raw" "$work/disk.raw"
    sync
    t=$(seconds restic -q -r "$work/restic" backup "$work/disk.raw")
    echo "restic $run $t $(stored "$work/restic")" >> "$results"
    sync
    t=$(seconds "$abd" ads backup "$work/ads" "$work/disk.raw" --vm disk)
    echo "abd $run $t $(stored "$work/ads")" >> "$results"
  done
done
echo "median of ${runs} runs, ${size} image (stored bytes: repository size after the run)"
printf "%-8s %-6s %10s %14s\n" tool run seconds stored_bytes
for run in day0 day1; do
  for tool in restic abd; do
    t=$(awk -v t=$tool -v r=$run '$1==t && $2==r {print $3}' "$results" | median)
    b=$(awk -v t=$tool -v r=$run '$1==t && $2==r {print $4}' "$results" | median)
    printf "%-8s %-6s %10.2f %14s\n" "$tool" "$run" "$t" "$b"
  done
done
for run in day0 day1; do
  ratio=$(awk -v r=$run '$2==r && $1=="restic" {rt[++n]=$3} $2==r && $1=="abd" {at[++m]=$3} END {for (i=1;i<=n;i++) print rt[i]/at[i]}' "$results" | median)
  printf "%s: abd is %.2fx restic's speed (median of per-run ratios)\n" "$run" "$ratio"
done

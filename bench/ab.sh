#!/usr/bin/env bash
# Same-run A/B timing of two builds of the CLI on one command line, runs interleaved (A, B, A, B, …) so that
# machine load affects both alike. Prints each run and the medians, and B/A.
#
#   bash bench/ab.sh A_CLI B_CLI RUNS -- <lora-mix arguments, with OUT where the output path goes>
#   e.g. bash bench/ab.sh /tmp/old/dist/cli/lora-mix.js dist/cli/lora-mix.js 5 -- \
#          fuse --base bench/out/sd15-base.f16.safetensors bench/out/sd15-lcm.f16.safetensors:1 -o OUT -q
set -euo pipefail
A=$1 B=$2 RUNS=$3
shift 4
out=$(mktemp -d "${TMPDIR:-/tmp}/lora-mix-ab.XXXXXX")
trap 'rm -rf "$out"' EXIT
declare -a ta tb
run() { # cli label
  local args=() a
  for a in "${@:3}"; do args+=("${a//OUT/$out/o.safetensors}"); done
  local t0 t1
  t0=$(date +%s.%N)
  node "$1" "${args[@]}" >/dev/null
  t1=$(date +%s.%N)
  rm -rf "$out/o.safetensors"
  echo "$t1 - $t0" | bc
}
for ((i = 0; i < RUNS; i++)); do
  ta+=("$(run "$A" a "$@")")
  tb+=("$(run "$B" b "$@")")
  echo "run $((i + 1)): A ${ta[-1]} s, B ${tb[-1]} s"
done
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
ma=$(median "${ta[@]}") mb=$(median "${tb[@]}")
echo "median A $ma s, B $mb s, B/A $(echo "scale=3; $mb / $ma" | bc)"

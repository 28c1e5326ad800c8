#!/bin/sh
# Byte identity of `lora-mix fuse` outputs between two builds, on the full-size bench inputs (bench/out/), with peak
# RSS and wall time of each run (/usr/bin/time). Outputs are deleted after hashing.
#
#   sh bench/fuse-identity.sh OLD_CLI NEW_CLI [ARCH[:EXTRA_FLAGS] …]
#   e.g. flock /work/bench.lock sh bench/fuse-identity.sh /tmp/main/dist/cli/lora-mix.js dist/cli/lora-mix.js sd15 sd15:--dtype=f32 sdxl
set -eu
old=$1
new=$2
shift 2
[ $# -gt 0 ] || set -- sd15 sdxl
out=${OUT_DIR:-bench/out}
for spec in "$@"; do
  arch=${spec%%:*}
  flags=$(printf '%s' "$spec" | sed -n 's/^[^:]*://p' | tr '=' ' ')
  for which in old new; do
    cli=$old
    [ "$which" = new ] && cli=$new
    o="$out/$arch-identity-$which.safetensors"
    rm -f "$o"
    # shellcheck disable=SC2086
    /usr/bin/time -f "%e s wall, %U + %S CPU s, %M KB peak RSS" node "$cli" fuse --base "bench/out/$arch-base.f16.safetensors" \
      "bench/out/$arch-lcm.f16.safetensors:1.0" -o "$o" -q $flags > /dev/null 2> "$o.time"
    echo "$arch ${flags:-(as stored)} $which: $(sha256sum "$o" | cut -c1-16)  $(tail -1 "$o.time")"
    rm -f "$o" "$o.time"
  done
done

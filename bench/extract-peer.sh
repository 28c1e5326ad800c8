#!/usr/bin/env bash
# The kohya extract peer (bench/peer/extract_kohya.py) on all modules of one architecture, as a series of short
# timing runs: each slice runs under the shared lock (flock /work/bench.lock, normal priority) and stops after the
# module that passes SECONDS (default 240), so no locked run holds the machine much over 5 minutes. Each slice appends
# one row to bench/out/extract-results.jsonl with the same run id; `npx tsx bench/extract.ts --table` sums them
# (wall and CPU summed, peak RSS the largest slice's).
#
#   bench/extract-peer.sh sdxl [SECONDS] [RUN_ID] [START]   (START: resume a run at that module index)
set -euo pipefail
cd "$(dirname "$0")/.."
arch="${1:?usage: bench/extract-peer.sh sd15|sdxl [SECONDS] [RUN_ID] [START]}"
limit="${2:-240}"
run="${3:-peer-$arch-$(date -u +%Y%m%dT%H%M%S)}"
results=bench/out/extract-results.jsonl
start="${4:-0}"
while :; do
  flock /work/bench.lock npx tsx bench/extract.ts --arch "$arch" --which peer --modules "$start:" \
    --time-limit "$limit" --run-id "$run"
  line=$(grep "\"run\":\"$run\"" "$results" | tail -1)
  end=$(sed -E 's/.*"slice":"[0-9]+:([0-9]+)".*/\1/' <<<"$line")
  total=$(sed -E 's/.*"modulesTotal":([0-9]+).*/\1/' <<<"$line")
  echo "slice $start:$end of $total done ($run)"
  if [ "$end" -ge "$total" ] || [ "$end" -le "$start" ]; then break; fi
  start=$end
done
npx tsx bench/extract.ts --table | grep -E "^\| (arch|---)|$run"

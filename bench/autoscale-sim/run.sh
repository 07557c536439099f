#!/usr/bin/env bash
# How fast the autoscaling simulator replays a week: 7 days of the steady workload
# (about 100,000 task instances) under the shipped policy, on one core, three times.
#
#   bench/autoscale-sim/run.sh
#
# Prints the trace size and the wall and CPU time of each run (generation included).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --quiet --release -p airside-autoscale-sim
bin=${CARGO_TARGET_DIR:-target}/release/airside-autoscale-sim
tasks=$("$bin" --workload steady --days 7 --policy deficit --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["tasks"])')
echo "7-day steady trace: $tasks task instances"
for i in 1 2 3; do
  /usr/bin/env time -f "run $i: %e s wall, %U s user, %M KiB peak RSS" \
    taskset -c 0 "$bin" --workload steady --days 7 --policy deficit >/dev/null
done

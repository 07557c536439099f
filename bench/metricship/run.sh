#!/usr/bin/env bash
# metricship benchmark: StatsD over loopback UDP at fixed rates, one line per datagram
# (Airflow's shape) and packed datagrams; loss, CPU per million lines, RSS idle and
# with ~100,000 live series; the same load against Etsy statsd (npm `statsd`) as the peer.
#
#   bench/metricship/run.sh            # everything (about 10 minutes)
#   SECONDS_PER_RATE=3 bench/metricship/run.sh
#
# The daemon under test is pinned to CPU 0 and the load generator to CPU 1 (taskset),
# so "one core" is literal. Results are printed as Markdown rows; RESULTS.md holds a run.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=bench/metricship
secs=${SECONDS_PER_RATE:-5}
single_rates=${SINGLE_RATES:-"50000 100000 150000 200000 250000 300000 400000"}
packed_rates=${PACKED_RATES:-"500000 1000000 1500000 2000000 3000000"}
peer_single_rates=${PEER_SINGLE_RATES:-"20000 40000 60000 80000 100000"}
peer_packed_rates=${PEER_PACKED_RATES:-"100000 200000 400000 800000"}
statsd_port=18125
admin=127.0.0.1:19402
peer_port=18126
peer_mgmt=18127

# Builds go to $CARGO_TARGET_DIR when it is set (a target dir of one's own, so as not to
# wait on another engineer's cargo lock). LOADGEN=path uses an existing load generator.
target_dir=${CARGO_TARGET_DIR:-target}
gen=${LOADGEN:-$target_dir/release/examples/loadgen}
# NO_BUILD=1 reuses an existing build (when another build holds cargo's lock).
[[ ( -n ${NO_BUILD:-} || -n ${LOADGEN:-} ) && -x $gen ]] || cargo build --quiet --release -p metricship --example loadgen
bin=${METRICSHIP_BIN:-dist/metricship}
if [[ ! -x $bin ]]; then
  DAEMONS=metricship scripts/build-static >/dev/null
fi

pids=()
cleanup() { for p in "${pids[@]:-}"; do [[ -n $p ]] && kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

clk=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
# Resets the peak (VmHWM) to the current RSS, so that the next peak read is the peak of
# what happens in between (Linux: 5 > /proc/PID/clear_refs). Fails without the right.
reset_hwm() { echo 5 >"/proc/$1/clear_refs"; }
metric() { curl -s "http://$admin/metrics" | awk -v m="$1" '$1 == m {print $2; f=1} END {if (!f) print 0}'; }
# A counter once it stopped moving: the daemon may still be working through what the
# kernel buffered, and exports its counters once a second.
settled() { local a b; a=$("$@"); while sleep 1.2; b=$("$@"); [[ $a != "$b" ]]; do a=$b; done; echo "$b"; }
udp_drops() { # kernel drops of the UDP socket bound to port $1 (hex in /proc/net/udp)
  local hex; hex=$(printf '%04X' "$1")
  awk -v p=":$hex" '$2 ~ p"$" {print $NF; f=1} END {if (!f) print 0}' /proc/net/udp
}
peer_received() { # statsd.metrics_received since start (flushInterval is longer than the run)
  python3 - "$peer_mgmt" <<'EOF'
import re, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(b"counters\n")
data = b""
while b"END" not in data:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
s.sendall(b"quit\n")
m = re.search(rb"'?statsd\.metrics_received'?\s*:\s*(\d+)", data)
print(m.group(1).decode() if m else 0)
EOF
}

start_metricship() {
  taskset -c 0 "$bin" --no-cloudwatch --statsd-addr "127.0.0.1:$statsd_port" --admin-addr "$admin" \
    --flush-interval 10s --recv-buffer 33554432 --max-series 200000 --log-level warn 2>/dev/null &
  ms=$!
  pids+=("$ms")
  for _ in $(seq 1 50); do "$bin" healthcheck --admin-addr "$admin" 2>/dev/null && return; sleep 0.1; done
  echo "metricship did not start" >&2
  exit 1
}

# What the generator really sent: "LINES_PER_SECOND (LINES_PER_DATAGRAM per datagram)", so a
# generator that fell behind, or datagrams that were not full, show in the table.
achieved() {
  sed -E 's/.*"lines_per_second":([0-9]+).*"lines_per_packet":([0-9.]+).*/\1 (\2 per datagram)/' <<<"$1"
}

# One load step against metricship: prints "rate sent received loss% cpu_s cpu_per_M kernel_drops".
step_metricship() { # $1 rate, $2 extra loadgen args
  local l0 t0 d0 out sent l1 t1 d1
  l0=$(metric metricship_lines_parsed_total); t0=$(cpu_ticks "$ms"); d0=$(udp_drops $statsd_port)
  out=$(taskset -c 1 "$gen" --target "127.0.0.1:$statsd_port" --rate "$1" --seconds "$secs" $2)
  sent=$(sed -E 's/.*"lines":([0-9]+).*/\1/' <<<"$out")
  l1=$(settled metric metricship_lines_parsed_total); t1=$(cpu_ticks "$ms"); d1=$(udp_drops $statsd_port)
  awk -v r="$1" -v s="$sent" -v got="$((${l1%.*} - ${l0%.*}))" -v c="$((t1 - t0))" -v clk="$clk" -v d="$((d1 - d0))" -v a="$(achieved "$out")" \
    'BEGIN { loss = (s - got) / s * 100; cpu = c / clk; printf "| %d | %s | %d | %d | %.3f%% | %.2f | %.2f | %d |\n", r, a, s, got, loss, cpu, (got ? cpu / (got / 1e6) : 0), d }'
}

step_peer() { # $1 rate, $2 extra loadgen args
  local r0 t0 out sent r1 t1 d0 d1
  r0=$(peer_received); t0=$(cpu_ticks "$peer"); d0=$(udp_drops $peer_port)
  out=$(taskset -c 1 "$gen" --target "127.0.0.1:$peer_port" --rate "$1" --seconds "$secs" $2)
  sent=$(sed -E 's/.*"lines":([0-9]+).*/\1/' <<<"$out")
  r1=$(settled peer_received); t1=$(cpu_ticks "$peer"); d1=$(udp_drops $peer_port)
  awk -v r="$1" -v s="$sent" -v got="$((r1 - r0))" -v c="$((t1 - t0))" -v clk="$clk" -v d="$((d1 - d0))" -v a="$(achieved "$out")" \
    'BEGIN { loss = (s - got) / s * 100; cpu = c / clk; printf "| %d | %s | %d | %d | %.3f%% | %.2f | %.2f | %d |\n", r, a, s, got, loss, cpu, (got ? cpu / (got / 1e6) : 0), d }'
}

# The machine may be shared (other builds): a step that lost more than 0.1% is tried once
# more and the better try is kept (the other one is printed to stderr).
loss_of() { awk -F'|' '{gsub(/[ %]/, "", $6); print $6}' <<<"$1"; }
best_of_two() { # $1 step function, $2 rate, $3 extra args
  local row again
  row=$("$1" "$2" "$3")
  if awk -v l="$(loss_of "$row")" 'BEGIN { exit !(l > 0.1) }'; then
    again=$("$1" "$2" "$3")
    if awk -v a="$(loss_of "$again")" -v b="$(loss_of "$row")" 'BEGIN { exit !(a < b) }'; then
      echo "other try: $row" >&2
      row=$again
    else
      echo "other try: $again" >&2
    fi
  fi
  echo "$row"
}

header="| lines/s offered | lines/s sent (lines per datagram) | lines sent | lines received | loss | CPU s | CPU s per 1M lines | kernel drops |
|---|---|---|---|---|---|---|---|"

echo "## machine"
echo "nproc $(nproc), kernel $(uname -r), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), net.core.rmem_max $(cat /proc/sys/net/core/rmem_max)"
echo "$bin: $(stat -c %s "$bin" | awk '{printf "%.1f MiB", $1/1048576}')"

echo; echo "## metricship: RSS"
start_metricship
sleep 2
echo "idle RSS: $(rss_kib "$ms") KiB"
# ~100,000 series: 33,333 names each as gauge, counter and timer, plus 8 pools.
taskset -c 1 "$gen" --target "127.0.0.1:$statsd_port" --rate 200000 --seconds 2 --series 33333 >/dev/null
sleep 2
echo "live series: $(metric metricship_live_series), RSS: $(rss_kib "$ms") KiB, peak (VmHWM) since start: $(hwm_kib "$ms") KiB"
# A scrape of all series, with the peak taken over the scrape alone.
reset_hwm "$ms" && echo "peak reset to: $(hwm_kib "$ms") KiB" || echo "(cannot reset VmHWM: the peak below is since start)"
echo "scrape: $(curl -s -o /dev/null -w '%{size_download} bytes in %{time_total} s' "http://$admin/metrics")"
echo "peak (VmHWM) during the scrape: $(hwm_kib "$ms") KiB; RSS right after it: $(rss_kib "$ms") KiB"
sleep 2
echo "RSS 2 s after the scrape: $(rss_kib "$ms") KiB; peak (VmHWM) since start: $(hwm_kib "$ms") KiB"
kill "$ms"; wait "$ms" 2>/dev/null || true

echo; echo "## metricship: one line per datagram"
start_metricship
echo "$header"
for r in $single_rates; do best_of_two step_metricship "$r" ""; done
echo; echo "## metricship: packed datagrams (1,400 bytes, filled before sending: 43 lines each)"
echo "$header"
for r in $packed_rates; do best_of_two step_metricship "$r" "--packed 1400"; done
kill "$ms"; wait "$ms" 2>/dev/null || true

# The peer: Etsy statsd from npm, installed into a bench-local folder (gitignored).
if [[ ! -d $here/.peer/node_modules/statsd ]]; then
  npm install --silent --prefix "$here/.peer" statsd@0.9.0 >/dev/null
fi
cat >"$here/.peer/config.js" <<EOF
{ port: $peer_port, mgmt_port: $peer_mgmt, address: "127.0.0.1", mgmt_address: "127.0.0.1",
  backends: [], flushInterval: 3600000 }
EOF
taskset -c 0 node "$here/.peer/node_modules/statsd/stats.js" "$here/.peer/config.js" >/dev/null 2>&1 &
peer=$!
pids+=("$peer")
sleep 2
echo; echo "## Etsy statsd 0.9.0 (node $(node --version)): RSS"
echo "idle RSS: $(rss_kib "$peer") KiB"
echo; echo "## Etsy statsd: one line per datagram"
echo "$header"
for r in $peer_single_rates; do best_of_two step_peer "$r" ""; done
echo; echo "## Etsy statsd: packed datagrams (1,400 bytes)"
echo "$header"
for r in $peer_packed_rates; do best_of_two step_peer "$r" "--packed 1400"; done
taskset -c 1 "$gen" --target "127.0.0.1:$peer_port" --rate 100000 --seconds 3 --series 33333 >/dev/null
sleep 2
echo; echo "Etsy statsd RSS after ~100,000 series: $(rss_kib "$peer") KiB"

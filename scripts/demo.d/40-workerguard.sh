# workerguard: a worker's process table in, ECS task scale-in protection out. The ECS
# agent's task-protection endpoint is the test kit's stand-in (ecs-agent-standin), and
# the worker's processes are a process table of the demo's own (--proc-dir), so nothing
# here touches this machine's processes. Sourced by scripts/demo (set -euo pipefail;
# AIRSIDE_BIN, PY and DEMO_DIR are set; background pids go in `pids`).

wg_admin=127.0.0.1:29403
wg_proc="$DEMO_DIR/proc"
mkdir -p "$wg_proc/1" "$wg_proc/7"
printf '/usr/bin/dumb-init\0--\0/entrypoint\0celery\0worker\0' >"$wg_proc/1/cmdline"
printf 'airflow worker -- LocalExecutor: <idle>\0' >"$wg_proc/7/cmdline"

# The stand-in serves until its stdin closes: the demo holds the fifo's write end open.
mkfifo "$DEMO_DIR/agent.in"
"$AIRSIDE_BIN/ecs-agent-standin" <"$DEMO_DIR/agent.in" >"$DEMO_DIR/agent.out" &
pids+=("$!")
exec {agent_in}>"$DEMO_DIR/agent.in"
for _ in $(seq 1 50); do [[ -s "$DEMO_DIR/agent.out" ]] && break; sleep 0.1; done
agent_uri=$(sed -n 's/^ECS_AGENT_URI=//p' "$DEMO_DIR/agent.out")
echo "ECS agent stand-in at $agent_uri"

echo "starting workerguard (check every 200ms, idle grace 3s)"
ECS_AGENT_URI="$agent_uri" "$AIRSIDE_BIN/workerguard" --proc-dir "$wg_proc" \
  --admin-addr "$wg_admin" --check-interval 200ms --idle-grace 3s \
  --log-format json 2>"$DEMO_DIR/workerguard.log" &
pids+=("$!")
for _ in $(seq 1 50); do
  "$AIRSIDE_BIN/workerguard" healthcheck --admin-addr "$wg_admin" 2>/dev/null && break
  sleep 0.2
done
"$AIRSIDE_BIN/workerguard" healthcheck --admin-addr "$wg_admin"

protection() {
  "$PY" - "${agent_uri%%/api/*}" <<'PY'
import json, sys, urllib.request
s = json.loads(urllib.request.urlopen(sys.argv[1] + "/_standin/state").read())
print("  the agent says: " + ("PROTECTED" if s["protected"] else "not protected"),
      "| calls:", ", ".join(f"{r['method']} {r['body'] or ''} -> {r['status']}" for r in s["requests"]))
PY
}

echo "idle worker (a Celery main process and an idle LocalExecutor pool process):"
sleep 1 && protection
task=0199a3f2-7c4e-7d1a-9b2e-000000000042
echo "an Airflow 3 task runner starts: 'airflow worker -- $task'"
mkdir -p "$wg_proc/100" && printf 'airflow worker -- %s\0' "$task" >"$wg_proc/100/cmdline"
sleep 1 && protection
echo "the task ends; protection stays for the 3s idle grace, then goes"
rm -r "$wg_proc/100"
sleep 1 && protection
sleep 3.5 && protection
grep -h '"message":"\(task protected from scale-in\|task no longer protected: idle\)"' "$DEMO_DIR/workerguard.log" | cut -c1-200

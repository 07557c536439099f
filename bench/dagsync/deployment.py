"""dagsync in the deployment the task definitions ship (issue 12's benchmark rows).

Row 1, a tree with large objects: 40 objects of 7 MiB plus 2,000 DAG files; one full sync
by dagsync --once (dist/dagsync), `aws s3 sync --delete` and `rclone sync`, each into a new
temporary folder, RUNS rounds, round-robin; wall, CPU (user+sys) and peak RSS by GNU time.

Row 2, twelve instances on one folder (web, scheduler and ten workers): 12 dagsync daemons
(default flags but --interval 10s --jitter 2s --max-staleness 30s, so that the window holds
several cycles), against 12 shell loops `while :; do aws s3 sync --delete; sleep 10; done`,
all on one shared folder. The window: from start until every instance has the whole
2,000-file tree, then 60 s during which 20 files change (at +10 s). Every S3 request goes
through a counting proxy on loopback. CPU: utime+stime of each dagsync from /proc before
SIGTERM; for the loops, the shell's own and its finished children's (cutime+cstime), so
an aws run still going at the end is not counted (in aws's favour).
"""
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3

sys.path.insert(0, os.path.dirname(__file__))
from bench import ROOT, measure, start_moto, tree_files  # noqa: E402

RUNS = int(os.environ.get("RUNS", "3"))
TICK = os.sysconf("SC_CLK_TCK")


class Counter:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}

    def add(self, kind):
        with self.lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1

    def reset(self):
        with self.lock:
            self.counts = {}

    def snapshot(self):
        with self.lock:
            return dict(self.counts)


def counting_proxy(upstream_port, counter):
    """A loopback HTTP proxy to moto that counts requests by kind (get, list, other)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def forward(self):
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else None
            path = self.path
            bucket_only = path.split("?")[0].strip("/").count("/") == 0
            kind = ("list" if "list-type" in path else "other") if bucket_only else (
                "get" if self.command == "GET" else "other")
            counter.add(kind)
            conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=120)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            conn.request(self.command, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


def env_for(endpoint):
    base = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    return dict(base, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
                RCLONE_CONFIG_MOTO_TYPE="s3", RCLONE_CONFIG_MOTO_PROVIDER="Other",
                RCLONE_CONFIG_MOTO_ENDPOINT=endpoint, RCLONE_CONFIG_MOTO_ACCESS_KEY_ID="bench",
                RCLONE_CONFIG_MOTO_SECRET_ACCESS_KEY="bench", RCLONE_CONFIG_MOTO_REGION="us-east-1")


def dag(i, version=1):
    return (f"# dag {i} v{version}\n" + "x = 1\n" * (200 + (i * 37) % 2500)).encode()


def large_tree(s3, endpoint):
    for i in range(40):
        body = bytearray(os.urandom(7 << 20))
        s3.put_object(Bucket="bench", Key=f"large/data/blob_{i:02}.bin", Body=bytes(body))
    for i in range(2000):
        s3.put_object(Bucket="bench", Key=f"large/team{i % 8}/dag_{i:05}.py", Body=dag(i))
    env = env_for(endpoint)
    tools = {
        "dagsync --once": lambda d: [os.path.join(ROOT, "dist/dagsync"), "--once", "--source",
                                     "s3://bench/large/", "--dest", d, "--log-level", "warn"],
        "aws s3 sync --delete": lambda d: [os.path.join(ROOT, "bench/.venv/bin/aws"), "s3", "sync",
                                           "s3://bench/large/", d, "--delete", "--only-show-errors"],
        "rclone sync": lambda d: ["rclone", "sync", "moto:bench/large", d, "--quiet"],
    }
    runs = {name: [] for name in tools}
    for _ in range(RUNS):
        for name, cmd in tools.items():
            d = tempfile.mkdtemp(prefix="bench-large-")
            try:
                runs[name].append(measure(cmd(d), env))
                assert tree_files(d) == 2040, (name, tree_files(d))
            finally:
                shutil.rmtree(d)
    med = lambda xs, i: statistics.median(x[i] for x in xs)
    return {name: {"wall_s": med(r, 0), "cpu_s": med(r, 1), "rss_mib": med(r, 2),
                   "rss_mib_max": max(x[2] for x in r)} for name, r in runs.items()}


def proc_cpu(pid, children=False):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[11..14] are utime, stime, cutime, cstime (fields 14-17 of proc(5)).
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


def shared_folder(s3, counter, proxy_endpoint, tool):
    prefix = f"shared-{tool}"
    for i in range(2000):
        s3.put_object(Bucket="bench", Key=f"{prefix}/team{i % 8}/dag_{i:05}.py", Body=dag(i))
    dest = tempfile.mkdtemp(prefix="bench-shared-")
    env = env_for(proxy_endpoint)
    counter.reset()
    started = time.time()
    procs = []
    marks = []
    for n in range(12):
        if tool == "dagsync":
            cmd = [os.path.join(ROOT, "dist/dagsync"), "--source", f"s3://bench/{prefix}/", "--dest", dest,
                   "--interval", "10s", "--jitter", "2s", "--max-staleness", "30s",
                   "--admin-addr", "127.0.0.1:0", "--log-level", "warn"]
        else:
            mark = os.path.join(dest + "-marks", str(n))
            os.makedirs(os.path.dirname(mark), exist_ok=True)
            marks.append(mark)
            aws = os.path.join(ROOT, "bench/.venv/bin/aws")
            cmd = ["bash", "-c", f"while :; do {aws} s3 sync s3://bench/{prefix}/ {dest} --delete "
                   f"--only-show-errors; touch {mark}; sleep 10; done"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))

    def all_synced():
        if tool == "dagsync":
            return tree_files(dest) >= 2000
        return all(os.path.exists(m) for m in marks)

    while not all_synced():
        if time.time() - started > 1800:
            raise SystemExit(f"{tool}: the first sync did not finish in 30 minutes")
        time.sleep(1)
    first_sync_s = time.time() - started
    time.sleep(10)
    for i in range(20):
        s3.put_object(Bucket="bench", Key=f"{prefix}/team{i % 8}/dag_{i:05}.py", Body=dag(i, 2))
    time.sleep(50)
    cpu = sum(proc_cpu(p.pid, children=(tool != "dagsync")) for p in procs)
    counts = counter.snapshot()
    for p in procs:
        os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        p.wait(timeout=60)
    changed = sum(1 for i in range(20)
                  if open(os.path.join(dest, f"team{i % 8}/dag_{i:05}.py"), "rb").read() == dag(i, 2))
    shutil.rmtree(dest)
    shutil.rmtree(dest + "-marks", ignore_errors=True)
    return {"requests": sum(counts.values()), "by_kind": counts, "cpu_s": cpu,
            "first_sync_s": first_sync_s, "window_s": time.time() - started, "changes_arrived": changed}


def main():
    moto, endpoint = start_moto()
    port = int(endpoint.rsplit(":", 1)[1])
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="bench", aws_secret_access_key="bench")
    s3.create_bucket(Bucket="bench")
    results = {"large": large_tree(s3, endpoint)}
    print("large:", json.dumps(results["large"]), file=sys.stderr)
    counter = Counter()
    server, proxy = counting_proxy(port, counter)
    results["shared"] = {tool: shared_folder(s3, counter, proxy, tool) for tool in ("dagsync", "aws")}
    print("shared:", json.dumps(results["shared"]), file=sys.stderr)
    server.shutdown()
    moto.stdin.close()
    moto.wait(timeout=10)
    with open(os.path.join(ROOT, "bench/dagsync/results-deployment.json"), "w") as f:
        json.dump(results, f, indent=2)
    print("| tool (40 x 7 MiB + 2,000 files) | wall s | CPU s | peak RSS MiB (max of runs) |")
    print("|---|---|---|---|")
    for name, r in results["large"].items():
        print(f"| {name} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['rss_mib']:.1f} ({r['rss_mib_max']:.1f}) |")
    print("\n| twelve instances, one folder | S3 requests (GET / LIST / other) | CPU s | first sync done s | window s | changes arrived |")
    print("|---|---|---|---|---|---|")
    for name, r in results["shared"].items():
        k = r["by_kind"]
        print(f"| {name} | {r['requests']} ({k.get('get', 0)} / {k.get('list', 0)} / {k.get('other', 0)}) "
              f"| {r['cpu_s']:.1f} | {r['first_sync_s']:.0f} | {r['window_s']:.0f} | {r['changes_arrived']}/20 |")
    d, a = results["shared"]["dagsync"], results["shared"]["aws"]
    print(f"\nrequests: dagsync 1/{a['requests'] / max(1, d['requests']):.1f} of twelve aws loops'; "
          f"CPU 1/{a['cpu_s'] / max(0.01, d['cpu_s']):.1f}")


if __name__ == "__main__":
    main()

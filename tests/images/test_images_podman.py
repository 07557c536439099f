"""Each daemon's image, run the way its task definition runs it: built with podman from
docker/NAME.Dockerfile (its final stage, with the binary scripts/build-static left in
dist/: `--build-arg BINARY_FROM=dist`, since the Rust build image cannot be pulled here),
started by podman with runc, read-only root filesystem, the task definition's user and
hard memory limit, the task definition's environment (placeholders filled in for the
emulator), and judged healthy by the image's own HEALTHCHECK command. Then each does its
job against moto on loopback: dagsync syncs, logship ships a file, metricship answers
StatsD, workerguard protects a task it sees in a shared PID namespace through the ECS
agent stand-in. Each image's size is printed."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import boto3
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "infra"))
from infra_lib import ROOT, containers, env_of, taskdef  # noqa: E402

DIST = ROOT / "dist"
# cgroupfs: no systemd here. The rlimits are lowered explicitly: podman's defaults raise
# them above what this sandbox allows, which runc refuses.
PODMAN = ["podman", "--cgroup-manager", "cgroupfs", "--runtime", "runc"]
LIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]


def podman(*args, check=True, timeout=300):
    done = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def moto_endpoint():
    """moto's server with the project's shims, as the Rust tests start it."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests/support/moto_server.py"), "127.0.0.1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    port = int(proc.stdout.readline())
    yield f"http://127.0.0.1:{port}"
    proc.stdin.close()
    proc.wait(timeout=30)


def client(service, endpoint):
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def build_image(daemon, tmp_path):
    """Builds docker/DAEMON.Dockerfile's final stage from dist/; returns (tag, bytes)."""
    binary = DIST / daemon
    assert binary.exists(), f"{binary} missing: scripts/test builds it (scripts/build-static)"
    context = tmp_path / "context"
    (context / "dist").mkdir(parents=True)
    shutil.copy(binary, context / "dist" / daemon)
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", context / "dist" / "ca-certificates.crt")
    if daemon == "logship":
        # The empty folders the build stage makes for the image's volumes.
        (context / "dist/rootfs/state/logship").mkdir(parents=True)
        (context / "dist/rootfs/airflow/logs").mkdir(parents=True)
    tag = f"localhost/airside-{daemon}-test:{uuid.uuid4().hex[:8]}"
    podman("build", "--format", "docker", "--build-arg", "BINARY_FROM=dist",
           "-f", str(ROOT / "docker" / f"{daemon}.Dockerfile"), "-t", tag, str(context))
    size = int(json.loads(podman("image", "inspect", tag).stdout)[0]["Size"])
    print(f"\n{daemon} image: {size / 1048576:.1f} MiB", file=sys.stderr)
    return tag, size


class Container:
    """One container run as its task definition says, removed at the end."""

    def __init__(self, daemon, task, tag, env, volumes, moto, extra=()):
        c = containers(taskdef(task))[daemon]
        self.name = f"airside-{daemon}-{uuid.uuid4().hex[:8]}"
        self.memory_mib = c["memory"]
        self.user = c["user"]
        args = ["run", "-d", "--name", self.name, "--read-only", "--network", "host",
                "--user", self.user, "--memory", f"{self.memory_mib}m",
                "--memory-swap", f"{self.memory_mib}m", *LIMITS,
                # The health check is run by the test (no systemd timers here).
                "--health-interval", "disable"]
        for k, v in {**env, "AWS_ENDPOINT_URL": moto, "AWS_ACCESS_KEY_ID": "testing",
                     "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                     "AWS_EC2_METADATA_DISABLED": "true"}.items():
            args += ["-e", f"{k}={v}"]
        for host, path, ro in volumes:
            args += ["-v", f"{host}:{path}:{'ro' if ro else 'rw'}"]
        podman(*args, *extra, tag)

    def inspect(self):
        return json.loads(podman("inspect", self.name).stdout)[0]

    def logs(self):
        return podman("logs", self.name, check=False).stderr

    def healthy(self):
        return podman("healthcheck", "run", self.name, check=False).returncode == 0

    def wait_healthy(self, within=90):
        deadline = time.time() + within
        while time.time() < deadline:
            if self.healthy():
                return
            assert self.inspect()["State"]["Running"], f"{self.name} exited:\n{self.logs()}"
            time.sleep(1)
        raise AssertionError(f"{self.name} not healthy within {within}s:\n{self.logs()}")

    def assert_as_the_task_definition_says(self):
        info = self.inspect()
        host = info["HostConfig"]
        assert host["ReadonlyRootfs"] is True
        assert host["Memory"] == self.memory_mib * 1024 * 1024
        assert info["Config"]["User"] == self.user
        assert info["State"]["OOMKilled"] is False

    def stop(self):
        """SIGTERM (podman stop), then the exit code, whether it was OOM-killed, the logs."""
        podman("stop", "-t", "30", self.name, check=False)
        info, logs = self.inspect(), self.logs()
        podman("rm", "-f", self.name, check=False)
        return info["State"]["ExitCode"], info["State"]["OOMKilled"], logs

    def serve(self, job):
        """Healthy by the image's own check, started as the task definition says, `job`
        done; then it stops cleanly after SIGTERM, never OOM-killed."""
        try:
            self.wait_healthy()
            self.assert_as_the_task_definition_says()
            job()
        finally:
            code, oom, logs = self.stop()
        assert (code, oom) == (0, False), logs


def assert_only_the_binary(daemon, size):
    """The image holds the binary and a few small files (CA bundle, empty folders)."""
    binary = (DIST / daemon).stat().st_size
    assert binary <= size <= binary + 1024 * 1024, (daemon, binary, size)


def fill(env, values):
    out = {}
    for k, v in env.items():
        for name, value in values.items():
            v = v.replace("${" + name + "}", value)
        assert "${" not in v, f"{k}={v}: a placeholder the test does not fill"
        out[k] = v
    return out


def owned_by(path, user):
    uid, gid = (int(x) for x in user.split(":"))
    os.chown(path, uid, gid)
    return path


@pytest.fixture(autouse=True)
def need_podman():
    assert shutil.which("podman") and shutil.which("runc"), "scripts/setup-system installs podman and runc"


def test_dagsync_image_syncs(tmp_path, moto_endpoint):
    tag, size = build_image("dagsync", tmp_path)
    s3 = client("s3", moto_endpoint)
    bucket = f"dags-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    files = {f"team{i % 3}/dag_{i}.py": f"# dag {i}\n".encode() for i in range(50)}
    for k, v in files.items():
        s3.put_object(Bucket=bucket, Key=f"dags/{k}", Body=v)
    env = fill(env_of(containers(taskdef("worker"))["dagsync"]),
               {"dag_source": f"s3://{bucket}/dags/", "dagsync_max_delete": "50%"})
    dags = tmp_path / "dags"
    dags.mkdir()
    owned_by(dags, "65532:65532")
    c = Container("dagsync", "worker", tag, env, [(dags, "/opt/airflow/dags", False)], moto_endpoint)

    def synced():
        for k, v in files.items():
            assert (dags / k).read_bytes() == v, k

    c.serve(synced)
    assert_only_the_binary("dagsync", size)


def test_logship_image_ships_a_file(tmp_path, moto_endpoint):
    tag, size = build_image("logship", tmp_path)
    s3 = client("s3", moto_endpoint)
    bucket = f"logs-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    stream = f"logs-{uuid.uuid4().hex[:8]}"
    client("firehose", moto_endpoint).create_delivery_stream(
        DeliveryStreamName=stream,
        ExtendedS3DestinationConfiguration={
            "RoleARN": "arn:aws:iam::123456789012:role/firehose",
            "BucketARN": f"arn:aws:s3:::{bucket}", "Prefix": "fh/"})
    env = fill(env_of(containers(taskdef("worker"))["logship"]),
               {"firehose_stream": stream, "remote_log_folder": f"{bucket}/airflow-task-logs"})
    logs = tmp_path / "logs"
    task = logs / "dag_id=d/run_id=r/task_id=t"
    task.mkdir(parents=True)
    marker = f"podman-image-line-{uuid.uuid4().hex}"
    # Airflow writes as uid 50000; the files are world-readable, as Airflow's are.
    line = f"[2026-12-02T00:00:00] INFO {marker}\n"
    (task / "attempt=1.log").write_text(line)
    for p in [logs, *logs.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    state = tmp_path / "state"
    state.mkdir()
    owned_by(state, "65532:65532")
    # As the task's FireLens router: ECS mounts the socket's folder at /var/run and the
    # configuration it generated at /fluent-bit/etc/fluent-bit.conf.
    run = tmp_path / "run"
    run.mkdir()
    owned_by(run, "65532:65532")
    firelens = tmp_path / "fluent-bit.conf"
    firelens.write_text(
        "[INPUT]\n    Name forward\n    unix_path /var/run/fluent.sock\n\n"
        "[FILTER]\n    Name record_modifier\n    Match *\n    Record ecs_cluster podman\n\n"
        f"[OUTPUT]\n    Name firehose\n    Match airflow-worker-firelens*\n"
        f"    region us-east-1\n    delivery_stream {stream}\n"
    )
    firelens.chmod(0o644)
    c = Container("logship", "worker", tag, env,
                  [(logs, "/opt/airflow/logs", True), (state, "/var/lib/logship", False),
                   (run, "/var/run", False), (firelens, "/fluent-bit/etc/fluent-bit.conf", True)],
                  moto_endpoint)
    stdout_marker = f"podman-container-stdout-{uuid.uuid4().hex}"

    def forwarded():
        """The Airflow container's stdout, as Docker's fluentd driver sends it, through
        the socket the container made; acknowledged once in its disk buffer."""
        import msgpack
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(run / "fluent.sock"))
        sock.settimeout(30)
        record = {"container_id": "c0", "container_name": "/airflow-worker", "source": "stdout",
                  "log": stdout_marker}
        sock.sendall(msgpack.packb(["airflow-worker-firelens-t", [[int(time.time()), record]],
                                    {"chunk": "podman-1"}]))
        assert msgpack.unpackb(sock.recv(64)) == {"ack": "podman-1"}
        sock.close()

    def shipped():
        forwarded()
        deadline, found = time.time() + 60, False
        while time.time() < deadline and not found:
            for o in s3.list_objects_v2(Bucket=bucket, Prefix="fh/").get("Contents", []):
                body = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
                found = found or marker.encode() in body
            time.sleep(1)
        assert found, f"the line never reached the stream's bucket:\n{c.logs()}"
        deadline, found = time.time() + 60, None
        while time.time() < deadline and not found:
            for o in s3.list_objects_v2(Bucket=bucket, Prefix="fh/").get("Contents", []):
                for l in s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read().splitlines():
                    r = json.loads(l)
                    if r["message"] == stdout_marker:
                        found = r
            time.sleep(1)
        assert found, f"the container's stdout never reached the stream's bucket:\n{c.logs()}"
        assert (found["container_name"], found["ecs_cluster"]) == ("airflow-worker", "podman")
        # And the file as it is, in Airflow's remote-log layout, for the UI.
        key = "airflow-task-logs/dag_id=d/run_id=r/task_id=t/attempt=1.log.000000000000"
        deadline = time.time() + 30
        while True:
            try:
                body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                break
            except s3.exceptions.NoSuchKey:
                assert time.time() < deadline, f"no {key}:\n{c.logs()}"
                time.sleep(1)
        assert body == line.encode()

    c.serve(shipped)
    assert_only_the_binary("logship", size)


def test_metricship_image_answers_statsd(tmp_path, moto_endpoint):
    tag, size = build_image("metricship", tmp_path)
    env = fill(env_of(containers(taskdef("scheduler"))["metricship"]),
               {"worker_concurrency": "16", "min_workers": "0", "max_workers": "10",
                "environment": "podman-test"})
    c = Container("metricship", "scheduler", tag, env, [], moto_endpoint)
    admin = env["METRICSHIP_ADMIN_ADDR"]
    host, port = env["METRICSHIP_STATSD_ADDR"].rsplit(":", 1)

    def answered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        deadline, parsed = time.time() + 30, 0.0
        while time.time() < deadline and parsed < 3:
            sock.sendto(b"airflow.scheduler_heartbeat:1|c", (host, int(port)))
            body = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
            for line in body.splitlines():
                if line.startswith("metricship_lines_parsed_total"):
                    parsed = float(line.split()[-1])
            time.sleep(0.5)
        assert parsed >= 3, f"metricship parsed {parsed} lines:\n{c.logs()}"

    c.serve(answered)
    assert_only_the_binary("metricship", size)


def standin():
    """The ECS agent stand-in (crates/airside-testkit), as a process: (Popen, uri)."""
    subprocess.run(["cargo", "build", "-q", "--locked", "-p", "airside-testkit", "--bin", "ecs-agent-standin"],
                   cwd=ROOT, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    proc = subprocess.Popen([str(target / "debug" / "ecs-agent-standin")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line.startswith("ECS_AGENT_URI="), line
    return proc, line.split("=", 1)[1]


def test_workerguard_image_protects_a_task_in_a_shared_pid_namespace(tmp_path):
    """The worker task's PID namespace (pidMode "task") stood for by one the test makes
    with unshare: its init runs a process titled as Airflow 3's task runner for 6 s. The
    container joins that namespace, sees the task, protects the task through the stand-in
    and clears the protection after the idle grace."""
    tag, size = build_image("workerguard", tmp_path)
    agent, uri = standin()
    task_id = f"0199a3f2-7c4e-7d1a-9b2e-{uuid.uuid4().hex[:12]}"
    ns = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "bash", "-c",
         f"sleep 2; (exec -a 'airflow worker -- {task_id}' sleep 6) & sleep 120"])
    try:
        deadline = time.time() + 10
        while True:
            children = Path(f"/proc/{ns.pid}/task/{ns.pid}/children").read_text().split()
            if children:
                break
            assert time.time() < deadline, "the namespace did not start"
            time.sleep(0.1)
        env = {**env_of(containers(taskdef("worker"))["workerguard"]),
               "ECS_AGENT_URI": uri, "WORKERGUARD_IDLE_GRACE": "3s"}
        c = Container("workerguard", "worker", tag, env, [], "http://127.0.0.1:9",
                      extra=["--pid", f"ns:/proc/{children[0]}/ns/pid"])
        base = uri.split("/api/")[0]

        def state():
            return json.loads(urllib.request.urlopen(f"{base}/_standin/state", timeout=5).read())

        def protected_then_released():
            deadline = time.time() + 30
            while len(state()["timeline"]) < 2:
                assert time.time() < deadline, (state(), c.logs())
                time.sleep(0.5)
            s = state()
            (on_at, on), (off_at, off) = s["timeline"]
            assert (on, off) == (True, False), s
            # 6 s of task, then the 3 s grace (and up to a check interval each way).
            assert 8 <= off_at - on_at <= 12, s
            assert task_id in c.logs(), c.logs()

        c.serve(protected_then_released)
    finally:
        ns.kill()
        ns.wait()
        agent.stdin.close()
        agent.wait(timeout=10)
    assert_only_the_binary("workerguard", size)

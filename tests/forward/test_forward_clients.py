"""logship's forward input with real forward-protocol clients.

fluent-logger (PyPI, pinned in requirements-dev.txt) sends Message mode, with integer
times and with EventTime, over TCP and the unix socket; it does not ask for acks and has
no Forward mode. The other frames are built with msgpack in the layouts their senders
use (facts from their sources, no code): Fluent Bit's forward output (PackedForward,
gzip CompressedPackedForward, `chunk` and `size` options, and since 5.0.5 each time
wrapped as `[EventTime, {metadata}]`) and the Docker fluentd driver (Message mode,
`container_id`, `container_name`, `source`, `log`, and the `partial_*` fields of a line
it split at 16 KiB). The binary is the static one the image ships (dist/logship).
"""

import gzip
import json
import os
import socket
import struct
import subprocess
import time
from pathlib import Path

import msgpack
import pytest
from fluent import sender

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def event_time(seconds: int, nanos: int) -> msgpack.ExtType:
    return msgpack.ExtType(0, struct.pack(">II", seconds, nanos))


class Router:
    """logship as a FireLens router writing records to stdout."""

    def __init__(self, work: Path):
        binary = Path(os.environ.get("LOGSHIP_BIN", ROOT / "dist" / "logship"))
        assert binary.exists(), f"{binary}: run scripts/build-static first (scripts/test does)"
        self.socket = work / "fluent.sock"
        self.port = free_port()
        self.out = work / "stdout.ndjson"
        self.err = work / "stderr.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ECS_")}
        self.proc = subprocess.Popen(
            [
                str(binary),
                "--forward", "true",
                "--path", "",
                "--output", "stdout",
                "--forward-socket", str(self.socket),
                "--forward-listen", f"127.0.0.1:{self.port}",
                "--forward-health", f"127.0.0.1:{free_port()}",
                "--firelens-config", str(work / "none.conf"),
                "--buffer-dir", str(work / "buffer"),
                "--state-dir", str(work / "state"),
                "--admin-addr", "127.0.0.1:0",
                "--multiline-timeout", "100ms",
                "--log-format", "json",
            ],
            stdout=self.out.open("wb"),
            stderr=self.err.open("wb"),
            env=env,
        )
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            assert self.proc.poll() is None, self.err.read_text()
            assert time.monotonic() < deadline, self.err.read_text()
            time.sleep(0.05)

    def records(self, at_least: int, timeout: float = 15) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            lines = [l for l in self.out.read_text().splitlines() if l.strip()]
            if len(lines) >= at_least or time.monotonic() > deadline:
                return [json.loads(l) for l in lines]
            time.sleep(0.1)

    def stop(self):
        self.proc.terminate()
        assert self.proc.wait(timeout=30) == 0, self.err.read_text()


@pytest.fixture
def router(tmp_path):
    r = Router(tmp_path)
    yield r
    if r.proc.poll() is None:
        r.proc.kill()
        r.proc.wait()


def test_fluent_logger_message_mode_over_tcp_and_the_socket(router):
    tcp = sender.FluentSender("app", host="127.0.0.1", port=router.port)
    unix = sender.FluentSender("app", host=f"unix://{router.socket}", nanosecond_precision=True)
    for i in range(100):
        assert tcp.emit("tcp", {"message": f"tcp {i}", "n": i}), tcp.last_error
        assert unix.emit("unix", {"message": f"unix {i}", "n": i}), unix.last_error
    tcp.close()
    unix.close()
    records = router.records(200)
    router.stop()
    by_tag = {}
    for r in records:
        by_tag.setdefault(r["tag"], []).append(r)
    assert [r["message"] for r in by_tag["app.tcp"]] == [f"tcp {i}" for i in range(100)]
    assert [r["message"] for r in by_tag["app.unix"]] == [f"unix {i}" for i in range(100)]
    assert [r["fields"]["n"] for r in by_tag["app.tcp"]] == list(range(100))
    # EventTime keeps the nanoseconds; an integer time has none.
    assert by_tag["app.unix"][0]["timestamp"][19:20] == "."
    assert by_tag["app.tcp"][0]["timestamp"].endswith(".000000000Z")
    assert len({r["id"] for r in records}) == 200


def read_ack(sock: socket.socket) -> str:
    unpacker = msgpack.Unpacker(raw=False)
    sock.settimeout(20)
    while True:
        data = sock.recv(4096)
        assert data, "closed before the ack"
        unpacker.feed(data)
        for obj in unpacker:
            return obj["ack"]


def docker_record(log: str, **partial) -> dict:
    r = {"container_id": "3f2a", "container_name": "/ecs-scheduler", "source": "stdout", "log": log}
    r.update(partial)
    return r


def test_batches_as_fluent_bit_and_docker_build_them(router):
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(router.socket))
    now = int(time.time())
    # Forward mode, with an ack.
    entries = [[event_time(now, i), docker_record(f"forward {i}")] for i in range(10)]
    s.sendall(msgpack.packb(["scheduler-firelens-t", entries, {"chunk": "fw-1"}]))
    assert read_ack(s) == "fw-1"
    # PackedForward as Fluent Bit 5 sends it: [[EventTime, {}], record] entries.
    packed = b"".join(
        msgpack.packb([[event_time(now, i), {}], docker_record(f"packed {i}")]) for i in range(10)
    )
    s.sendall(msgpack.packb(["scheduler-firelens-t", packed, {"chunk": "pf-1", "size": 10}], use_bin_type=True))
    assert read_ack(s) == "pf-1"
    # CompressedPackedForward (gzip).
    s.sendall(
        msgpack.packb(
            ["scheduler-firelens-t", gzip.compress(packed.replace(b"packed", b"gzippd")),
             {"chunk": "cpf-1", "size": 10, "compressed": "gzip"}],
            use_bin_type=True,
        )
    )
    assert read_ack(s) == "cpf-1"
    # Docker's driver: Message mode, a 40 KiB line split into 16 KiB partials, no ack.
    line = "L" * (40 * 1024)
    parts = [line[i : i + 16384] for i in range(0, len(line), 16384)]
    for n, p in enumerate(parts, 1):
        s.sendall(
            msgpack.packb(
                ["scheduler-firelens-t", event_time(now, 0),
                 docker_record(p, partial_message="true", partial_id="p-1",
                               partial_ordinal=str(n), partial_last=str(n == len(parts)).lower())]
            )
        )
    # A frame without chunk is not answered.
    s.settimeout(0.5)
    with pytest.raises(socket.timeout):
        s.recv(1)
    s.close()
    records = router.records(31)
    router.stop()
    messages = [r["message"] for r in records]
    assert messages[:30] == (
        [f"forward {i}" for i in range(10)]
        + [f"packed {i}" for i in range(10)]
        + [f"gzippd {i}" for i in range(10)]
    )
    assert messages[30] == line, "the partials are one line again"
    assert len(records) == 31
    assert {r["container_name"] for r in records} == {"ecs-scheduler"}
    assert {r["stream"] for r in records} == {"stdout"}


def test_the_health_check_port_answers(router):
    # ECS's recommended router health check: write a line to 127.0.0.1:8877.
    stderr = router.err.read_text()
    assert router.proc.poll() is None, stderr
    # The port is the one passed as --forward-health; find it from the command line.
    args = router.proc.args
    port = int(args[args.index("--forward-health") + 1].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(b'{"health": "check"}\n')
    # UDP heartbeat on the forward port: one byte back.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.settimeout(5)
        u.sendto(b"\x00", ("127.0.0.1", router.port))
        assert u.recvfrom(16)[0] == b"\x00"
    router.stop()

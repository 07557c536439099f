"""docker/*.Dockerfile: multi-stage builds whose final stage is FROM scratch with only
the static binary, a CA bundle and a numeric non-root user. The Dockerfiles are checked
as text here, checkov checks them too (test_infra_checkov.py), and tests/images builds
and runs each final stage with podman (from dist/, as the Rust build image cannot be
pulled here)."""
import json
import re
from pathlib import Path

import pytest

from infra_lib import DOCKER, ROOT, SIDECARS, TASKS, containers, env_of, taskdef


def instructions(path):
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        buf += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def stages(path):
    result, current = [], None
    for word, rest in instructions(path):
        if word == "FROM":
            current = {"from": rest, "steps": []}
            result.append(current)
        elif current is not None:
            current["steps"].append((word, rest))
    return result


def test_one_dockerfile_per_daemon():
    assert sorted(p.name for p in DOCKER.glob("*.Dockerfile")) == sorted(f"{d}.Dockerfile" for d in SIDECARS)


@pytest.mark.parametrize("daemon", SIDECARS)
def test_build_stage_runs_build_static(daemon):
    build, *_ = stages(DOCKER / f"{daemon}.Dockerfile")
    assert re.fullmatch(r"--platform=linux/amd64 rust:\d+\.\d+-slim-\w+ AS build", build["from"])
    runs = [rest for word, rest in build["steps"] if word == "RUN"]
    assert any(rest.endswith(f"DAEMONS={daemon} scripts/build-static") for rest in runs)
    copies = [rest for word, rest in build["steps"] if word == "COPY"]
    assert "scripts/build-static scripts/build-static" in copies
    # The toolchain pinned in the image is at least the workspace's rust-version.
    want = re.search(r'rust-version = "(\d+)\.(\d+)"', (ROOT / "Cargo.toml").read_text()).groups()
    have = re.search(r"rust:(\d+)\.(\d+)", build["from"]).groups()
    assert tuple(map(int, have)) >= tuple(map(int, want))


def test_build_static_is_the_static_glibc_build():
    script = (ROOT / "scripts" / "build-static").read_text()
    assert "target=x86_64-unknown-linux-gnu" in script
    assert "+crt-static" in script and "--locked" in script


TLS_CLIENTS = {"dagsync", "logship", "metricship"}


@pytest.mark.parametrize("daemon", SIDECARS)
def test_final_stage_is_scratch_with_binary_ca_bundle_and_numeric_user(daemon):
    final = stages(DOCKER / f"{daemon}.Dockerfile")[-1]
    assert final["from"] == "scratch"
    steps = final["steps"]
    words = [w for w, _ in steps]
    assert "RUN" not in words, "a scratch image has nothing to run"
    copies = [rest for w, rest in steps if w == "COPY"]
    ca = "--from=artefacts /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt"
    # A CA bundle for the daemons that call AWS over TLS; workerguard calls only the ECS
    # agent, over plain HTTP, and its image holds the binary alone.
    assert (ca in copies) == (daemon in TLS_CLIENTS), daemon
    assert f"--from=artefacts /src/dist/{daemon} /usr/local/bin/{daemon}" in copies
    for rest in copies:
        assert rest.startswith("--from=artefacts "), "only artefacts of the build (or dist) stage"
    extra = [c for c in copies if "ca-certificates" not in c and f"/src/dist/{daemon}" not in c]
    if daemon == "logship":
        # Empty directories for the volumes, owned by their writers.
        assert extra == [
            "--from=artefacts --chown=65532:65532 --chmod=0700 /rootfs/state/ /var/lib/",
            "--from=artefacts --chown=${AIRFLOW_UID}:0 --chmod=0775 /rootfs/airflow/ /opt/airflow/",
        ]
    else:
        assert extra == []
    (user,) = [rest for w, rest in steps if w == "USER"]
    uid, gid = user.split(":")
    assert uid.isdigit() and gid.isdigit() and int(uid) != 0
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "COPY")
    (entrypoint,) = [rest for w, rest in steps if w == "ENTRYPOINT"]
    assert json.loads(entrypoint) == [f"/usr/local/bin/{daemon}"], "exec form: there is no shell"
    (health,) = [rest for w, rest in steps if w == "HEALTHCHECK"]
    assert json.loads(health[health.index("CMD") + 3 :]) == [f"/usr/local/bin/{daemon}", "healthcheck"]


@pytest.mark.parametrize("daemon", SIDECARS)
def test_the_artefacts_come_from_the_build_stage_unless_told_otherwise(daemon):
    """One final stage: its files come from `build` by default, or from `dist` (the same
    paths, filled from dist/) with --build-arg BINARY_FROM=dist."""
    path = DOCKER / f"{daemon}.Dockerfile"
    head = path.read_text().split("\nFROM ", 1)[0]
    assert "\nARG BINARY_FROM=build\n" in "\n" + head
    named = {st["from"].rsplit(" AS ", 1)[-1]: st for st in stages(path)}
    assert named["artefacts"]["from"] == "${BINARY_FROM} AS artefacts"
    dist = [rest for w, rest in named["dist"]["steps"] if w == "COPY"]
    assert ("dist/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt" in dist) == (daemon in TLS_CLIENTS)
    assert f"dist/{daemon} /src/dist/{daemon}" in dist
    assert named["dist"]["from"] == "scratch AS dist"


@pytest.mark.parametrize("kind", TASKS)
def test_taskdefs_match_the_images(kind):
    """The task definitions' user, health check and volume paths are the images'."""
    for name, c in containers(taskdef(kind)).items():
        if name not in SIDECARS:
            continue
        final = stages(DOCKER / f"{name}.Dockerfile")[-1]
        (user,) = [rest for w, rest in final["steps"] if w == "USER"]
        assert c["user"] == user
        assert c["healthCheck"]["command"][1] == json.loads(
            [rest for w, rest in final["steps"] if w == "ENTRYPOINT"][0]
        )[0]
        if name == "logship":
            (volume,) = [rest for w, rest in final["steps"] if w == "VOLUME"]
            declared = set(json.loads(volume))
            mounted = {m["containerPath"] for m in c["mountPoints"]}
            # Fargate copies a VOLUME's directory (and its owner) into the task volume
            # only when the mount path equals the VOLUME path.
            assert mounted == declared
            (env,) = [rest for w, rest in final["steps"] if w == "ENV"]
            assert env == "LOGSHIP_STATE_DIR=" + env_of(c)["LOGSHIP_STATE_DIR"]


def test_dockerignore_keeps_the_context_small():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in lines
    for needed in ("!Cargo.toml", "!Cargo.lock", "!crates/", "!scripts/build-static"):
        assert needed in lines


def _context_files():
    """The files `docker build .` sends, following .dockerignore's rules (last match wins)."""
    import fnmatch

    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.lstrip("!").rstrip("/")))

    def included(rel):
        keep = True
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        for negate, pattern in rules:
            if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes):
                keep = negate
        return keep

    import os

    # Build outputs and tool caches are large and never in the context; don't walk them.
    skip_dirs = {".git", "target", ".venv", "dist", "node_modules", ".demo"}
    out = set()
    for top, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip_dirs]
        for name in names:
            rel = (Path(top) / name).relative_to(ROOT).as_posix()
            if included(rel):
                out.add(rel)
    return out


def test_build_context_holds_the_whole_workspace_and_nothing_else():
    files = _context_files()
    assert {"Cargo.toml", "Cargo.lock", "scripts/build-static"} <= files
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "crates").rglob("*") if p.is_file() and "target" not in p.parts}
    assert sources <= files, f"missing from the build context: {sorted(sources - files)[:5]}"
    assert all(f.startswith("crates/") or f in ("Cargo.toml", "Cargo.lock", "scripts/build-static") for f in files)


def test_crates_need_nothing_outside_the_build_context():
    # Path dependencies and include_str!/include_bytes! must stay inside crates/, or the
    # image build (which copies only crates/) would fail where scripts/build-static works.
    crates = ROOT / "crates"
    for manifest in [ROOT / "Cargo.toml", *crates.glob("*/Cargo.toml")]:
        for rel in re.findall(r'path\s*=\s*"([^"]+)"', manifest.read_text()):
            target = (manifest.parent / rel).resolve()
            assert crates.resolve() in target.parents or target == crates.resolve(), f"{manifest}: {rel}"
    for source in crates.glob("*/src/**/*.rs"):
        for rel in re.findall(r'include_(?:str|bytes)!\(\s*"([^"]+)"', source.read_text()):
            target = (source.parent / rel).resolve()
            assert crates.resolve() in target.parents, f"{source}: includes {rel}"

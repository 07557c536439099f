"""Shared helpers of the packaging tests: the repository's paths, the Terraform files
parsed with python-hcl2, and the task definition templates."""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import hcl2
from hcl2.utils import SerializationOptions

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
MODULES = INFRA / "modules"
EXAMPLES = INFRA / "examples"
TASKDEFS = MODULES / "airflow-tasks" / "taskdefs"
DOCKER = ROOT / "docker"
TASKS = ("web", "scheduler", "worker")
SIDECARS = ("dagsync", "logship", "metricship", "workerguard")

# Plain values: strings without their quotes, blocks as lists of dicts, no comments.
_OPTIONS = SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)


def tf_files() -> list[Path]:
    return sorted(INFRA.rglob("*.tf"))


@functools.cache
def parse(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return hcl2.load(f, serialization_options=_OPTIONS)


def module_dirs() -> list[Path]:
    return sorted(p for p in MODULES.iterdir() if p.is_dir())


def root_dirs() -> list[Path]:
    """Every Terraform root or module directory: the modules and the examples."""
    return module_dirs() + sorted(p for p in EXAMPLES.iterdir() if p.is_dir())


def blocks(kind: str, path: Path | None = None):
    """Yields (file, type, name, body) for every `resource` or `data` block."""
    for f in [path] if path else tf_files():
        for entry in parse(f).get(kind, []):
            for rtype, named in entry.items():
                for name, body in named.items():
                    yield f, rtype, name, body


def resources(rtype: str, path: Path | None = None):
    return [(f, n, b) for f, t, n, b in blocks("resource", path) if t == rtype]


def nested(body: dict, name: str) -> list[dict]:
    """The nested blocks `name` of a block, static and `dynamic` (their content)."""
    out = list(body.get(name, []))
    for dyn in body.get("dynamic", []):
        if name in dyn:
            out.extend(dyn[name].get("content", []))
    return out


def policy_statements(path: Path | None = None):
    """Yields (file, document name, statement) for every aws_iam_policy_document
    statement, static or dynamic."""
    for f, t, name, body in blocks("data", path):
        if t == "aws_iam_policy_document":
            for st in nested(body, "statement"):
                yield f, name, st


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def variables(path: Path) -> dict[str, dict]:
    out = {}
    for entry in parse(path).get("variable", []):
        out.update(entry)
    return out


def locals_of(path: Path) -> dict:
    out = {}
    for entry in parse(path).get("locals", []):
        out.update(entry)
    return out


def taskdef(kind: str) -> dict:
    return json.loads((TASKDEFS / f"{kind}.json").read_text())


PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def placeholders(kind: str) -> set[str]:
    return set(PLACEHOLDER.findall((TASKDEFS / f"{kind}.json").read_text()))


def render(kind: str, values: dict[str, str]) -> dict:
    """Fills the placeholders the way templatefile() and envsubst do."""
    text = (TASKDEFS / f"{kind}.json").read_text()
    return json.loads(PLACEHOLDER.sub(lambda m: values[m.group(1)], text))


def containers(td: dict) -> dict[str, dict]:
    return {c["name"]: c for c in td["containerDefinitions"]}


def airflow_containers(td: dict) -> list[dict]:
    return [c for c in td["containerDefinitions"] if c["image"] == "${airflow_image}"]


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("environment", [])}

"""Writes the input and output tables of every Terraform module's and example's README
from its variables.tf and outputs.tf (between the TF-DOCS markers), or with --check
fails when a README is not current. Run through scripts/gen-tf-docs."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import hcl2
from hcl2.utils import SerializationOptions

ROOT = Path(__file__).resolve().parents[1]
DIRS = sorted(p for p in (ROOT / "infra" / "modules").iterdir() if p.is_dir()) + sorted(
    p for p in (ROOT / "infra" / "examples").iterdir() if p.is_dir()
)
BEGIN = "<!-- BEGIN TF-DOCS: written by scripts/gen-tf-docs from variables.tf and outputs.tf; do not edit -->"
END = "<!-- END TF-DOCS -->"
_OPTIONS = SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)


def _load(path: Path) -> dict:
    if not path.exists():
        return {}
    with open(path, encoding="utf-8") as f:
        return hcl2.load(f, serialization_options=_OPTIONS)


def _hcl_type(value) -> str:
    text = str(value)
    if text.startswith("${") and text.endswith("}"):
        text = text[2:-1]
    return text


def _hcl_value(value) -> str:
    """A default as HCL would write it (short values only; long ones are abbreviated)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    text = json.dumps(value, separators=(", ", " = ") if isinstance(value, dict) else (", ", ": "))
    return text if len(text) <= 60 else text[:57] + "..."


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def tables(directory: Path) -> str:
    variables = _load(directory / "variables.tf").get("variable", [])
    outputs = _load(directory / "outputs.tf").get("output", [])
    lines = ["## Inputs", ""]
    if variables:
        lines += ["| name | type | default | description |", "|---|---|---|---|"]
        for entry in variables:
            for name, body in entry.items():
                default = f"`{_cell(_hcl_value(body['default']))}`" if "default" in body else "required"
                desc = _cell(body.get("description", ""))
                lines.append(f"| `{name}` | `{_cell(_hcl_type(body.get('type', 'any')))}` | {default} | {desc} |")
    else:
        lines.append("None.")
    lines += ["", "## Outputs", ""]
    if outputs:
        lines += ["| name | description |", "|---|---|"]
        for entry in outputs:
            for name, body in entry.items():
                lines.append(f"| `{name}` | {_cell(body.get('description', ''))} |")
    else:
        lines.append("None.")
    return "\n".join([BEGIN, *lines, END])


def render(readme: str, directory: Path) -> str:
    block = tables(directory)
    if BEGIN in readme and END in readme:
        head, rest = readme.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        return head + block + tail
    return readme.rstrip("\n") + "\n\n" + block + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for directory in DIRS:
        path = directory / "README.md"
        old = path.read_text(encoding="utf-8") if path.exists() else f"# {directory.name}\n"
        new = render(old, directory)
        if new != old:
            stale.append(path.relative_to(ROOT))
            if not check:
                path.write_text(new, encoding="utf-8")
    if check and stale:
        print("not current (run scripts/gen-tf-docs): " + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    for path in stale:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

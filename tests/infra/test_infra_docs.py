"""Each Terraform module's and example's README carries input and output tables written
by scripts/gen-tf-docs from its variables.tf and outputs.tf; they must be current."""
import importlib.util
import subprocess
import sys

from infra_lib import ROOT, root_dirs

spec = importlib.util.spec_from_file_location("tf_docs", ROOT / "scripts" / "tf_docs.py")
tf_docs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tf_docs)


def test_every_readme_is_current():
    # The script's own check, as a user would run it.
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "tf_docs.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_every_variable_and_output_has_a_row():
    for directory in root_dirs():
        readme = (directory / "README.md").read_text()
        section = readme.split(tf_docs.BEGIN, 1)[1].split(tf_docs.END, 1)[0]
        for name in tf_docs._load(directory / "variables.tf").get("variable", []):
            assert f"| `{next(iter(name))}` |" in section, (directory, name)
        for name in tf_docs._load(directory / "outputs.tf").get("output", []):
            assert f"| `{next(iter(name))}` |" in section, (directory, name)


def test_a_changed_variable_makes_the_readme_stale(tmp_path):
    (tmp_path / "variables.tf").write_text(
        'variable "size" {\n  type        = number\n  description = "How big."\n  default     = 3\n}\n'
    )
    (tmp_path / "outputs.tf").write_text('output "arn" {\n  description = "The ARN."\n  value = 1\n}\n')
    readme = tf_docs.render("# demo\n\nProse stays.\n", tmp_path)
    assert readme.startswith("# demo\n\nProse stays.\n")
    assert "| `size` | `number` | `3` | How big. |" in readme
    assert "| `arn` | The ARN. |" in readme
    assert tf_docs.render(readme, tmp_path) == readme
    (tmp_path / "variables.tf").write_text(
        'variable "size" {\n  type        = number\n  description = "How large."\n}\n'
    )
    again = tf_docs.render(readme, tmp_path)
    assert again != readme and "| `size` | `number` | required | How large. |" in again
    assert again.count(tf_docs.BEGIN) == 1

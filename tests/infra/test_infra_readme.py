"""The deployment page (infra/README.md) documents what a user must set: every variable of
the example environment and every placeholder of the task definitions."""
import re

import pytest

from infra_lib import EXAMPLES, ROOT, TASKS, placeholders, variables


@pytest.fixture(scope="module")
def section():
    text = (ROOT / "infra" / "README.md").read_text()
    m = re.search(r"<!-- BEGIN deployment -->(.*)<!-- END deployment -->", text, re.S)
    assert m, "README has no deployment section"
    return m.group(1)


def documented_names(section):
    """Names in the first column of the section's tables (`a`, `b` forms)."""
    names = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            names.update(re.findall(r"`([a-z_]+)`", first))
    return names


def test_every_example_variable_is_documented(section):
    declared = set(variables(EXAMPLES / "prod" / "variables.tf"))
    missing = declared - documented_names(section)
    assert not missing, f"README deployment section does not describe {sorted(missing)}"


def test_every_placeholder_is_documented(section):
    used = set().union(*(placeholders(k) for k in TASKS))
    missing = used - documented_names(section)
    assert not missing, f"README deployment section does not describe {sorted(missing)}"


def test_the_commands_shown_exist(section):
    for script in ("scripts/render-taskdef", "scripts/gen-taskdefs", "scripts/setup-checkov", "scripts/build-static"):
        assert (ROOT / script).exists()
    assert 'docker/$d.Dockerfile' in section
    for daemon in re.search(r"for d in ([a-z ]+); do", section).group(1).split():
        assert (ROOT / "docker" / f"{daemon}.Dockerfile").is_file()
    assert (EXAMPLES / "prod").is_dir() and "infra/examples/prod" in section

"""The root README's map of the repository matches the tree: every path it names exists,
and every top-level folder of the repository is on it."""
import re
import subprocess

from infra_lib import ROOT


def map_paths():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Map of the repository", 1)[1].split("\n## ", 1)[0]
    paths = []
    for line in section.splitlines():
        if line.startswith("| `"):
            paths += re.findall(r"`([^`]+)`", line.split("|")[1])
    return paths


def test_every_mapped_path_exists():
    paths = map_paths()
    assert paths, "README has no map of the repository"
    for p in paths:
        assert (ROOT / p.rstrip("/")).exists(), f"README's map names {p}, which does not exist"


def test_every_top_level_folder_is_mapped():
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    folders = {f.split("/")[0] for f in tracked if "/" in f and not f.startswith(".")}
    mapped = {p.split("/")[0] for p in map_paths()}
    assert folders <= mapped, f"not on the README's map: {sorted(folders - mapped)}"


def test_each_main_rs_is_the_shared_entry():
    for daemon in ("dagsync", "logship", "metricship", "workerguard"):
        main = (ROOT / "crates" / daemon / "src" / "main.rs").read_text()
        code = [l for l in main.splitlines() if l.strip() and not l.lstrip().startswith("//")]
        assert any("airside_core::daemon::main::<" in l for l in code), main
        assert len(code) <= 4, f"{daemon}'s main.rs is more than the shared entry:\n{main}"

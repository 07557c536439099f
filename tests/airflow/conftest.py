"""The Airflow stack helper lives with the other test support (tests/support), which the
demo's --airflow mode uses too."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

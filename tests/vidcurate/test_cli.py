"""One command line: `python -m vidcurate`, with `python -m curation` kept as its alias (same program)."""
from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_curation_is_an_alias_of_vidcurate():
    new, old = _run("-m", "vidcurate", "--help"), _run("-m", "curation", "--help")
    assert new.returncode == old.returncode == 0, new.stderr + old.stderr
    assert new.stdout == old.stdout
    assert new.stdout.startswith("usage: python -m vidcurate ")
    for cmd in ("run", "demo", "inspect"):
        assert cmd in new.stdout


def test_errors_name_the_command_the_user_should_type(tmp_path):
    """A usage error prints the one command name; a missing config names the file."""
    bad = _run("-m", "curation", "nonsense")
    assert bad.returncode == 2 and "usage: python -m vidcurate" in bad.stderr
    missing = _run("-m", "vidcurate", "run", str(tmp_path / "none.yaml"))
    assert missing.returncode != 0 and "none.yaml" in missing.stderr

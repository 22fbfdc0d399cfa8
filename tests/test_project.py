"""The project's own promises: the README's commands, CI running them, lint."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.+?)\n```", text)


def test_readme_opens_with_serve_and_test_commands():
    commands = _readme_commands()
    assert len(commands) >= 2, "the README must start with the serve and the test command"
    serve, test = commands[:2]
    assert "pip install" in serve and "pip install" in test
    assert test.rstrip().endswith("pytest"), "the second command runs the whole suite"


def test_ci_runs_the_readme_test_command_verbatim():
    test_command = _readme_commands()[1]
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines


def test_ruff_is_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is part of the test extra"
    result = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_test_security_md_names_exists():
    """SECURITY.md says which test proves each guarantee: each one it names must exist."""
    text = (ROOT / "SECURITY.md").read_text()
    named, current = [], None
    for path, name in re.findall(r"`(tests/[\w/]+\.py)?::(test_\w+)`", text):
        current = path or current
        named.append((current, name))
    assert len(named) > 30
    missing = [f"{path}::{name}" for path, name in named
               if not re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M)]
    assert not missing, f"SECURITY.md names tests that do not exist: {missing}"

"""The commands as installed (``[project.scripts]``) and as scripts (``python search/run.py``)."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
# The search's own commands, and the script each console script stands for.
SEARCH_COMMANDS = {
    "iic-search": "search/run.py",
    "iic-confirm": "search/confirm.py",
    "iic-export": "search/export.py",
    "iic-reconcile": "search/reconcile.py",
}


def _run(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout, not the installed one
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _console_script(entry_point: str) -> list[str]:
    """What pip's console-script wrapper runs: ``sys.exit(main())``."""
    module, _, function = entry_point.partition(":")
    return ["-c", f"import sys; from {module} import {function}; sys.exit({function}())"]


def test_every_command_is_a_console_script():
    assert set(SEARCH_COMMANDS) | {"iic-train"} == set(SCRIPTS)
    assert SCRIPTS["iic-train"] == "iic.train:main"


@pytest.mark.parametrize("command", sorted(SEARCH_COMMANDS))
def test_console_script_and_script_print_the_same_help(command, tmp_path):
    installed = _run([*_console_script(SCRIPTS[command]), "--help"], cwd=tmp_path)
    script = _run([SEARCH_COMMANDS[command], "--help"])
    assert installed.returncode == script.returncode == 0, installed.stderr + script.stderr
    assert installed.stdout == script.stdout and installed.stdout.startswith("usage: ")


def test_a_console_script_exits_with_its_commands_exit_code(tmp_path):
    refused = _run(
        [
            *_console_script(SCRIPTS["iic-export"]),
            *("--experiment", "none", "--top", "1", "--out", str(tmp_path / "out")),
            *("--tracking-uri", f"sqlite:///{tmp_path}/missing.db"),
        ],
        cwd=tmp_path,
    )
    assert refused.returncode == 2 and "no MLflow database there" in refused.stderr

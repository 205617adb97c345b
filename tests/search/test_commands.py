"""The commands as installed (``[project.scripts]``) and as scripts (``python search/run.py``)."""

import importlib
import json
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


def _entry_point(command: str):
    """The function a console script calls: pip's wrapper runs ``sys.exit(function())``."""
    module, _, function = SCRIPTS[command].partition(":")
    return getattr(importlib.import_module(module), function)


def test_every_command_is_a_console_script():
    assert set(SEARCH_COMMANDS) | {"iic-train"} == set(SCRIPTS)
    assert SCRIPTS["iic-train"] == "iic.train:main"


# Runs every script as ``python SCRIPT --help`` would (its folder first on sys.path, __main__ as its
# name) in one interpreter, so that Ray and MLflow are imported once; prints each help as JSON.
SCRIPTS_HELP = """
import contextlib, io, json, os, runpy, sys
helps = {}
for script in sys.argv[1:]:
    sys.argv, sys.path[0], out = [script, "--help"], os.path.dirname(os.path.abspath(script)), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        runpy.run_path(script, run_name="__main__")
    helps[script] = out.getvalue()
print(json.dumps(helps))
"""


def test_console_scripts_and_scripts_print_the_same_help(capsys):
    scripts = _run(["-c", SCRIPTS_HELP, *SEARCH_COMMANDS.values()])
    assert scripts.returncode == 0, scripts.stderr
    script_help = json.loads(scripts.stdout.splitlines()[-1])
    for command, script in SEARCH_COMMANDS.items():
        with pytest.raises(SystemExit) as exit:
            _entry_point(command)(["--help"])
        assert exit.value.code == 0
        installed = capsys.readouterr().out
        assert installed == script_help[script] and installed.startswith("usage: "), command


def test_a_console_script_exits_with_its_commands_exit_code(tmp_path, capsys):
    export = _entry_point("iic-export")
    missing = f"sqlite:///{tmp_path}/missing.db"
    assert export(["--experiment", "none", "--top", "1", "--out", str(tmp_path), "--tracking-uri", missing]) == 2
    assert "no MLflow database there" in capsys.readouterr().err

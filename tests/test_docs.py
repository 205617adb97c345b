"""The documentation's commands work: every command in README.md and docs/*.md is parsed by the
project's own argument parser, the cheap ones are run, and the rest are checked for shape.

A command is a line of a fenced shell block (or of an unlabelled one) that starts with ``python``,
``iic-``, ``pip``, ``ray``, ``bash`` or ``mlflow``; ``\\`` continues a line, ``&&`` chains commands,
``#`` starts a comment. ``ray job submit ... -- CMD`` and ``ray exec cluster.yaml 'CMD'`` are
checked with the command they carry.

- ``python``/``iic-`` commands: parsed by the parser that ``PARSERS`` names for them (``python -m
  MODULE`` is keyed by its module, so the tools are ``python -m benchmarks.NAME``; the old
  ``python benchmarks/NAME.py`` form fails). A command with no entry there, or whose parser cannot be
  imported, fails. ``--set KEY=VALUE`` must name an ``IICConfig`` field, ``--preset`` a bundled
  preset, ``--dataset`` a data set, and paths into the repository must exist. Cheap ones run:
  ``--help``, and ``python -m iic.train`` for at most ``CHEAP_EPOCHS`` epochs (its ``--out``
  redirected to a temporary folder, on ``CHEAP_SAMPLES`` images to keep the suite short).
- ``pip``, ``ray``, ``bash``, ``mlflow`` and ``python -m pytest``: shape only (the extras, files and
  scripts they name exist).

Also: README.md is at most 250 lines, every environment variable the code reads is in README.md,
the console scripts the docs name are declared in pyproject.toml, relative links resolve, Python
blocks import what exists, YAML blocks parse (and those of docs/training.md are IICConfig fields).
"""

import argparse
import ast
import dataclasses
import importlib
import importlib.util
import inspect
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from unittest import mock

import pytest
import yaml

# Which parser reads each command, as "module:function". The function builds the parser (returns an
# ArgumentParser) or parses itself (parse_args(argv), main(argv), main() reading sys.argv): it is
# called with argparse intercepted, so nothing after the parsing runs. Update this table when a
# command or its parser moves. None: the command takes no arguments (its module must exist).
PARSERS: dict[str, str | None] = {
    "python search/run.py": "search.run:build_parser",
    "python search/confirm.py": "search.confirm:parse_args",
    "python search/export.py": "search.export:parse_args",
    "python search/reconcile.py": "search.reconcile:parse_args",
    "python -m iic.train": "iic.train:build_parser",
    "python -m iic.pretrained": None,
    # The measuring tools run as modules from the repository root (benchmarks/README.md).
    "python -m benchmarks.digits_quality": "benchmarks.digits_quality:main",
    "python -m benchmarks.step_profile": "benchmarks.step_profile:main",
    "python -m benchmarks.gpu_packing": "benchmarks.gpu_packing:parse_args",
    "python -m benchmarks.tune_driver": "benchmarks.tune_driver:main",
    "python -m benchmarks.record_curves": "benchmarks.record_curves:parse_args",
    "python -m benchmarks.search_strategies": "benchmarks.search_strategies:parse_args",
    "python -m benchmarks.label_free": "benchmarks.label_free:main",
    "python -m benchmarks.chaos": "benchmarks.chaos:main",
    "python -m benchmarks.cached_features": "benchmarks.cached_features:main",
}
# Console scripts read their arguments with the same parser as the Python form.
CONSOLE_SCRIPTS = {
    "iic-search": "python search/run.py",
    "iic-confirm": "python search/confirm.py",
    "iic-export": "python search/export.py",
    "iic-reconcile": "python search/reconcile.py",
    "iic-train": "python -m iic.train",
}
RUNS_CHEAPLY = "python -m iic.train"  # run for real when it trains at most CHEAP_EPOCHS epochs
CHEAP_EPOCHS = 2
CHEAP_SAMPLES = 300
PREFIXES = ("python", "iic-", "pip", "ray", "bash", "mlflow")
RAY_SUBCOMMANDS = {"up", "down", "attach", "exec", "dashboard", "job", "rsync-down", "rsync-up", "monitor", "status"}
MLFLOW_SUBCOMMANDS = {"ui", "server"}
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}
README_MAX_LINES = 250

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
REPO_PATH = re.compile(r"^(configs|search|benchmarks|iic|trainables|docs|tests)/[\w./-]+$|^cluster\.yaml$")


@dataclasses.dataclass(frozen=True)
class Command:
    source: str  # file:line
    tokens: tuple[str, ...]

    def __str__(self) -> str:
        return shlex.join(self.tokens)


# ---- reading the docs ---------------------------------------------------------------------------


def fenced_blocks(path: Path) -> list[tuple[str, int, list[str]]]:
    """(language, first line number, lines) of every fenced block."""
    blocks, current = [], None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fence = re.match(r"^\s*```(\S*)", line)
        if fence and current is None:
            current = (fence.group(1).lower(), number + 1, [])
        elif fence:
            blocks.append(current)
            current = None
        elif current is not None:
            current[2].append(line)
    return blocks


def split_chain(tokens: list[str]) -> list[list[str]]:
    """Commands chained with && (or ;)."""
    commands, current = [], []
    for token in tokens:
        if token in ("&&", ";"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [command for command in commands + [current] if command]


def commands_in_text(lines: list[str], source: str, first_line: int) -> list[Command]:
    commands, pending, start = [], "", first_line
    for offset, line in enumerate(lines):
        if not pending:
            start = first_line + offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text, pending = pending + line, ""
        if not text.strip().startswith(PREFIXES):
            continue
        for chained in split_chain(shlex.split(text, comments=True)):
            commands.append(Command(f"{source}:{start}", tuple(chained)))
    return commands


def documented_commands() -> list[Command]:
    commands = []
    for path in DOCS:
        for language, first_line, lines in fenced_blocks(path):
            if language in SHELL_BLOCKS:
                commands += commands_in_text(lines, path.relative_to(ROOT).as_posix(), first_line)
    return commands


def carried(command: Command) -> list[Command]:
    """The command, or for `ray job submit ... -- CMD` and `ray exec FILE 'CMD'` also the commands
    they carry (a `cd` among them is left out)."""
    tokens = list(command.tokens)
    if tokens[:3] == ["ray", "job", "submit"] and "--" in tokens:
        return [command, Command(command.source, tuple(tokens[tokens.index("--") + 1 :]))]
    if tokens[:2] == ["ray", "exec"]:
        inner = [t for t in tokens[2:] if not t.startswith("-") and not t.endswith(".yaml")]
        chained = split_chain(shlex.split(inner[-1])) if inner else []
        return [command, *(Command(command.source, tuple(c)) for c in chained if c[0] != "cd")]
    return [command]


COMMANDS = [inner for command in documented_commands() for inner in carried(command)]


def kind(tokens: tuple[str, ...]) -> str:
    """The table key of a python/iic- command: 'python -m MODULE', 'python PATH' or the script."""
    if tokens[0] == "python":
        return " ".join(tokens[:3]) if tokens[1] == "-m" else " ".join(tokens[:2])
    return tokens[0]


def arguments(tokens: tuple[str, ...]) -> list[str]:
    return list(tokens[len(kind(tokens).split()) :])


# ---- parsing with the project's parsers ---------------------------------------------------------


class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace, extras: list[str]):
        super().__init__()
        self.namespace, self.extras = namespace, extras


def parse_with(target: str, argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed by the parser of ``target`` ("module:function"); stops right after parsing."""
    module_name, _, name = target.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        pytest.fail(
            f"the parser {target} cannot be reached ({type(err).__name__}: {err}); update PARSERS in {__file__}"
        )
    original = argparse.ArgumentParser.parse_known_args

    def intercept(parser, args=None, namespace=None):
        raise _Parsed(*original(parser, args, namespace))

    with (
        mock.patch.object(argparse.ArgumentParser, "parse_known_args", intercept),
        mock.patch.object(sys, "argv", [target, *argv]),
    ):
        try:
            result = function(argv) if "argv" in inspect.signature(function).parameters else function()
            if isinstance(result, argparse.ArgumentParser):
                result.parse_args(argv)
        except _Parsed as parsed:
            assert not parsed.extras, f"unrecognized arguments: {' '.join(parsed.extras)}"
            return parsed.namespace
    raise AssertionError(f"{target} returned without parsing its arguments")


def check_values(tokens: tuple[str, ...]) -> list[str]:
    """What the parser does not check: --set fields, --preset and --dataset names, repository paths."""
    from iic.config import IICConfig
    from iic.data import DATASETS

    fields = {field.name for field in dataclasses.fields(IICConfig)}
    presets = {path.stem for path in (ROOT / "search" / "presets").glob("*.yaml")}
    problems = []
    for flag, value in itertools.pairwise(tokens):
        if flag == "--set" and value.partition("=")[0] not in fields:
            problems.append(f"--set {value}: {value.partition('=')[0]} is not an IICConfig field")
        if flag == "--preset" and value not in presets:
            problems.append(f"--preset {value}: no search/presets/{value}.yaml")
        if flag == "--dataset" and value not in DATASETS:
            problems.append(f"--dataset {value}: not one of {', '.join(DATASETS)}")
    for token in tokens:
        for part in token.split("="):
            if REPO_PATH.match(part) and not (ROOT / part).exists():
                problems.append(f"{part} does not exist")
    return problems


def epochs_of(tokens: tuple[str, ...]) -> int | None:
    return int(tokens[tokens.index("--epochs") + 1]) if "--epochs" in tokens else None


def is_help(command: Command) -> bool:
    return "--help" in command.tokens or "-h" in command.tokens


def runs_cheaply(command: Command) -> bool:
    tokens = command.tokens
    if is_help(command):
        return tokens[0] == "python"
    epochs = epochs_of(tokens)
    return kind(tokens) == RUNS_CHEAPLY and epochs is not None and epochs <= CHEAP_EPOCHS and "--resume" not in tokens


def python_commands() -> list[Command]:
    return [c for c in COMMANDS if c.tokens[0] == "python" or c.tokens[0].startswith("iic-")]


def shaped_commands() -> list[Command]:
    return [c for c in COMMANDS if c.tokens[0] in ("pip", "ray", "bash", "mlflow")]


def unique(commands: list[Command]) -> list[Command]:
    seen, kept = set(), []
    for command in commands:
        if command.tokens not in seen:
            seen.add(command.tokens)
            kept.append(command)
    return kept


def ids(commands: list[Command]) -> list[str]:
    return [f"{c.source} {c}"[:120] for c in commands]


PARSED = unique(python_commands())
RUN = [c for c in PARSED if runs_cheaply(c)]
SHAPED = unique(shaped_commands())


def test_the_docs_have_commands():
    assert len(PARSED) >= 20 and RUN and SHAPED, "the command reader found too few commands: is it broken?"


@pytest.mark.parametrize("command", PARSED, ids=ids(PARSED))
def test_command_parses(command: Command):
    tokens = command.tokens
    key = CONSOLE_SCRIPTS.get(kind(tokens), kind(tokens))
    if tokens[:3] == ("python", "-m", "pytest"):
        for token in arguments(tokens):
            assert token.startswith("-") or token == "not slow" or (ROOT / token).exists(), f"{command}: {token}"
        return
    assert not key.startswith("python benchmarks/"), (
        f"{command.source}: {command}\n  the tools run as modules: python -m benchmarks.NAME (benchmarks/README.md)"
    )
    assert key in PARSERS, f"{command.source}: no parser known for {key!r}; add it to PARSERS in {__file__}"
    target = PARSERS[key]
    if target is None:
        assert importlib.util.find_spec(key.split()[-1]) is not None, f"{command}: no module {key.split()[-1]}"
        assert not arguments(tokens), f"{command}: {key} takes no arguments"
        return
    try:
        parse_with(target, arguments(tokens))
    except SystemExit as exit:
        if exit.code == 0 and ("--help" in tokens or "-h" in tokens):
            return
        pytest.fail(f"{command.source}: {command}\n{target} refused it (exit {exit.code})")
    problems = check_values(tokens)
    assert not problems, f"{command.source}: {command}\n  " + "\n  ".join(problems)


# Printing help takes seconds; a training run starts torch and trains (10-20 s on 2 cores): slow.
RUN_PARAMS = [
    pytest.param(command, id=name, marks=() if is_help(command) else pytest.mark.slow)
    for command, name in zip(RUN, ids(RUN), strict=True)
]


@pytest.mark.parametrize("command", RUN_PARAMS)
def test_cheap_command_runs(command: Command, tmp_path: Path):
    argv = arguments(command.tokens)
    if "--out" in argv:
        argv[argv.index("--out") + 1] = str(tmp_path / "out")
    elif kind(command.tokens) == RUNS_CHEAPLY and "--help" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    if kind(command.tokens) == RUNS_CHEAPLY and "--help" not in argv:
        argv += ["--set", f"max_samples={CHEAP_SAMPLES}"]
    prefix = kind(command.tokens).split()[1:]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, *prefix, *argv], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{command.source}: {command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    if "--help" not in argv:
        metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["epochs"] == epochs_of(command.tokens), metrics


@pytest.mark.parametrize("command", SHAPED, ids=ids(SHAPED))
def test_command_shape(command: Command):
    tokens = command.tokens
    if tokens[0] == "pip":
        assert tokens[1] == "install", command
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("optional-dependencies", {})
        for token in tokens[2:]:
            if token == "." or token.startswith(".["):
                for extra in re.findall(r"\[(.*)\]", token)[0].split(",") if "[" in token else []:
                    assert extra in extras, f"{command}: pyproject.toml has no extra {extra!r}"
    elif tokens[0] == "ray":
        assert tokens[1] in RAY_SUBCOMMANDS, f"{command}: ray has no subcommand {tokens[1]!r} here"
        for token in tokens:
            if token.endswith(".yaml"):
                assert (ROOT / token).is_file(), f"{command}: {token} does not exist"
    elif tokens[0] == "bash":
        assert (ROOT / tokens[1]).is_file(), f"{command}: {tokens[1]} does not exist"
    elif tokens[0] == "mlflow":
        assert tokens[1] in MLFLOW_SUBCOMMANDS, f"{command}: unexpected mlflow subcommand {tokens[1]!r}"
    problems = [p for p in check_values(tokens) if "does not exist" in p]
    assert not problems, f"{command.source}: {command}\n  " + "\n  ".join(problems)


# ---- the rest of the docs -----------------------------------------------------------------------


def test_readme_is_short():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; at most {README_MAX_LINES}: move detail to docs/"


def _is_environ(node: ast.expr) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ"
    )


def _variable_name(node: ast.expr, constants: dict[str, str]) -> str | None:
    """A string literal, or a module constant naming one."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return constants.get(node.id) if isinstance(node, ast.Name) else None


def environment_variables() -> dict[str, str]:
    """Every environment variable that iic/, search/ and trainables/ read or set a default for
    (os.environ.get/setdefault/pop/[...], os.getenv; a module constant as the name counts), with
    the file that first reads it."""
    found = {}
    for path in sorted(p for package in ("iic", "search", "trainables") for p in (ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text())
        constants = {
            target.id: node.value.value
            for node in tree.body
            if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for node in ast.walk(tree):
            name = None
            if isinstance(node, ast.Call) and node.args and isinstance(node.func, ast.Attribute):
                reads = node.func.attr in ("get", "setdefault", "pop") and _is_environ(node.func.value)
                if reads or node.func.attr == "getenv":
                    name = _variable_name(node.args[0], constants)
            elif isinstance(node, ast.Subscript) and _is_environ(node.value):
                name = _variable_name(node.slice, constants)
            if name:
                found.setdefault(name, path.relative_to(ROOT).as_posix())
    return found


def test_readme_names_every_environment_variable():
    variables = environment_variables()
    assert {"IIC_STORAGE_PATH", "MLFLOW_TRACKING_URI", "IIC_STATE_DIR", "IIC_CACHE_DIR"} <= set(variables)
    readme = (ROOT / "README.md").read_text()
    missing = {name: path for name, path in variables.items() if f"`{name}" not in readme}
    assert not missing, f"README.md does not name these environment variables (read in): {missing}"


def test_console_scripts_are_declared():
    named = {
        word
        for path in DOCS
        for word in re.findall(r"\biic-(?:search|train|export|confirm|reconcile)\b", path.read_text())
    }
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("scripts", {})
    assert named <= set(scripts), f"pyproject.toml [project.scripts] lacks {sorted(named - set(scripts))}"
    assert set(CONSOLE_SCRIPTS) >= named
    for name in named:
        module_name, _, function = scripts[name].partition(":")
        assert callable(getattr(importlib.import_module(module_name), function)), f"{name} = {scripts[name]}"


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_resolve():
    problems = []
    for path in DOCS:
        text = path.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            if not linked.exists():
                problems.append(f"{path.name}: {target}: no such file")
            elif anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+\s+(.*)$", linked.read_text(), flags=re.MULTILINE)
                if anchor not in {slug(h) for h in headings}:
                    problems.append(f"{path.name}: {target}: no heading with that anchor")
    assert not problems, "\n".join(problems)


def test_python_blocks_import_what_exists():
    for path in DOCS:
        for language, line, lines in fenced_blocks(path):
            if language != "python":
                continue
            for node in ast.walk(ast.parse("\n".join(lines))):
                if isinstance(node, ast.ImportFrom):
                    module = importlib.import_module(node.module)
                    for alias in node.names:
                        assert hasattr(module, alias.name), f"{path.name}:{line}: {node.module} has no {alias.name}"


def test_yaml_blocks_parse():
    from iic.config import IICConfig

    for path in DOCS:
        for language, line, lines in fenced_blocks(path):
            if language in ("yaml", "yml"):
                values = yaml.safe_load("\n".join(lines))
                assert values, f"{path.name}:{line}: an empty YAML block"
                if path.name == "training.md":
                    IICConfig.from_dict(values)  # raises on a field that does not exist

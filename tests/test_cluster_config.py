"""cluster.yaml: accepted by Ray 2.60's cluster launcher and true to what the search needs.

Offline and fast: Ray's JSON schema and Ray's own preparation and validation of a cluster config
(the steps of `ray up` before it talks to AWS), our invariants on the parsed file, the environment
the setup commands give every later command (run with real bash through Ray's own command
wrapper), and the rsync filters (real rsync, where installed). No Ray runtime, no network.
"""

import copy
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from packaging.requirements import Requirement
from ray.autoscaler._private.command_runner import SSHCommandRunner, _with_interactive
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
RAY_SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
PLACEHOLDER = "CHANGE-ME"
# Every list of shell commands in a cluster config.
COMMAND_KEYS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Anything here that tried to reach AWS (or anywhere) would fail loudly instead."""

    def refuse(*args, **kwargs):
        raise AssertionError("the cluster config tests must not use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def load(text: str) -> dict:
    return yaml.safe_load(text)  # how Ray's CLI reads the file (commands.py), anchors included


@pytest.fixture(scope="module")
def raw() -> str:
    return CLUSTER_YAML.read_text()


@pytest.fixture
def config(raw) -> dict:
    return load(raw)


def prepare_and_validate(config: dict) -> dict:
    """What `ray up` does before contacting the cloud: merge the provider's defaults.yaml, merge the
    setup commands, fill per-type worker limits, then the schema and the launcher's own checks."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def commands(config: dict) -> list[str]:
    return [command for key in COMMAND_KEYS for command in config.get(key) or []]


def install_commands(config: dict) -> list[list[str]]:
    return [shlex.split(command) for command in config["setup_commands"] if " pip install " in command]


def requirements_of(argv: list[str]) -> tuple[dict[str, Requirement], list[str]]:
    """The requirement arguments of a `pip install` / `uv pip install` command, and its editable paths."""
    args = argv[argv.index("install") + 1 :]
    requirements, editables = {}, []
    i = 0
    while i < len(args):
        if args[i] in ("-e", "--editable"):
            editables.append(args[i + 1])
            i += 2
        elif args[i] in ("--python", "-p", "--index-url", "--extra-index-url", "-c", "-r"):
            i += 2
        elif args[i].startswith("-") or args[i].startswith(("~", "/", ".")):
            i += 1  # another option, or a local path installed non-editable
        else:
            requirement = Requirement(args[i])
            requirements[requirement.name] = requirement
            i += 1
    return requirements, editables


def project_requirements() -> dict[str, Requirement]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {Requirement(dep).name: Requirement(dep) for dep in pyproject["project"]["dependencies"]}


def pinned_version(requirement: Requirement) -> str | None:
    specs = list(requirement.specifier)
    return specs[0].version if len(specs) == 1 and specs[0].operator == "==" and "*" not in specs[0].version else None


def invariant_problems(text: str) -> list[str]:
    """Everything cluster.yaml must guarantee for iic-search, checked on the parsed file."""
    config = load(text)
    problems = []
    types = config["available_node_types"]
    head_type = config["head_node_type"]
    head = types.get(head_type, {})
    workers = {name: spec for name, spec in types.items() if name != head_type}

    # The head runs the driver and MLflow; no trial may be scheduled there.
    if head.get("resources", {}).get("GPU", 0) != 0:
        problems.append(f"head type {head_type!r} advertises GPUs")
    if head.get("resources", {}).get("CPU") != 0:
        problems.append(f"head type {head_type!r} must advertise CPU: 0 so no trial lands on it")
    if re.match(r"(g|p)\d", head.get("node_config", {}).get("InstanceType", "")):  # g4dn, g5, g6, p4d, p5, ...
        problems.append(f"head type {head_type!r} is a GPU instance, which would go unused")

    # One GPU worker type that the autoscaler can start from zero, up to the cluster's limit.
    gpu = workers.get("gpu_worker")
    if gpu is None:
        problems.append("no gpu_worker node type")
    else:
        if gpu.get("resources") != {"CPU": 4, "GPU": 1}:
            problems.append(
                f"gpu_worker must declare resources {{CPU: 4, GPU: 1}} (g5.xlarge), got {gpu.get('resources')}"
            )
        if gpu.get("min_workers") != 0:
            problems.append(f"gpu_worker.min_workers must be 0, got {gpu.get('min_workers')}")
        if gpu.get("max_workers") != config.get("max_workers"):
            problems.append(
                f"gpu_worker.max_workers {gpu.get('max_workers')} != max_workers {config.get('max_workers')}"
            )

    # The bucket is named once; everything else derives from $IIC_S3.
    if text.count(PLACEHOLDER) != 1:
        problems.append(f"the bucket placeholder {PLACEHOLDER!r} appears {text.count(PLACEHOLDER)} times, not once")
    s3_commands = [command for command in commands(config) if "s3://" in command]
    if len(s3_commands) != 1 or len(re.findall(r"s3://", s3_commands[0])) != 1:
        problems.append(
            f"an s3:// URI is written in {len(s3_commands)} commands; name it once (IIC_S3) and derive the rest"
        )
    if not any('IIC_STORAGE_PATH="$IIC_S3/' in command for command in commands(config)):
        problems.append("IIC_STORAGE_PATH is not derived from $IIC_S3")

    # Nothing listens publicly.
    if "0.0.0.0" in text:
        problems.append("0.0.0.0 appears in cluster.yaml")
    for command in commands(config):
        if "mlflow server" in command and not re.search(r"--host[ =]127\.0\.0\.1\b", command):
            problems.append("an `mlflow server` command does not bind --host 127.0.0.1")
        if "ray start --head" in command and "--dashboard-host=127.0.0.1" not in command:
            problems.append("`ray start --head` does not bind the dashboard to 127.0.0.1")
    if not any("mlflow server" in command for command in config.get("head_start_ray_commands", [])):
        problems.append("the head does not start the MLflow server")

    # The project root is synced and installed, editable, from where it lands.
    mounts = config.get("file_mounts", {})
    synced = [remote for remote, local in mounts.items() if (ROOT / local).resolve() == ROOT]
    if len(synced) != 1:
        problems.append(
            f"file_mounts must sync the project root once (relative to it: `ray up` runs there), got {mounts}"
        )
    installs = [requirements_of(argv) for argv in install_commands(config)]
    editables = [path for _, paths in installs for path in paths]
    if synced and synced[0] not in editables:
        problems.append(f"no setup command installs {synced[0]} editable (found: {editables})")
    pins = {name: req for reqs, _ in installs for name, req in reqs.items()}
    project = project_requirements()
    for name in ("ray", "mlflow"):
        version = pinned_version(pins[name]) if name in pins else None
        if version is None:
            problems.append(f"setup commands do not pin {name} to one version")
        elif not project[name].specifier.contains(version, prereleases=True):
            problems.append(f"setup pins {name}=={version}, outside pyproject's {project[name]}")
    if "ray" in pins:
        if pinned_version(pins["ray"]) != "2.60.0":
            problems.append(f"setup must pin ray==2.60.0, got {pins['ray']}")
        if not {"default", "tune"} <= pins["ray"].extras:
            problems.append(
                f"ray needs the default (dashboard, autoscaler) and tune extras, got {sorted(pins['ray'].extras)}"
            )
    return problems


# ---- Ray's own checks -------------------------------------------------------------------------


def test_ray_schema_accepts_the_file(config):
    schema = json.loads(RAY_SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [
        f"{'/'.join(map(str, error.path)) or '(top)'}: {error.message}" for error in validator.iter_errors(config)
    ]
    assert errors == []


def test_ray_prepares_and_validates_the_file(config):
    prepared = prepare_and_validate(config)
    # Our lists replace the AWS defaults (which would install a nightly Ray wheel), and the head
    # runs the common setup before its own.
    assert prepared["setup_commands"] == config["setup_commands"]
    assert prepared["head_setup_commands"] == config["setup_commands"] + config["head_setup_commands"]
    assert prepared["worker_setup_commands"] == config["setup_commands"]
    assert prepared["available_node_types"]["head"]["max_workers"] == 0


def test_ray_keeps_our_ami(config):
    """Ray swaps a missing ImageId or `latest_dlami` for its 2021 Ubuntu 18.04 DLAMI; ours stays."""
    pytest.importorskip("boto3")
    from ray.autoscaler._private.aws import config as aws_config

    prepared = prepare_and_validate(config)
    aws_config._check_ami(prepared)  # the offline step of Ray's AWS bootstrap
    for spec in prepared["available_node_types"].values():
        image = spec["node_config"]["ImageId"]
        assert image.startswith("resolve:ssm:/aws/service/deeplearning/ami/x86_64/")
        assert image not in aws_config.DEFAULT_AMI.values()


def test_worker_limit_is_one_number(raw, config):
    assert config["max_workers"] == config["available_node_types"]["gpu_worker"]["max_workers"] > 0
    assert raw.count("max_workers: *max_gpu_workers") == 1  # the worker's limit is an alias of the cluster's


@pytest.mark.parametrize(
    "mistake, error, message",
    [
        (lambda c: c.update(max_worker=c.pop("max_workers")), jsonschema.ValidationError, "max_worker"),
        (
            lambda c: c["available_node_types"]["gpu_worker"].update(min_worker=0),
            jsonschema.ValidationError,
            "min_worker",
        ),
        (
            lambda c: c["available_node_types"]["gpu_worker"].pop("resources"),
            jsonschema.ValidationError,
            "'resources' is a required property",
        ),
        (
            lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU=0.5),
            jsonschema.ValidationError,
            "0.5 is not of type 'integer'",
        ),
        (lambda c: c.update(head_node_type="ray.head.default"), ValueError, "`head_node_type` must be one of"),
        (
            lambda c: c["available_node_types"]["gpu_worker"].update(min_workers=9),
            ValueError,
            "smaller than the sum of `min_workers`",
        ),
    ],
    ids=[
        "misspelled-top-level-key",
        "misspelled-node-type-key",
        "worker-without-resources",
        "fractional-gpu",
        "unknown-head-type",
        "min-above-max",
    ],
)
def test_ray_rejects_a_broken_copy(config, mistake, error, message):
    broken = copy.deepcopy(config)
    mistake(broken)
    with pytest.raises(error, match=re.escape(message)):
        prepare_and_validate(broken)


# ---- what iic-search needs ----------------------------------------------------------------------


def test_invariants_hold(raw):
    assert invariant_problems(raw) == []


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("resources: {CPU: 0}", "resources: {CPU: 4}", "must advertise CPU: 0"),
        ("InstanceType: m5.xlarge", "InstanceType: g5.2xlarge", "is a GPU instance"),
        ("resources: {CPU: 4, GPU: 1}", "resources: {CPU: 4, GPU: 2}", "must declare resources"),
        ("min_workers: 0               #", "min_workers: 1               #", "gpu_worker.min_workers must be 0"),
        ("max_workers: *max_gpu_workers", "max_workers: 3", "gpu_worker.max_workers 3 != max_workers"),
        ('IIC_STORAGE_PATH="$IIC_S3/tune"', "IIC_STORAGE_PATH=s3://other-bucket/tune", "s3:// URI is written"),
        ("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0", "0.0.0.0 appears"),
        ("mlflow server --host 127.0.0.1", "mlflow server --host 10.0.0.1", "does not bind --host 127.0.0.1"),
        ('"~/iic-search": "."', '"~/iic-search": "./search"', "must sync the project root"),
        ("-e ~/iic-search", "~/iic-search", "installs ~/iic-search editable"),
        ('"mlflow==3.17.2"', '"mlflow==3.16.1"', "outside pyproject's mlflow==3.17.*"),
        ('"ray[default,tune]==2.60.0"', '"ray[tune]==2.60.0"', "default (dashboard, autoscaler)"),
    ],
)
def test_invariant_checks_catch_a_broken_copy(raw, old, new, expected):
    assert raw.count(old) == 1, f"the mutation no longer applies to cluster.yaml: {old!r}"
    problems = invariant_problems(raw.replace(old, new))
    assert any(expected in problem for problem in problems), problems


def test_ray_pin_is_the_local_ray(config):
    """`ray up` from this environment launches the same Ray version it installs on the cluster."""
    pins = {name: req for argv in install_commands(config) for name, req in requirements_of(argv)[0].items()}
    assert pinned_version(pins["ray"]) == ray.__version__


def test_torch_pins_match_ci(config):
    """The cluster trains with the torch that CI tests (and pyproject allows)."""
    pins = {name: req for argv in install_commands(config) for name, req in requirements_of(argv)[0].items()}
    ci = (ROOT / ".ci" / "run").read_text()
    project = project_requirements()
    for name in ("torch", "torchvision"):
        version = pinned_version(pins[name])
        assert f"{name}=={version}" in ci
        assert project[name].specifier.contains(version)


# ---- the environment every command, Ray process and driver gets -----------------------------------

UBUNTU_BASHRC = (
    "# ~/.bashrc: executed by bash(1) for non-login shells.\ncase $- in\n    *i*) ;;\n      *) return;;\nesac\n"
)


def run_like_ray(command: str, home: Path) -> subprocess.CompletedProcess:
    """Run a command as Ray's SSH runner does: the remote login shell gets
    `bash --login -c -i 'source ~/.bashrc; export ... && (command)'`."""
    remote = " ".join(_with_interactive(command))
    env = {"HOME": str(home), "PATH": os.environ["PATH"], "TERM": "dumb"}
    return subprocess.run(
        ["bash", "-c", remote], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60
    )


def _home_after_setup(config: dict, home: Path, node: str, times: int = 1) -> None:
    """``home`` as a ``node``'s ("head" or "worker") is once `ray up` ran its setup commands ``times``
    times: the env file written and sourced from ~/.bashrc, beside the venv's activate."""
    prepared = prepare_and_validate(config)
    setup = prepared["head_setup_commands" if node == "head" else "worker_setup_commands"]
    env_commands = [command for command in setup if ".iic-search.env" in command]
    assert env_commands, "no setup command writes ~/.iic-search.env"
    (home / "iic-venv" / "bin").mkdir(parents=True)
    (home / "iic-venv" / "bin" / "activate").write_text('export VIRTUAL_ENV="$HOME/iic-venv"\n')  # what uv venv makes
    (home / ".bashrc").write_text(UBUNTU_BASHRC)
    for _ in range(times):
        for command in env_commands:
            result = run_like_ray(command, home)
            assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("node", ["head", "worker"])
def test_setup_environment_reaches_later_commands(config, tmp_path, node):
    home = tmp_path / "home"
    _home_after_setup(config, home, node, times=2)  # `ray up` reruns setup: the result must not pile up

    probe = run_like_ray('echo "$IIC_S3|$IIC_STORAGE_PATH|$MLFLOW_TRACKING_URI|$VIRTUAL_ENV"', home)
    assert probe.returncode == 0, probe.stderr
    s3, storage, tracking, venv = probe.stdout.strip().split("|")
    assert s3.startswith("s3://") and PLACEHOLDER in s3
    assert storage == f"{s3}/tune"
    assert tracking == ("http://127.0.0.1:5000" if node == "head" else "")  # the server runs on the head only
    assert venv == str(home / "iic-venv")
    assert (home / ".bashrc").read_text().count(".iic-search.env") == 1


def test_gpu_workers_start_cuda_mps_by_default_and_still_join_without_it(config, tmp_path):
    [mps_command] = [
        c for c in prepare_and_validate(config)["worker_start_ray_commands"] if "nvidia-cuda-mps-control" in c
    ]
    home = tmp_path / "home"
    _home_after_setup(config, home, "worker")
    # NVIDIA's control program, as far as this command uses it: `-d` starts the daemon, stdin `quit` stops it.
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "nvidia-cuda-mps-control").write_text(f'#!/bin/sh\necho "${{1:-$(cat)}}" >> {tmp_path}/mps_calls\n')
    (tools / "nvidia-cuda-mps-control").chmod(0o755)

    on_path = f"export PATH={tools}:$PATH; "  # after the login shell's profile has set PATH
    started = run_like_ray(on_path + mps_command, home)
    assert started.returncode == 0, started.stderr
    assert (tmp_path / "mps_calls").read_text().split() == [
        "quit",
        "-d",
    ]  # an earlier daemon told to quit, then one started

    (tools / "nvidia-cuda-mps-control").write_text("#!/bin/sh\nexit 1\n")  # an image whose driver has no MPS
    failed = run_like_ray(on_path + mps_command, home)
    assert failed.returncode == 0 and "CUDA MPS did not start" in failed.stderr


# ---- what is copied --------------------------------------------------------------------------------


def rsync(config: dict, source: str, target: str) -> None:
    """rsync as Ray's SSH runner runs it, minus ssh: `rsync -avz <Ray's filter args> SOURCE TARGET`."""
    options = {"rsync_exclude": config.get("rsync_exclude"), "rsync_filter": config.get("rsync_filter")}
    filters = SSHCommandRunner._create_rsync_filter_args(None, options)
    subprocess.run(["rsync", "-az", *filters, source, target], check=True, capture_output=True, timeout=60)


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_rsync_copies_the_code_and_data_but_not_results(config, tmp_path):
    tree = tmp_path / "project"
    files = [
        "search/run.py",
        "pyproject.toml",
        "data/cifar10/data_batch_1",
        "runs/search/trial/checkpoint.pt",
        "mlflow.db",
        "mlruns/0/meta.yaml",
        "mlartifacts/1/a.png",
        ".git/config",
        "dist/iic_search-0.1.0-py3-none-any.whl",
        "search/__pycache__/run.cpython-311.pyc",
        "iic_search.egg-info/PKG-INFO",
    ]
    for name in files:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(name)
    shutil.copy(ROOT / ".gitignore", tree / ".gitignore")
    # Ray syncs a directory mount as "local/" -> "remote/" (updater.sync_file_mounts).
    rsync(config, f"{tree}/", f"{tmp_path / 'head'}/")
    copied = {str(p.relative_to(tmp_path / "head")) for p in (tmp_path / "head").rglob("*") if p.is_file()}
    assert copied == {"search/run.py", "pyproject.toml", "data/cifar10/data_batch_1", ".gitignore"}


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_rsync_down_brings_the_heads_mlflow_database(config, tmp_path):
    """docs/cluster.md: `ray rsync-down cluster.yaml /home/ubuntu/mlflow .` (the same filters apply)."""
    remote = tmp_path / "home" / "ubuntu" / "mlflow"
    remote.mkdir(parents=True)
    (remote / "mlflow.db").write_text("runs")
    (remote / "server.log").write_text("log")
    local = tmp_path / "laptop"
    local.mkdir()
    rsync(config, str(remote), f"{local}/")
    assert (local / "mlflow" / "mlflow.db").read_text() == "runs"

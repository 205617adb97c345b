"""Random faults against real searches: does MLflow end up holding exactly what Tune recorded?

    python -m benchmarks.chaos --searches 30                 # fault seeds 0-29
    python -m benchmarks.chaos --replay 7 12                 # exactly those searches again

Each search is tiny (digits, 2 trials of 2 epochs, one confirmed) and runs through the commands a
user runs: ``search/run.py`` against a real ``mlflow server`` (one for all the searches, as a user's
server is; each search in an experiment of its own), on the local Ray the driver starts.
Its fault seed draws one to three faults, each at a moment counted in results Tune has recorded
(plus a drawn fraction of a second): SIGKILL of the driver with its Ray (then ``--resume``, once the
server answers), of a trial's worker (Tune retries it), or of the MLflow server (restarted after a
drawn delay). When the driver's output asks for ``search/reconcile.py``, that runs too. Then every
stage's Tune records are held against MLflow: runs left open, runs whose status differs from Tune's
(a run of a trial Tune never recorded must be closed as lost), epochs stored twice, epochs Tune
recorded that MLflow lacks, the parent run not closed, the confirmation not done exactly once.
"""

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from mlflow.tracking import MlflowClient
from ray import tune

from benchmarks.common import command, table
from iic.status import RunStatus
from search.tracking.reconcile import restored_trials, tune_results
from search.tracking.runs import (
    CONFIRM_ROLE,
    SEARCH_ROLE,
    STAGE_SUFFIXES,
    STATUS_TAG,
    TRIAL_ROLE,
    TRIAL_TAG,
    ended_status,
    result_epoch,
    role_filter,
    wait_for_server,
)

ROOT = Path(__file__).resolve().parents[1]
FAULTS = ("driver", "worker", "mlflow")
NAME = "chaos"
SEARCH = ["--num-samples", "2", "--max-concurrent", "1", "--epochs", "2", "--seeds-per-trial", "1"]
SEARCH += ["--confirm-top", "1", "--confirm-seeds", "1", "--name", NAME]
SEARCH += [f"--set={s}" for s in ("max_samples=150", "backbone_width=4", "screen_inits=1")]
RESULTS_PER_SEARCH = 6  # 2 trials x 2 epochs, then the confirmation's 2 epochs
# The early-stopped statuses the logger tells apart from Tune's record by the search's time budget.
STOPPED = {RunStatus.EARLY_STOPPED, RunStatus.STOPPED_BY_BUDGET, RunStatus.STOPPED}


class Server:
    """``mlflow server`` with a SQLite store and proxied artifacts, restartable on its port."""

    def __init__(self, folder: Path):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.uri, self.folder, self.process = f"http://127.0.0.1:{self.port}", folder, None

    def start(self) -> None:
        store = ["--backend-store-uri", f"sqlite:///{self.folder}/server.db"]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", *store, "--artifacts-destination", str(self.folder / "art")]
            + ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # tracking only: starts in seconds
        )
        if not wait_for_server(self.uri, every=0.5):
            raise RuntimeError(f"mlflow server {self.uri} did not start")

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)  # the server and its workers
        self.process.wait()


def draw_faults(seed: int) -> list[tuple[int, float, str, float]]:
    """One to three faults, in order: (results recorded before it, extra seconds, kind, seconds the
    MLflow server stays down if it is the one killed)."""
    rng = random.Random(seed)
    return sorted(
        (rng.randrange(RESULTS_PER_SEARCH), rng.random(), rng.choice(FAULTS), rng.uniform(1, 8))
        for _ in range(rng.randint(1, 3))
    )


def recorded_results(storage: Path) -> int:
    return sum(len(path.read_text().splitlines()) for path in storage.glob(f"{NAME}*/*/result.json"))


def trial_workers(driver: subprocess.Popen) -> list[int]:
    """Processes that run a trial, started by the driver's Ray (a raylet of its process group;
    Ray's workers have process groups of their own)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::ImplicitFunc"):
                parent = int((proc / "stat").read_text().rpartition(")")[2].split()[1])
                if os.getpgid(parent) == driver.pid:
                    pids.append(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def run_search(folder: Path, server: Server, seed: int) -> tuple[list[str], str, int]:
    """The search with its faults, resumed and reconciled as the docs say: the faults injected, the
    drivers' output and the last one's exit status."""
    storage, injected, output = folder / "ray", [], ""
    pending = draw_faults(seed)
    env = {**os.environ, "IIC_STATE_DIR": str(folder / "state"), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    base = [sys.executable, str(ROOT / "search" / "run.py"), "--tracking-uri", server.uri]
    base += ["--storage-path", str(storage), "--experiment", experiment_name(seed), *SEARCH]
    resume, restart_at, starts = False, None, 0
    while True:
        starts += 1
        log = folder / f"driver{starts}.log"
        driver = subprocess.Popen(
            base + ["--resume"] * resume, env=env, cwd=folder, stdout=log.open("w"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        killed = False
        while driver.poll() is None and not killed:
            time.sleep(0.2)
            if restart_at is not None and time.time() >= restart_at:
                server.start()
                restart_at = None
            if not pending or recorded_results(storage) < pending[0][0]:
                continue
            _, extra, kind, down = pending[0]
            if (kind == "worker" and not trial_workers(driver)) or (kind == "mlflow" and restart_at is not None):
                continue  # nothing of that kind to kill yet: the fault waits for one
            pending.pop(0)
            time.sleep(extra)
            if kind == "driver" and driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
                killed = True
            elif kind == "worker" and trial_workers(driver):
                os.kill(trial_workers(driver)[0], signal.SIGKILL)
            elif kind == "mlflow":
                server.kill()
                restart_at = time.time() + down
            else:
                continue  # gone in the meantime
            injected.append(kind)
        driver.wait()
        output += log.read_text()
        if restart_at is not None:  # a user starts the server again before going on
            time.sleep(max(0.0, restart_at - time.time()))
            server.start()
            restart_at = None
        said = log.read_text()
        if killed or "the MLflow server does not answer" in said:  # refused at start: the server is back now
            resume = resume or killed
            continue
        if resume and "run without --resume" in said:  # killed before Tune saved anything: start it again
            resume = False
            continue
        break
    if "search/reconcile.py" in output:
        reconcile = [sys.executable, str(ROOT / "search" / "reconcile.py"), "--name", NAME]
        reconcile += ["--tracking-uri", server.uri, "--storage-path", str(storage)]
        output += subprocess.run(reconcile, env=env, cwd=folder, capture_output=True, text=True).stdout
    return injected, output, driver.returncode


def experiment_name(seed: int) -> str:
    """The MLflow experiment of the search of fault seed ``seed``."""
    return f"{NAME}-{seed}"


def check(client: MlflowClient, storage: Path, seed: int) -> Counter:
    """What MLflow lacks or holds wrongly against Tune's records of the search."""
    found = Counter()
    experiment = client.get_experiment_by_name(experiment_name(seed))
    if experiment is None:
        return Counter({"open": 1})  # nothing recorded at all
    experiment = experiment.experiment_id
    for role in (TRIAL_ROLE, CONFIRM_ROLE):
        runs = client.search_runs([experiment], role_filter(role), max_results=1000)
        stage = str(storage / (NAME + STAGE_SUFFIXES[role]))
        trials = restored_trials(stage) if tune.Tuner.can_restore(stage) else []
        results = tune_results(stage, trials)
        known = {trial.trial_id: trial for trial in trials}
        found["runs"] += len(runs)
        by_trial = Counter(run.data.tags.get(TRIAL_TAG) for run in runs)
        found["wrong status"] += sum(count - 1 for count in by_trial.values())  # two runs of one trial
        found["wrong status"] += sum(1 for trial_id in known if trial_id not in by_trial and results.get(trial_id))
        if role == CONFIRM_ROLE:
            found["confirmed twice"] += max(0, sum(run.info.status == "FINISHED" for run in runs) - 1, len(known) - 1)
        for run in runs:
            trial = known.get(run.data.tags.get(TRIAL_TAG))
            found["open"] += run.info.status == "RUNNING"
            expected = ended_status(trial) if trial else (RunStatus.LOST_WITH_DRIVER, "KILLED")
            status = run.data.tags.get(STATUS_TAG)
            same = expected is not None and (status == expected[0] or {status, expected[0]} <= STOPPED)
            found["wrong status"] += run.info.status != "RUNNING" and not (same and run.info.status == expected[1])
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch")]
            found["duplicated"] += len(steps) - len(set(steps))
            tune_epochs = {result_epoch(r) for r in results.get(trial.trial_id, [])} if trial else set()
            found["missing"] += len(tune_epochs - set(steps))
    parents = client.search_runs([experiment], role_filter(SEARCH_ROLE))
    found["open"] += sum(run.info.status != "FINISHED" for run in parents)
    return found


COLUMNS = ["runs", "open", "wrong status", "duplicated", "missing", "confirmed twice", "driver failed"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--searches", type=int, default=10, help="searches, on fault seeds FIRST.. (default 10)")
    parser.add_argument("--first-seed", type=int, default=0, help="fault seed of the first search (default 0)")
    parser.add_argument("--replay", type=int, nargs="+", metavar="SEED", help="run exactly these fault seeds")
    parser.add_argument(
        "--out", help="keep the searches' folders and MLflow store here (default: a temporary folder, kept on failure)"
    )
    args = parser.parse_args(argv)
    seeds = args.replay or list(range(args.first_seed, args.first_seed + args.searches))
    out = Path(args.out or tempfile.mkdtemp(prefix="iic-chaos-"))
    rows, failing, totals, started = [], [], Counter(), time.time()
    (out / "mlflow").mkdir(parents=True, exist_ok=True)
    server = Server(out / "mlflow")
    server.start()
    try:
        for seed in seeds:
            folder = out / f"seed{seed}"
            folder.mkdir(parents=True)
            began = time.time()
            injected, output, returncode = run_search(folder, server, seed)
            found = check(MlflowClient(server.uri), folder / "ray", seed)
            report(rows, failing, totals, seed, injected, found, returncode, time.time() - began)
            if seed not in failing and not args.out:
                shutil.rmtree(folder)
    finally:
        server.kill()
    if not failing and not args.out:
        shutil.rmtree(out)
    print("\n" + table(["seed", "faults", "kinds", *COLUMNS, "s"], rows))
    print(
        f"{len(seeds)} searches, {totals['faults']} faults in {time.time() - started:.0f} s; "
        + ", ".join(f"{key} {totals[key]}" for key in COLUMNS[1:])
    )
    if failing:
        replay = " ".join(map(str, failing))
        print(f"failing fault seeds (folders in {out}); replay: python -m benchmarks.chaos --replay {replay}")
    print("command: " + command("chaos", argv))
    return 1 if failing else 0


def report(rows, failing, totals, seed, injected, found, returncode, seconds) -> None:
    """Add the search's row and counts, and print its line."""
    found["driver failed"] += returncode != 0
    if sum(found[key] for key in COLUMNS[1:]):
        failing.append(seed)
    totals.update({**found, "faults": len(injected)})
    kinds = ",".join(sorted(injected)) or "-"
    rows.append([seed, len(injected), kinds, *(found[key] for key in COLUMNS), f"{seconds:.0f}"])
    print(f"search {seed}: {len(injected)} fault(s) {kinds}; " + ", ".join(f"{k} {found[k]}" for k in COLUMNS))


if __name__ == "__main__":
    sys.exit(main())

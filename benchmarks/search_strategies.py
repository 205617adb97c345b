"""Which search strategy finds better IIC settings for the same compute (random, TPE, TPE + ASHA, PBT),
replayed on a table of recorded learning curves (``benchmarks.record_curves``).

    python -m benchmarks.search_strategies                                # the bundled digits_wide table
    python -m benchmarks.search_strategies --budgets 100 200 400 800 --searches 100
    python -m benchmarks.search_strategies --preset digits_schedules      # only what PBT changes varies

Random and TPE are Optuna's samplers, ASHA its ``SuccessiveHalvingPruner``; PBT exploits and explores
as ``search/run.py --scheduler pbt`` does. A proposed point takes the curves of the nearest recorded
config, so a search can only find what the table holds; an explored PBT member continues on the curves
of the nearest config with its non-schedulable values. A search sees the table's search seeds and is
reported on its confirmation seeds, which it never sees; budgets are trial-epochs.
"""

import argparse
import math
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna

from benchmarks.common import command, spread
from benchmarks.common import table as text_table
from benchmarks.record_curves import DEFAULT_PRESET, default_table_path, read_table
from iic.config import IICConfig
from iic.status import RunStatus
from search.params import Param, assign, parse_space
from search.preset import PBTSettings
from search.ranking import best_first
from search.space import suggest

STRATEGIES = ("random", "tpe", "tpe+asha", "pbt")
DEFAULT_BUDGETS = (100, 200, 400, 800)
PERTURBATION_FACTORS = (0.8, 1.2)  # Ray Tune's PopulationBasedTraining default
MEANS = (("searched", 3), ("trials", 1), ("distinct", 1), ("exploits", 1), ("moves", 1))  # shown as means


@dataclass
class Table:
    """A table of recorded curves, read for replay. Per config: its searched ``values``, its
    ``coordinates`` in the normalised space (NaN where a gate leaves a field out), its mean accuracy
    over the search seeds per recorded epoch, whether its loss turned NaN after them, and its mean
    accuracy at the last epoch over the confirmation seeds (NaN unless completed)."""

    path: Path
    params: list[Param]
    epochs: int
    values: list[dict]
    coordinates: np.ndarray  # (configs, params)
    search_curves: list[np.ndarray]
    diverged: np.ndarray
    confirmed: np.ndarray
    provenance: list[dict]  # the table's run records

    def nearest(self, values: dict, among: np.ndarray | None = None) -> int:
        """The recorded config nearest to a proposed point (the first of equally near ones), of
        all or of those ``among`` marks."""
        point = position(self.params, values)
        difference = self.coordinates - point
        numeric = np.array([p.kind in ("float", "int") for p in self.params])
        per_field = np.where(numeric, difference**2, (difference != 0).astype(float))
        absent_here, absent_there = np.isnan(point), np.isnan(self.coordinates)
        per_field = np.where(absent_here & absent_there, 0.0, np.where(absent_here | absent_there, 1.0, per_field))
        distance = per_field.sum(axis=1)
        return int(np.argmin(np.where(among, distance, np.inf) if among is not None else distance))

    def same_fixed_values(self, config: int) -> np.ndarray:
        """Which recorded configs share ``config``'s values of the fields PBT does not change."""
        fixed = [p.name for p in self.params if p.name not in IICConfig.SCHEDULABLE_FIELDS]
        return np.array([all(v.get(name) == self.values[config].get(name) for name in fixed) for v in self.values])


def position(params: list[Param], values: dict) -> np.ndarray:
    """A point's coordinates: ranges scaled to [0, 1] (log ranges in log), a choice by its position
    in the list, NaN for a field its gate leaves out."""
    coordinates = []
    for param in params:
        value = values.get(param.name)
        if value is None:
            coordinates.append(math.nan)
        elif param.kind in ("float", "int"):
            scale = np.log if param.log else float
            coordinates.append((scale(value) - scale(param.low)) / (scale(param.high) - scale(param.low)))
        else:
            coordinates.append(float(param.options.index(value)))
    return np.array(coordinates)


def load_table(path: str | Path, search_seeds: list[int], confirm_seeds: list[int]) -> Table:
    definition, runs, records = read_table(path)
    if definition is None:
        raise ValueError(f"{path}: no table there (record one with benchmarks/record_curves.py)")
    if set(search_seeds) & set(confirm_seeds):  # a config would be reported on the seeds it was chosen on
        raise ValueError(f"search seeds {search_seeds} and confirmation seeds {confirm_seeds} overlap")
    missing = sorted((set(search_seeds) | set(confirm_seeds)) - set(definition["seeds"]))
    if missing:
        raise ValueError(f"{path}: seeds {missing} are not in the table (it holds {definition['seeds']})")
    records = sorted(records, key=lambda r: r["index"])
    if not records:
        raise ValueError(f"{path}: the table holds no config yet")
    epochs = definition["epochs"]

    def completed(record: dict) -> bool:
        return record["status"] == RunStatus.COMPLETED and len(record["epoch_seconds"]) == epochs

    def mean_over(seeds: list[int], record: dict) -> np.ndarray:
        rows = [record["curves"]["cluster_accuracy"][definition["seeds"].index(seed)] for seed in seeds]
        curves = np.array(rows, dtype=float)  # a NaN was stored as None
        return curves.mean(axis=0) if curves.size else np.zeros(0)

    params = parse_space(definition["space"])
    return Table(
        path=Path(path),
        params=params,
        epochs=epochs,
        values=[r["values"] for r in records],
        coordinates=np.array([position(params, r["values"]) for r in records]),
        search_curves=[mean_over(search_seeds, r) for r in records],
        diverged=np.array([r["status"] == RunStatus.DIVERGED for r in records]),
        confirmed=np.array([mean_over(confirm_seeds, r)[-1] if completed(r) else math.nan for r in records]),
        provenance=runs,
    )


@dataclass
class Trial:
    """One replayed trial: which recorded config it trained, from which trial-epoch on, how long."""

    config: int
    start: int  # trial-epochs the search had spent before it
    epochs: int  # epochs it trained (a diverged trial's last one has no value)
    status: RunStatus


def run_search(
    table: Table, strategy: str, seed: int, budget: int, grace_period: int, reduction_factor: int
) -> list[Trial]:
    """One search of ``strategy`` with sampler seed ``seed``, one trial at a time, until ``budget``
    trial-epochs are spent."""
    sampler = (optuna.samplers.RandomSampler if strategy == "random" else optuna.samplers.TPESampler)(seed=seed)
    asha = optuna.pruners.SuccessiveHalvingPruner(min_resource=grace_period, reduction_factor=reduction_factor)
    pruner = asha if strategy == "tpe+asha" else optuna.pruners.NopPruner()  # create_study's default prunes
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    trials, spent = [], 0
    while spent < budget:
        trial = study.ask()
        chosen, _ = assign(table.params, lambda param, trial=trial: suggest(param, trial))
        config = table.nearest(chosen)
        curve = table.search_curves[config]
        record = Trial(config, spent, 0, RunStatus.COMPLETED)
        trials.append(record)
        for epoch, value in enumerate(curve, start=1):
            spent += 1
            record.epochs = epoch
            trial.report(float(value), epoch)
            if spent >= budget and epoch < table.epochs:
                record.status = RunStatus.STOPPED_BY_BUDGET
                break
            if epoch < table.epochs and trial.should_prune():
                record.status = RunStatus.EARLY_STOPPED
                break
        else:
            if table.diverged[config] and spent < budget:  # the epoch it diverged in costs, and gives nothing
                spent += 1
                record.epochs += 1
                record.status = RunStatus.DIVERGED
        if record.status == RunStatus.COMPLETED:
            study.tell(trial, float(curve[-1]))
        elif record.status == RunStatus.EARLY_STOPPED:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:  # diverged, or cut by the budget (the search ends there)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return trials


@dataclass
class Member:
    """One PBT member on the table: its current values (as PBT holds them) and the recorded config
    whose curves it follows from which epoch on."""

    values: dict
    path: list[tuple[int, int]]  # (first epoch, recorded config), in order
    status: RunStatus = RunStatus.RUNNING

    @property
    def config(self) -> int:
        return self.path[-1][1]


@dataclass
class PBTRun:
    """A replayed PBT search: its members at the end, and what its exploits did."""

    members: list[Member]
    spent: int
    exploits: int = 0
    moves: int = 0  # explores that moved to another recorded config


def explore(params: list[Param], values: dict, settings: PBTSettings, rng: np.random.Generator) -> dict:
    """PBT's explore of the schedulable fields: each drawn afresh from its range with the resample
    probability, else scaled by 0.8 or 1.2 and kept inside its range."""
    explored = dict(values)
    for param in params:
        if param.name not in IICConfig.SCHEDULABLE_FIELDS or param.kind != "float" or param.name not in values:
            continue
        if rng.random() < settings.resample_probability:
            low, high = (math.log(param.low), math.log(param.high)) if param.log else (param.low, param.high)
            drawn = rng.uniform(low, high)
            explored[param.name] = math.exp(drawn) if param.log else drawn
        else:
            explored[param.name] = min(
                max(values[param.name] * rng.choice(PERTURBATION_FACTORS), param.low), param.high
            )
    return explored


def initial_population(table: Table, size: int, seed: int) -> list[Member]:
    """``size`` points drawn at random from the space, each on its nearest recorded config."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    members = []
    for _ in range(size):
        trial = study.ask()
        values, _ = assign(table.params, lambda param, trial=trial: suggest(param, trial))
        members.append(Member(values, [(1, table.nearest(values))]))
    return members


def exploit(
    table: Table, members: list[Member], epoch: int, settings: PBTSettings, rng: np.random.Generator, run: PBTRun
) -> None:
    """The bottom quantile of the running members (by the search seeds' value at ``epoch``) takes
    over a random top-quantile member and explores from it."""
    running = [m for m in members if m.status == RunStatus.RUNNING]
    ranked = sorted(running, key=lambda m: -value_at(table, m.config, epoch))
    count = min(math.ceil(len(ranked) * settings.quantile_fraction), len(ranked) // 2)  # as Ray's PBT
    if count == 0:
        return
    for member in ranked[-count:]:
        donor = ranked[int(rng.integers(count))]
        member.values = explore(table.params, donor.values, settings, rng)
        config = table.nearest(member.values, among=table.same_fixed_values(donor.config))
        member.path.append((epoch + 1, config))
        run.exploits += 1
        run.moves += config != donor.config


def run_pbt(table: Table, seed: int, budget: int, settings: PBTSettings) -> PBTRun | None:
    """One synchronous PBT search with ``budget // epochs`` members (None below two)."""
    size = budget // table.epochs
    if size < 2:
        return None
    rng = np.random.default_rng(seed)
    members = initial_population(table, size, seed)
    run = PBTRun(members, 0)
    for epoch in range(1, table.epochs + 1):
        for member in (m for m in members if m.status == RunStatus.RUNNING):
            run.spent += 1  # the epoch a member diverges in costs too
            if epoch > len(table.search_curves[member.config]):
                member.status = RunStatus.DIVERGED
        if epoch % settings.perturbation_interval == 0 and epoch < table.epochs:
            exploit(table, members, epoch, settings, rng, run)
    for member in members:
        member.status = RunStatus.COMPLETED if member.status == RunStatus.RUNNING else member.status
    return run


def value_at(table: Table, config: int, epoch: int) -> float:
    curve = table.search_curves[config]
    return float(curve[epoch - 1]) if 1 <= epoch <= len(curve) else math.nan


def chosen_at(table: Table, trials: list[Trial], budget: int) -> tuple[int, float, int] | None:
    """What the search would end with at ``budget`` trial-epochs: (the config it chooses, its value
    on the search seeds, trials started), or None if no trial counts yet."""
    seen = []
    for trial in trials:
        if trial.start >= budget:
            break
        epochs = min(trial.epochs, budget - trial.start)
        status = trial.status if epochs == trial.epochs else RunStatus.STOPPED_BY_BUDGET
        seen.append((trial.config, value_at(table, trial.config, epochs), status))
    chosen = best(seen)
    return (*chosen, len(seen)) if chosen else None


def pbt_chosen(table: Table, run: PBTRun) -> tuple[int, float] | None:
    """The config a PBT search ends with (its best member at the last epoch) and its value on the search seeds."""
    return best([(m.config, value_at(table, m.config, table.epochs), m.status) for m in run.members])


def best(seen: list[tuple[int, float, str]]) -> tuple[int, float] | None:
    """The (config, value) a search ends with among its (config, value, status), as search/ranking.py ranks."""
    ranked = best_first(seen, value=lambda t: t[1], status=lambda t: t[2], mode="max")
    return ranked[0][:2] if ranked else None


def note(table: Table, result: dict, chosen: tuple | None, figures: dict) -> None:
    """One search's figures, and its choice's value on the search seeds and on the confirmation seeds."""
    for key, value in figures.items():
        result[key].append(value)
    result["confirmed"].append(table.confirmed[chosen[0]] if chosen else math.nan)
    result["searched"].append(chosen[1] if chosen else math.nan)


def compare(
    table: Table,
    strategies: list[str],
    budgets: list[int],
    searches: int,
    grace_period: int,
    reduction_factor: int,
    pbt: PBTSettings | None = None,
) -> dict:
    """{(strategy, budget): {figure: [one per search]}}: "confirmed", "searched", "trials", "distinct" (and
    PBT's "exploits" and "moves"). A PBT search's population depends on the budget: one search per budget."""
    results = defaultdict(lambda: defaultdict(list))
    for strategy, seed in ((strategy, seed) for strategy in strategies for seed in range(searches)):
        if strategy == "pbt":
            for budget in budgets:
                run = run_pbt(table, seed, budget, pbt or PBTSettings())
                members = run.members if run else []
                figures = {"trials": len(members), "distinct": len({c for m in members for _, c in m.path})}
                figures.update(exploits=run.exploits if run else 0, moves=run.moves if run else 0)
                note(table, results[(strategy, budget)], pbt_chosen(table, run) if run else None, figures)
            continue
        trials = run_search(table, strategy, seed, max(budgets), grace_period, reduction_factor)
        for budget in budgets:
            started = [t for t in trials if t.start < budget]
            figures = {"trials": len(started), "distinct": len({t.config for t in started})}
            note(table, results[(strategy, budget)], chosen_at(table, trials, budget), figures)
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add, pbt = parser.add_argument, PBTSettings()
    add("--table", help="table of curves (default benchmarks/data/curves_PRESET.jsonl, or .jsonl.gz)")
    add("--preset", default=DEFAULT_PRESET, help=f"whose bundled table, when no --table (default {DEFAULT_PRESET})")
    add("--budgets", type=int, nargs="+", default=list(DEFAULT_BUDGETS), help="trial-epochs per search")
    add("--searches", type=int, default=100, help="searches per strategy and budget (sampler seeds 0..N-1)")
    add("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    add("--search-seeds", type=int, nargs="+", default=[0, 1, 2], help="table seeds a search sees")
    add("--confirm-seeds", type=int, nargs="+", default=[3, 4], help="table seeds the choice is reported on")
    add("--grace-period", type=int, help="ASHA's first rung, in epochs (default: a quarter of the table's epochs)")
    add("--reduction-factor", type=int, default=3)
    add("--perturbation-interval", type=int, default=pbt.perturbation_interval, help="PBT: epochs between exploits")
    add("--quantile-fraction", type=float, default=pbt.quantile_fraction, help="PBT: the share replaced")
    add("--resample-probability", type=float, default=pbt.resample_probability, help="PBT: chance of a fresh draw")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    path = Path(args.table) if args.table else default_table_path(args.preset)
    if not args.table and not path.exists():
        path = path.with_suffix(".jsonl.gz")
    try:
        recorded = load_table(path, args.search_seeds, args.confirm_seeds)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    grace_period = args.grace_period or max(1, recorded.epochs // 4)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    knobs = ("perturbation_interval", "quantile_fraction", "resample_probability")
    pbt = PBTSettings(**{knob: getattr(args, knob) for knob in knobs})
    budgets, first = sorted(args.budgets), args.strategies[0]
    results = compare(recorded, args.strategies, budgets, args.searches, grace_period, args.reduction_factor, pbt)

    last = recorded.epochs
    completed = [c for c in range(len(recorded.values)) if math.isfinite(recorded.confirmed[c])]
    exhaustive = max(completed, key=lambda c: value_at(recorded, c, last))
    devices = ", ".join(sorted({run["device"] for run in recorded.provenance}))
    print(f"table {recorded.path}: {len(recorded.values)} configs x {last} epochs, recorded on {devices}")
    print(f"a search sees table seeds {args.search_seeds}; it is reported on seeds {args.confirm_seeds}")
    print(f"each point takes the curves of the nearest recorded config; {args.searches} searches a strategy and budget")
    print(f"ASHA (Optuna SuccessiveHalvingPruner): first rung {grace_period} epochs, factor {args.reduction_factor}")
    settings = ", ".join(f"{knob} {getattr(pbt, knob):g}" for knob in knobs)
    print(f"PBT: synchronous, population = budget / {last} epochs, {settings}; explores stitch curves")
    print(
        f"oracle (the table's best config on the confirmation seeds): {np.nanmax(recorded.confirmed):.3f}; "
        f"exhaustive (every config to the end, chosen on the search seeds): {recorded.confirmed[exhaustive]:.3f} "
        f"confirmed ({value_at(recorded, exhaustive, last):.3f} on the search seeds)"
    )
    print(f"\nbest confirmed accuracy: mean over seeds {args.confirm_seeds} at epoch {last} of each choice")
    rows = []
    for budget in budgets:
        baseline = spread(results[(first, budget)]["confirmed"])
        for strategy in args.strategies:
            result = results[(strategy, budget)]
            confirmed = spread(result["confirmed"])
            gain, error = confirmed["mean"] - baseline["mean"], math.hypot(confirmed["se"], baseline["se"])
            rows.append([budget, strategy, *(f"{confirmed[key]:.3f}" for key in ("mean", "sd", "min", "se"))])
            rows[-1].append(f"{gain:+.3f} ± {error:.3f}" if strategy != first else "")
            rows[-1] += [f"{np.mean(result[key]):.{digits}f}" if result[key] else "" for key, digits in MEANS]
    header = ["budget", "strategy", "mean", "sd", "min", "se", f"vs {first}", "searched", "trials", "distinct"]
    print(text_table([*header, "exploits", "moves"], rows))
    print(
        f"('vs {first}': difference of means ± its standard error; 'searched': the chosen config's value on the "
        "search seeds, which flatters it; then means: trials started (PBT: its population, 0 under two members), "
        "distinct configs met, and PBT's exploits and those that explored to another recorded config)"
    )
    print(f"\n{time.perf_counter() - started:.1f} s")
    print("command: " + command("search_strategies", argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

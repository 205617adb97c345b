"""Which search strategy finds better IIC settings for the same compute: random search, TPE,
TPE + ASHA or population-based training, replayed against a table of recorded learning curves
(``record_curves.py``).

    python benchmarks/search_strategies.py                                   # the bundled digits_wide table
    python benchmarks/search_strategies.py --budgets 100 200 400 800 --searches 100
    python benchmarks/search_strategies.py --preset digits_schedules   # only what PBT changes varies: its explore moves

Strategies: Optuna's ``RandomSampler``; ``TPESampler`` (Optuna's defaults: 10 random start-up
trials, multivariate); ``TPESampler`` with Optuna's ``SuccessiveHalvingPruner`` (asynchronous
successive halving, i.e. ASHA: first rung at ``--grace-period`` epochs, ``--reduction-factor``).
Random and TPE train every trial to the table's last epoch. PBT as ``search/run.py --scheduler pbt``
runs it (synchronous; ``search.space.PBTSettings``' interval, quantile and resample probability):
a population of ``budget / epochs`` members drawn at random, all trained to the last epoch; every
``interval`` epochs the bottom quantile takes over a random top-quantile member's checkpoint and
explores: each schedulable field (augmentation strengths, lr, lamb) drawn afresh with the resample
probability, else scaled by 0.8 or 1.2 (kept in its range); the others (batch size, repeats, heads,
Sobel, width) are the checkpoint's and stay.

Approximation, nearest recorded config: the samplers propose points of the table's own space (the
preset's ranges and choices, as in a real search), and each point takes the learning curves of the
nearest recorded config (ranges scaled to [0, 1], log ranges in log, a different choice counting
1). The objective a search sees is thus piecewise constant, one plateau per recorded config: a
search moves through the real space but can only find what the table holds, and a config met twice
gives the same curves twice (no fresh seed noise). This favours exploring over refining: where a
real TPE's proposals near its best point would try new configs, here they land on the same
plateau, and the sparser the table, the more so (the output counts the distinct configs met).

PBT's approximation, stitched curves: a member that explores at epoch e continues from epoch e + 1
on the curves of the recorded config nearest its new values among those with the same
non-schedulable values, as if that config had trained from the start; where no other recorded
config shares them it keeps the one it took over. So a sparse table measures PBT's exploit (good
members copied into bad ones' places) more than its explore: the output counts the explores that
moved to another recorded config.

Seeds: a search sees only the per-epoch accuracy averaged over the SEARCH seeds of the table
(default 0-2). It chooses the trial with the highest value at its last epoch among the trials that
count (``search/ranking.py``: a diverged trial never does), and is reported by that config's mean
accuracy at the table's last epoch on the CONFIRMATION seeds (default 3-4), which no search sees:
the best confirmed accuracy. For scale: the oracle (the table's best config on the confirmation
seeds: flattered, no search can know it) and the exhaustive search (every config to its last
epoch, chosen on the search seeds, confirmed).

Budgets are trial-epochs: every epoch a trial trains costs one, whoever trains it. A trial that is
running when the budget runs out stops there and counts with its value at that epoch (as a trial
stopped by search/run.py's time budget does); a diverged trial costs the epoch it diverged in and
is told to Optuna as failed. Trials run one at a time, so a search's first B trial-epochs do not
depend on a larger budget: each search runs once to the largest budget and is read at every
budget. Each strategy runs ``--searches`` searches (sampler seeds 0, 1, ...) and the table gives,
per budget and strategy, the mean, sd, min and standard error of the best confirmed accuracy.
"""

import argparse
import math
import shlex
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna

from benchmarks.record_curves import DEFAULT_PRESET, default_table_path, read_table
from iic.config import IICConfig
from iic.status import RunStatus
from search.preset_file import Param, assign, parse_space
from search.ranking import best_first
from search.space import PBTSettings, suggest

STRATEGIES = ("random", "tpe", "tpe+asha", "pbt")
DEFAULT_BUDGETS = (100, 200, 400, 800)
APPROXIMATION = "each proposed point takes the curves of the nearest recorded config (normalised space; a different choice counts 1)"
PBT_APPROXIMATION = (
    "a PBT member that explores at epoch e continues on the curves of the recorded config nearest its new values "
    "among those with its non-schedulable values, from epoch e + 1 (stitched), else keeps its donor's"
)
PERTURBATION_FACTORS = (0.8, 1.2)  # Ray Tune's PopulationBasedTraining default


@dataclass
class Table:
    """A table of recorded curves, read for replay: what a search sees and what it is reported on."""

    path: Path
    params: list[Param]
    epochs: int
    values: list[dict]  # each config's searched values
    coordinates: (
        np.ndarray
    )  # (configs, params): each config's position in the normalised space, NaN where a gate leaves a field out
    search_curves: list[np.ndarray]  # per config: mean accuracy over the search seeds per recorded epoch
    diverged: np.ndarray  # (configs,) bool: the config's loss turned NaN after its recorded epochs
    confirmed: (
        np.ndarray
    )  # (configs,) mean accuracy at the last epoch over the confirmation seeds; NaN unless completed
    search_seeds: list[int]
    confirm_seeds: list[int]
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
    if set(search_seeds) & set(confirm_seeds):
        raise ValueError(
            f"search seeds {search_seeds} and confirmation seeds {confirm_seeds} overlap: a config would be reported on the seeds it was chosen on"
        )
    missing = sorted((set(search_seeds) | set(confirm_seeds)) - set(definition["seeds"]))
    if missing:
        raise ValueError(f"{path}: seeds {missing} are not in the table (it holds {definition['seeds']})")
    records = sorted(records, key=lambda r: r["index"])
    if not records:
        raise ValueError(f"{path}: the table holds no config yet")
    rows = {seed: definition["seeds"].index(seed) for seed in definition["seeds"]}
    epochs = definition["epochs"]

    def mean_over(seeds: list[int], record: dict) -> np.ndarray:
        curves = np.array([record["curves"]["cluster_accuracy"][rows[s]] for s in seeds], dtype=float)
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
        confirmed=np.array(
            [
                mean_over(confirm_seeds, r)[-1]
                if r["status"] == RunStatus.COMPLETED and len(r["epoch_seconds"]) == epochs
                else math.nan
                for r in records
            ]
        ),
        search_seeds=list(search_seeds),
        confirm_seeds=list(confirm_seeds),
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
    sampler = (
        optuna.samplers.RandomSampler(seed=seed) if strategy == "random" else optuna.samplers.TPESampler(seed=seed)
    )
    pruner = (
        optuna.pruners.SuccessiveHalvingPruner(min_resource=grace_period, reduction_factor=reduction_factor)
        if strategy == "tpe+asha"
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    trials, spent = [], 0
    while spent < budget:
        trial = study.ask()
        chosen, _ = assign(table.params, lambda param: suggest(param, trial))
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
    """``size`` points drawn at random from the space (as Preset.population draws them), each on its nearest recorded config."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    members = []
    for _ in range(size):
        trial = study.ask()
        values, _ = assign(table.params, lambda param: suggest(param, trial))
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
    ranked = best_first(seen, value=lambda t: t[1], status=lambda t: t[2], mode="max")
    return (ranked[0][0], ranked[0][1], len(seen)) if ranked else None


def pbt_chosen(table: Table, run: PBTRun) -> tuple[int, float] | None:
    """The config a PBT search ends with (its best member at the last epoch) and its value on the search seeds."""
    seen = [(m.config, value_at(table, m.config, table.epochs), m.status) for m in run.members]
    ranked = best_first(seen, value=lambda t: t[1], status=lambda t: t[2], mode="max")
    return (ranked[0][0], ranked[0][1]) if ranked else None


def record_pbt(table: Table, result: dict, run: PBTRun | None) -> None:
    chosen = pbt_chosen(table, run) if run else None
    result["trials"].append(len(run.members) if run else 0)
    result["distinct"].append(len({config for m in run.members for _, config in m.path}) if run else 0)
    result["confirmed"].append(table.confirmed[chosen[0]] if chosen else math.nan)
    result["searched"].append(chosen[1] if chosen else math.nan)
    result["exploits"].append(run.exploits if run else 0)
    result["moves"].append(run.moves if run else 0)


def compare(
    table: Table,
    strategies: list[str],
    budgets: list[int],
    searches: int,
    grace_period: int,
    reduction_factor: int,
    pbt: PBTSettings | None = None,
) -> dict:
    """{(strategy, budget): {"confirmed": [...], "searched": [...], "trials": [...], "distinct": [...]}} over the
    searches (PBT's also "exploits" and "moves"). A PBT search's population depends on the budget: one per budget."""
    results = {
        (s, b): {"confirmed": [], "searched": [], "trials": [], "distinct": [], "exploits": [], "moves": []}
        for s in strategies
        for b in budgets
    }
    for strategy in strategies:
        for seed in range(searches):
            if strategy == "pbt":
                for budget in budgets:
                    record_pbt(table, results[(strategy, budget)], run_pbt(table, seed, budget, pbt or PBTSettings()))
                continue
            trials = run_search(table, strategy, seed, max(budgets), grace_period, reduction_factor)
            for budget in budgets:
                chosen = chosen_at(table, trials, budget)
                result = results[(strategy, budget)]
                started = [t for t in trials if t.start < budget]
                result["trials"].append(len(started))
                result["distinct"].append(len({t.config for t in started}))
                result["confirmed"].append(table.confirmed[chosen[0]] if chosen else math.nan)
                result["searched"].append(chosen[1] if chosen else math.nan)
    return results


def summary(values: list[float]) -> dict:
    values = np.asarray(values, dtype=float)
    if np.isnan(values).all():  # e.g. PBT with a budget too small for a population of two
        return {"mean": math.nan, "sd": math.nan, "min": math.nan, "se": math.nan}
    sd = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(values.mean()), "sd": sd, "min": float(values.min()), "se": sd / math.sqrt(len(values))}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", help="table of curves (default benchmarks/data/curves_PRESET.jsonl, or .jsonl.gz)")
    parser.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        help=f"whose bundled table, when no --table (default {DEFAULT_PRESET}; digits_schedules: PBT's explore moves)",
    )
    parser.add_argument("--budgets", type=int, nargs="+", default=list(DEFAULT_BUDGETS), help="trial-epochs per search")
    parser.add_argument(
        "--searches", type=int, default=100, help="searches per strategy and budget (sampler seeds 0..N-1)"
    )
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--search-seeds", type=int, nargs="+", default=[0, 1, 2], help="table seeds a search sees")
    parser.add_argument(
        "--confirm-seeds", type=int, nargs="+", default=[3, 4], help="table seeds the chosen config is reported on"
    )
    parser.add_argument(
        "--grace-period", type=int, help="ASHA's first rung, in epochs (default: a quarter of the table's epochs)"
    )
    parser.add_argument("--reduction-factor", type=int, default=3)
    defaults = PBTSettings()
    parser.add_argument(
        "--perturbation-interval", type=int, default=defaults.perturbation_interval, help="PBT: epochs between exploits"
    )
    parser.add_argument(
        "--quantile-fraction",
        type=float,
        default=defaults.quantile_fraction,
        help="PBT: the bottom share that takes over the top share",
    )
    parser.add_argument(
        "--resample-probability",
        type=float,
        default=defaults.resample_probability,
        help="PBT: chance a mutated value is drawn afresh",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    path = Path(args.table) if args.table else default_table_path(args.preset)
    if not args.table and not path.exists():
        path = path.with_suffix(".jsonl.gz")
    try:
        table = load_table(path, args.search_seeds, args.confirm_seeds)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    grace_period = args.grace_period or max(1, table.epochs // 4)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    pbt = PBTSettings(
        perturbation_interval=args.perturbation_interval,
        quantile_fraction=args.quantile_fraction,
        resample_probability=args.resample_probability,
    )
    results = compare(
        table, args.strategies, sorted(args.budgets), args.searches, grace_period, args.reduction_factor, pbt
    )

    devices = sorted({run["device"] for run in table.provenance})
    exhaustive = max(
        range(len(table.values)),
        key=lambda c: value_at(table, c, table.epochs) if math.isfinite(table.confirmed[c]) else -math.inf,
    )
    print(f"table {table.path}: {len(table.values)} configs x {table.epochs} epochs, recorded on {', '.join(devices)}")
    print(
        f"a search sees table seeds {table.search_seeds}; its chosen config is reported on seeds {table.confirm_seeds}, which it never sees"
    )
    print(f"approximation: {APPROXIMATION}")
    print(
        f"ASHA (Optuna SuccessiveHalvingPruner): first rung {grace_period} epochs, reduction factor {args.reduction_factor}; {args.searches} searches per strategy and budget"
    )
    if "pbt" in args.strategies:
        print(
            f"PBT: synchronous, population = budget / {table.epochs} epochs, exploit every {pbt.perturbation_interval} epochs, "
            f"quantile {pbt.quantile_fraction:g}, resample probability {pbt.resample_probability:g}; {PBT_APPROXIMATION}"
        )
    print(
        f"oracle (the table's best config on the confirmation seeds): {np.nanmax(table.confirmed):.3f}; "
        f"exhaustive (every config to the end, chosen on the search seeds): {table.confirmed[exhaustive]:.3f} confirmed "
        f"({value_at(table, exhaustive, table.epochs):.3f} on the search seeds)"
    )
    print(
        f"\nbest confirmed accuracy: mean over seeds {table.confirm_seeds} at epoch {table.epochs} of the config each search chose"
    )
    print(
        f"{'budget':>6}  {'strategy':<9} {'mean':>6} {'sd':>6} {'min':>6} {'se':>6}  {'vs random':>15}  {'searched':>8}  {'trials':>6}  {'distinct':>8}"
    )
    for budget in sorted(args.budgets):
        baseline = summary(results[(args.strategies[0], budget)]["confirmed"])
        for strategy in args.strategies:
            result = results[(strategy, budget)]
            confirmed = summary(result["confirmed"])
            difference = ""
            if strategy != args.strategies[0]:
                difference = (
                    f"{confirmed['mean'] - baseline['mean']:+.3f} ± {math.hypot(confirmed['se'], baseline['se']):.3f}"
                )
            print(
                f"{budget:>6}  {strategy:<9} {confirmed['mean']:6.3f} {confirmed['sd']:6.3f} {confirmed['min']:6.3f} {confirmed['se']:6.3f}  "
                f"{difference:>15}  {np.mean(result['searched']):8.3f}  {np.mean(result['trials']):6.1f}  {np.mean(result['distinct']):8.1f}"
            )
    print(
        f"('vs random': difference of means ± its standard error, against {args.strategies[0]}; 'searched': the chosen "
        f"config's value on the search seeds, which flatters it; 'trials', 'distinct': trials started (PBT: its population) and "
        f"distinct configs met, means)"
    )
    if "pbt" in args.strategies:
        for budget in sorted(args.budgets):
            result = results[("pbt", budget)]
            print(
                f"PBT at {budget} trial-epochs: {np.mean(result['exploits']):.1f} exploits a search, "
                f"{np.mean(result['moves']):.1f} of them explored to another recorded config"
                + ("" if result["trials"][0] else f" (no population: under 2 x {table.epochs} trial-epochs)")
            )
    print(f"\n{time.perf_counter() - started:.1f} s")
    print("command: python benchmarks/search_strategies.py " + shlex.join(argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

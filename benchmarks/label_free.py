"""How well each label-free score ranks a search's trials as accuracy does, and what its pick is worth.

    python -m benchmarks.label_free record --preset digits --search-seed 200 --out DIR/digits_200.jsonl
    python -m benchmarks.label_free report DIR/*.jsonl --choosing-seeds 100 --figure DIR/label_free.png

``record`` draws ``--trials`` configs at random from a preset's space with ``--search-seed`` (a random
search) and trains each, as a search's trial does, on ``--seeds-per-trial`` seeds drawn from the
search seed, stacked with ``--confirm-seeds`` more seeds drawn after them, which stand for the
confirmation: no score ever reads them. One JSON line a trial (a rerun resumes): per seed its final
metrics and clusters. ``report`` computes every score on the search seeds (``iic.label_free``), the
Spearman correlation of each with accuracy over all trials and over those that did not collapse, and
the accuracy on the confirmation seeds of each score's pick against the accuracy pick. Searches
whose search seed is in ``--choosing-seeds`` are those the objective was chosen on; the others report.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from benchmarks.common import command, table
from benchmarks.record_curves import sample_configs
from iic.config import IICConfig
from iic.label_free import (
    ACROSS_K_SCORES,
    BALANCE,
    GENERALIZATION,
    LABEL_FREE,
    label_free_score,
    seed_agreement,
)
from iic.seeds import draw_seeds
from iic.trainer import train
from search.preset import read_preset
from trainables.collapse import TrialSettings

SEED_METRICS = ("cluster_accuracy", "nmi", "mutual_information", BALANCE, GENERALIZATION, "loss")
SCORES = ("mutual_information", "seed_agreement", BALANCE, GENERALIZATION, "neg_loss", LABEL_FREE)
MIN_TRIALS = 4  # a rank correlation over fewer trials says nothing


def record(args: argparse.Namespace) -> None:
    _, raw = read_preset(args.preset)
    base = IICConfig.from_dict(raw.get("config") or {}).replace(epochs=args.epochs).with_overrides(args.overrides)
    configs = sample_configs(raw.get("space") or {}, base.validate(), args.trials, args.search_seed)
    seeds = draw_seeds(args.search_seed, args.seeds_per_trial + args.confirm_seeds)
    out = Path(args.out)
    done = {json.loads(line)["index"] for line in out.read_text().splitlines()} if out.exists() else set()
    out.parent.mkdir(parents=True, exist_ok=True)
    for index, (values, config) in enumerate(configs):
        if index in done:
            continue
        started = time.perf_counter()
        result = train(config, seeds=seeds)
        runs = [
            {
                "seed": run.seed,
                "role": "search" if i < args.seeds_per_trial else "confirm",
                "collapsed": TrialSettings().collapsed(run.history, config.num_clusters),
                **{key: run.metrics.get(key) for key in SEED_METRICS},
                "clusters": run.clusters.tolist(),
            }
            for i, run in enumerate(result.seeds)
        ]
        line = {"index": index, "preset": args.preset, "search_seed": args.search_seed, "values": values}
        line.update(num_clusters=config.num_clusters, status=str(result.status), runs=runs)
        line.update(seconds=round(time.perf_counter() - started, 1), command=command("label_free"))
        with out.open("a") as handle:
            handle.write(json.dumps(line) + "\n")
        accuracy = [f"{run['cluster_accuracy']:.3f}" for run in runs if run["cluster_accuracy"] is not None]
        print(f"trial {index}: K {config.num_clusters}, accuracy per seed {' '.join(accuracy)}, {line['seconds']} s")


def trial_scores(trial: dict) -> dict:
    """A trial's scores and accuracy on its search seeds, and its accuracy and NMI on the others."""
    search = [run for run in trial["runs"] if run["role"] == "search"]
    confirm = [run for run in trial["runs"] if run["role"] == "confirm"]

    def mean(runs: list[dict], key: str) -> float:
        values = [run[key] for run in runs if run.get(key) is not None]
        return float(np.mean(values)) if values else float("nan")

    agreement = seed_agreement([np.asarray(run["clusters"]) for run in search])
    scores = {key: mean(search, key) for key in SEED_METRICS}
    scores.update(neg_loss=-scores["loss"], seed_agreement=agreement)
    scores[LABEL_FREE] = label_free_score(agreement, scores[BALANCE])
    scores.update(collapsed=all(run["collapsed"] for run in search), num_clusters=trial["num_clusters"])
    scores.update(confirmed_accuracy=mean(confirm, "cluster_accuracy"), confirmed_nmi=mean(confirm, "nmi"))
    return scores


def search_figures(trials: list[dict]) -> dict:
    """Per score: Spearman with accuracy over all trials and over the uncollapsed, and its pick's
    confirmed accuracy less the accuracy pick's."""
    rows = [trial_scores(trial) for trial in trials]
    accuracy_pick = max(rows, key=lambda row: row["cluster_accuracy"])
    figures = {"trials": len(rows), "uncollapsed": sum(not row["collapsed"] for row in rows)}
    figures["labelled_pick"] = accuracy_pick["confirmed_accuracy"]
    figures["fixed_k"] = len({row["num_clusters"] for row in rows}) == 1
    by_k: dict = {}
    for row in rows:
        by_k.setdefault(row["num_clusters"], []).append(row["confirmed_nmi"])
    figures["confirmed_nmi_by_k"] = by_k
    for score in SCORES:
        kept = [row for row in rows if row[score] is not None and np.isfinite(row[score])]
        alive = [row for row in kept if not row["collapsed"]]
        pick = max(kept, key=lambda row: row[score])
        figures[score] = {
            "all": spearmanr([r[score] for r in kept], [r["cluster_accuracy"] for r in kept]).statistic,
            "uncollapsed": spearmanr([r[score] for r in alive], [r["cluster_accuracy"] for r in alive]).statistic
            if len(alive) > 2
            else float("nan"),
            "pick": pick["confirmed_accuracy"],
            "pick_k": pick["num_clusters"],
            "pick_nmi": pick["confirmed_nmi"],
        }
    return figures


def report(args: argparse.Namespace) -> None:
    searches = {}
    for path in args.tables:
        trials = [json.loads(line) for line in Path(path).read_text().splitlines()]
        if len(trials) >= MIN_TRIALS:
            searches[(Path(path).stem, trials[0]["search_seed"])] = search_figures(trials)
    rows = []
    for (name, seed), f in searches.items():
        role = "choosing" if seed in args.choosing_seeds else "reporting"
        cells = [name, seed, role, f"{f['trials']} ({f['uncollapsed']})"]
        cells += [f"{f[score]['uncollapsed']:+.2f}" for score in SCORES]
        cells += [f"{f['labelled_pick']:.3f}", f"{f[LABEL_FREE]['pick']:.3f} (K {f[LABEL_FREE]['pick_k']})"]
        rows.append(cells)
    header = ["search", "seed", "role", "trials (uncollapsed)", *SCORES, "labelled pick", "label_free pick"]
    print("Spearman with accuracy over the uncollapsed trials; picks' accuracy on the confirmation seeds")
    print(table(header, rows))
    fixed_k = {key: f for key, f in searches.items() if key[1] not in args.choosing_seeds and f["fixed_k"]}
    if fixed_k:
        print(f"\nreporting searches of a fixed K ({len(fixed_k)}): mean (min) over them")
        summary = []
        for score in SCORES:
            rho = [f[score]["uncollapsed"] for f in fixed_k.values()]
            gap = [f[score]["pick"] - f["labelled_pick"] for f in fixed_k.values()]
            summary.append(
                [score, f"{np.nanmean(rho):+.2f} ({np.nanmin(rho):+.2f})", f"{np.mean(gap):+.3f} ({min(gap):+.3f})"]
            )
        print(table(["score", "Spearman, uncollapsed", "pick - labelled pick"], summary))
    for (name, seed), f in searches.items():
        if not f["fixed_k"]:
            by_k = "; ".join(
                f"K {k}: {' '.join(f'{v:.3f}' for v in nmi)}" for k, nmi in sorted(f["confirmed_nmi_by_k"].items())
            )
            print(f"\n{name} (seed {seed}), num_clusters searched; confirmed NMI of its trials by K: {by_k}")
            for score in ACROSS_K_SCORES:
                print(f"  {score} picks K {f[score]['pick_k']}, confirmed NMI {f[score]['pick_nmi']:.3f}")
    if args.figure:
        plot(searches, args.figure)
    print("command: " + command("label_free"))


def plot(searches: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{name}\n(seed {seed})" for name, seed in searches]
    figure, axis = plt.subplots(figsize=(max(6, 1.2 * len(names)), 4))
    width = 0.8 / len(SCORES)
    for i, score in enumerate(SCORES):
        values = [f[score]["uncollapsed"] for f in searches.values()]
        axis.bar(np.arange(len(names)) + i * width, values, width, label=score)
    axis.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, fontsize=7)
    axis.set_ylabel("Spearman with accuracy (uncollapsed trials)")
    axis.axhline(0.8, color="grey", linestyle="--", linewidth=0.8)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"figure: {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("record", help="train a random search's trials and record their seeds' clusters")
    rec.add_argument("--preset", default="digits", help="bundled preset or YAML path (default digits)")
    rec.add_argument("--search-seed", type=int, required=True)
    rec.add_argument("--trials", type=int, default=12)
    rec.add_argument("--epochs", type=int, default=8)
    rec.add_argument("--seeds-per-trial", type=int, default=2)
    rec.add_argument("--confirm-seeds", type=int, default=2)
    rec.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    rec.add_argument("--out", required=True, help="JSON lines file, appended to")
    rep = commands.add_parser("report", help="the scores' rank correlations and picks over recorded searches")
    rep.add_argument("tables", nargs="+")
    rep.add_argument(
        "--choosing-seeds", type=int, nargs="*", default=[], help="search seeds the objective was chosen on"
    )
    rep.add_argument("--figure", help="PNG of each search's Spearman per score")
    args = parser.parse_args(argv)
    (record if args.command == "record" else report)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

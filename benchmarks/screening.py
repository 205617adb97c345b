"""Screening policies compared by simulation: which initialisations to keep, and when.

    python benchmarks/screening.py --seeds 0 1 2 100 101 102 103 104 105 106 107 108 109 --epochs 30

Trains the config (default configs/digits.yaml) without screening on the seeds at once, recording
each seed's held-out mutual information every epoch, then lets every subset of n seeds stand for
one seed's n initialisations and applies each policy to it: keep the ``keep`` initialisations with
the highest MI at each cut, the last cut keeping one. The kept one's accuracy at the last epoch,
averaged over every subset, is what the policy gives; the best of the subset by labels (an oracle)
is what any choice among n could give. Exact, not an estimate of screening: screened models train
as each would alone (tests/iic/test_train.py), and a seed's initialisations are seeds drawn from it.

A policy is written ``n:k@e:...:1@E`` (``3:1@20``: three initialisations, one kept at epoch 20;
``6:2@10:1@20``: six, cut to two at epoch 10, one at epoch 20), the config's ``screen_inits``,
``screen_cut_keep`` @ ``screen_cut_epochs`` and ``screen_epochs``. A policy ending in ``:c`` keeps
its last cut's k (k >= 2) to the last epoch and reports their consensus (``6:3@3:c``: six, three
kept at epoch 3, the consensus of the three; ``iic.consensus``, a cluster ensemble IICConfig cannot
train): simulating it needs each seed's soft assignments at the last epoch, which the run records
(and ``--save`` writes beside the histories) when a consensus policy is given. Chooses policies, so
it runs on tuning seeds; a choice is then reported on fresh ones (benchmarks/digits_quality.py).
"""

import argparse
import itertools
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from iic.config import IICConfig
from iic.consensus import consensus_clusters
from iic.metrics import clustering_metrics
from iic.seeds import label_free_ranking
from iic.train import train

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits.yaml"
DEFAULT_POLICIES = ["3:1@20", "4:2@10:1@20", "5:2@10:1@20", "6:2@10:1@20", "6:1@20", "2:1@10"]


CONSENSUS_MARK = "c"


@dataclass(frozen=True)
class Policy:
    inits: int
    cuts: tuple[tuple[int, int], ...]  # (keep, after epoch), epochs increasing, the last keeping 1 unless consensus
    consensus: bool = False  # the last cut's kept train to the end and report their consensus

    @classmethod
    def parse(cls, text: str) -> "Policy":
        """``n:k@e:...:1@E`` or ``n:k@e:...:c``; a ValueError names what is wrong and the form expected."""
        usage = (
            f"policy {text!r}: write it n:k@e:...:1@E, e.g. 6:2@10:1@20 (six initialisations, two kept at epoch 10, "
            f"one at 20), or n:k@e:...:{CONSENSUS_MARK}, e.g. 6:3@3:{CONSENSUS_MARK} (three kept at epoch 3, their consensus)"
        )
        inits, *cut_texts = text.split(":")
        consensus = cut_texts[-1:] == [CONSENSUS_MARK]
        try:
            policy = cls(
                int(inits),
                tuple(tuple(int(part) for part in cut.split("@")) for cut in cut_texts[: len(cut_texts) - consensus]),
                consensus,
            )
        except ValueError:
            raise ValueError(usage) from None
        if not policy.cuts or any(len(cut) != 2 for cut in policy.cuts):
            raise ValueError(usage)
        keeps, epochs = [keep for keep, _ in policy.cuts], [epoch for _, epoch in policy.cuts]
        if (
            (keeps[-1] < 2 if consensus else keeps[-1] != 1)
            or keeps != sorted(set(keeps), reverse=True)
            or keeps[0] >= policy.inits
            or epochs != sorted(set(epochs))
            or epochs[0] < 1
        ):
            raise ValueError(
                usage + "; the numbers kept fall below n to 1 (to 2 or more before a consensus), the epochs rise"
            )
        return policy

    def model_epochs(self, epochs: int) -> int:
        """What a seed costs through ``epochs``, in epochs of one model."""
        training, cost, last = self.inits, 0, 0
        for keep, epoch in self.cuts:
            cost, training, last = cost + training * (epoch - last), keep, epoch
        return cost + training * (epochs - last)

    def config(self, base: IICConfig) -> IICConfig:
        """The config that screens this way (at most one cut before the pick, as IICConfig has)."""
        if self.consensus:
            raise ValueError(f"{self}: IICConfig trains one model a seed, not a consensus")
        if len(self.cuts) > 2:
            raise ValueError(f"{self}: IICConfig screens with at most one cut before the pick")
        cut_keep, cut_epochs = self.cuts[0] if len(self.cuts) == 2 else (2, 0)
        return base.replace(
            screen_inits=self.inits,
            screen_cut_epochs=cut_epochs,
            screen_cut_keep=cut_keep,
            screen_epochs=self.cuts[-1][1],
        )

    def keep(self, histories: list[list[dict]]) -> tuple[int, ...]:
        """Indices of the initialisations kept to the end (one, or a consensus's), given each one's
        per-epoch metrics."""
        alive = list(range(len(histories)))
        for keep, epoch in self.cuts:
            order = label_free_ranking([histories[i][epoch - 1] for i in alive])
            alive = [alive[i] for i in order[:keep]]
        return tuple(sorted(alive))

    def __str__(self) -> str:
        return ":".join(
            [str(self.inits), *(f"{keep}@{epoch}" for keep, epoch in self.cuts), *[CONSENSUS_MARK] * self.consensus]
        )


class ConsensusAccuracy:
    """The accuracy of the consensus of some seeds' soft assignments at one epoch, each set of seeds
    computed once (a policy keeps the same few from many subsets)."""

    def __init__(self, probabilities: np.ndarray, labels: np.ndarray, num_clusters: int, num_classes: int):
        self.probabilities, self.labels, self.num_clusters, self.num_classes = (
            probabilities,
            labels,
            num_clusters,
            num_classes,
        )
        self.known: dict[tuple[int, ...], float] = {}

    def __call__(self, seeds: tuple[int, ...]) -> float:
        if seeds not in self.known:
            clusters = consensus_clusters([self.probabilities[i] for i in seeds], self.num_clusters)
            self.known[seeds] = clustering_metrics(clusters, self.labels, self.num_clusters, self.num_classes)[
                "cluster_accuracy"
            ]
        return self.known[seeds]


def simulate(policy: Policy, histories: list[list[dict]], consensus: ConsensusAccuracy | None = None) -> dict:
    """The policy's kept accuracy (last epoch) over every subset of ``policy.inits`` of the seeds'
    ``histories``: mean, worst, 10th percentile, and the best of each subset by labels. A consensus
    policy needs ``consensus``, the accuracy of a set of the seeds' consensus at that epoch."""
    if policy.consensus and consensus is None:
        raise ValueError(f"{policy}: simulating a consensus needs the seeds' soft assignments at the last epoch")
    final = [history[-1]["cluster_accuracy"] for history in histories]
    kept, oracle = [], []
    for subset in itertools.combinations(range(len(histories)), policy.inits):
        chosen = tuple(subset[i] for i in policy.keep([histories[i] for i in subset]))
        kept.append(consensus(chosen) if policy.consensus else final[chosen[0]])
        oracle.append(max(final[i] for i in subset))
    return {
        "subsets": len(kept),
        "mean": float(np.mean(kept)),
        "min": float(np.min(kept)),
        "p10": float(np.percentile(kept, 10)),
        "oracle": float(np.mean(oracle)),
    }


def print_policies(
    policies: list[Policy], histories: list[list[dict]], consensus: ConsensusAccuracy | None = None
) -> None:
    """One table: each policy's kept accuracy at the histories' last epoch, and its cost."""
    epochs = len(histories[0])
    print(
        f"\naccuracy at epoch {epochs}, one initialisation: mean {np.mean([h[-1]['cluster_accuracy'] for h in histories]):.3f}"
    )
    print(
        f"{'policy':>14}  {'subsets':>7}  {'mean':>6}  {'min':>6}  {'p10':>6}  {'oracle':>6}  model-epochs at {epochs}"
    )
    for policy in policies:
        figures = simulate(policy, histories, consensus)
        print(
            f"{str(policy):>14}  {figures['subsets']:>7}  {figures['mean']:>6.3f}  {figures['min']:>6.3f}  "
            f"{figures['p10']:>6.3f}  {figures['oracle']:>6.3f}  {policy.model_epochs(epochs)}"
        )


def probabilities_path(saved: str | Path) -> Path:
    """Where ``--save`` puts the seeds' soft assignments beside their histories."""
    return Path(saved).with_suffix(".probabilities.npz")


def train_recording(config: IICConfig, seeds: list[int], epochs: set[int]) -> tuple[list[list[dict]], dict]:
    """Train ``seeds`` at once; their histories, and with ``epochs`` their soft assignments at those
    epochs (``epoch_<E>``: seeds x images x clusters), the labels and the numbers of clusters and classes."""
    recorded = {}

    def on_epoch(metrics: dict, trainer) -> None:
        if trainer.epoch in epochs:
            recorded[f"epoch_{trainer.epoch}"] = np.stack(trainer.last_probabilities)
            recorded.update(
                labels=trainer.labels, num_clusters=config.num_clusters, num_classes=trainer.data.num_classes
            )

    result = train(config, on_epoch=on_epoch, seeds=seeds)
    return [run.history for run in result.seeds], recorded


def consensus_at(probabilities: dict, epochs: int) -> ConsensusAccuracy | None:
    key = f"epoch_{epochs}"
    if key not in probabilities:
        return None
    return ConsensusAccuracy(
        probabilities[key],
        probabilities["labels"],
        int(probabilities["num_clusters"]),
        int(probabilities["num_classes"]),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: configs/digits.yaml)")
    parser.add_argument("--epochs", type=int, help="train this long (default: the config's); costs are at the config's")
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--policies", nargs="+", default=DEFAULT_POLICIES, metavar="n:k@e:...:1@E")
    parser.add_argument(
        "--report-epochs",
        type=int,
        nargs="+",
        default=[],
        metavar="E",
        help="also simulate runs that end at these epochs (the same run's first E epochs: "
        "nothing in training depends on the epoch count)",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--save",
        metavar="PATH",
        help="write the seeds' per-epoch histories here (JSON), for --load; with a "
        "consensus policy also their soft assignments (PATH, suffix .probabilities.npz)",
    )
    parser.add_argument(
        "--load",
        metavar="PATH",
        help="simulate the histories --save wrote instead of training "
        "(--config, --seeds, --epochs and --set are then read from it)",
    )
    args = parser.parse_args(argv)
    if args.load:
        saved = json.loads(Path(args.load).read_text())
        args.config, args.seeds, args.epochs, args.overrides = (
            saved.get("config", args.config),
            saved["seeds"],
            saved["epochs"],
            saved["overrides"],
        )
    elif not args.seeds:
        parser.error("--seeds is required (or --load a saved run)")
    base = IICConfig.from_yaml(args.config).with_overrides(args.overrides)
    try:
        policies = [Policy.parse(text) for text in args.policies]
    except ValueError as err:
        parser.error(str(err))
    config = base.replace(screen_inits=1, screen_cut_epochs=0, epochs=args.epochs or base.epochs)
    too_late = [str(p) for p in policies if p.cuts[-1][1] >= config.epochs or p.inits > len(args.seeds)]
    if too_late:
        parser.error(f"policies {too_late} need more than the {len(args.seeds)} seeds or {config.epochs} epochs given")
    report_epochs = sorted({config.epochs, *(e for e in args.report_epochs if e < config.epochs)})
    needed = set(report_epochs) if any(p.consensus for p in policies) else set()
    if args.load and needed and not probabilities_path(args.load).exists():
        parser.error(
            f"consensus policies need the soft assignments {probabilities_path(args.load)}, which {args.load} was saved "
            f"without: train again with a consensus policy and --save, or drop the consensus policies"
        )
    config.validate()
    print(
        f"{config.dataset} at {config.input_size} px: {config.backbone} (width {config.backbone_width}), sobel {config.sobel}, {config.epochs} epochs, "
        f"no screening while training; seeds {args.seeds}; torch threads {torch.get_num_threads()}"
    )
    started = time.perf_counter()
    if args.load:
        histories, probabilities = saved["histories"], dict(np.load(probabilities_path(args.load))) if needed else {}
        missing = sorted(e for e in needed if f"epoch_{e}" not in probabilities)
        if missing:
            parser.error(
                f"consensus policies at epochs {missing}: {probabilities_path(args.load)} holds the soft assignments of "
                f"epochs {sorted(int(k[6:]) for k in probabilities if k.startswith('epoch_'))} only; report those epochs"
            )
    else:
        histories, probabilities = train_recording(config, args.seeds, needed)
    seconds = time.perf_counter() - started
    if args.save:
        Path(args.save).write_text(
            json.dumps(
                {
                    "config": args.config,
                    "seeds": args.seeds,
                    "epochs": config.epochs,
                    "overrides": args.overrides,
                    "histories": histories,
                },
                default=float,
            )
        )
        if probabilities:
            np.savez_compressed(probabilities_path(args.save), **probabilities)
    for epochs in report_epochs:
        print_policies(
            [p for p in policies if p.cuts[-1][1] < epochs],
            [h[:epochs] for h in histories],
            consensus_at(probabilities, epochs),
        )
    print(
        f"\n{seconds:.0f} s for all {len(args.seeds)} seeds at once"
        + (f" (read from {args.load})" if args.load else "")
    )
    print(
        "command: python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    )


if __name__ == "__main__":
    main()

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
``screen_cut_keep`` @ ``screen_cut_epochs`` and ``screen_epochs``. Chooses policies, so it runs on
tuning seeds; a choice is then reported on fresh ones (benchmarks/digits_quality.py).
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
from iic.seeds import label_free_ranking
from iic.train import train

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits.yaml"
DEFAULT_POLICIES = ["3:1@20", "4:2@10:1@20", "5:2@10:1@20", "6:2@10:1@20", "6:1@20", "2:1@10"]


@dataclass(frozen=True)
class Policy:
    inits: int
    cuts: tuple[tuple[int, int], ...]  # (keep, after epoch), epochs increasing, the last keeping 1

    @classmethod
    def parse(cls, text: str) -> "Policy":
        """``n:k@e:...:1@E``; a ValueError names what is wrong and the form expected."""
        usage = f"policy {text!r}: write it n:k@e:...:1@E, e.g. 6:2@10:1@20 (six initialisations, two kept at epoch 10, one at 20)"
        inits, *cut_texts = text.split(":")
        try:
            policy = cls(int(inits), tuple(tuple(int(part) for part in cut.split("@")) for cut in cut_texts))
        except ValueError:
            raise ValueError(usage) from None
        if not policy.cuts or any(len(cut) != 2 for cut in policy.cuts):
            raise ValueError(usage)
        keeps, epochs = [keep for keep, _ in policy.cuts], [epoch for _, epoch in policy.cuts]
        if (keeps[-1] != 1 or keeps != sorted(set(keeps), reverse=True) or keeps[0] >= policy.inits
                or epochs != sorted(set(epochs)) or epochs[0] < 1):
            raise ValueError(usage + "; the numbers kept fall below n to 1, the epochs rise")
        return policy

    def config(self, base: IICConfig) -> IICConfig:
        """The config that screens this way (at most one cut before the pick, as IICConfig has)."""
        if len(self.cuts) > 2:
            raise ValueError(f"{self}: IICConfig screens with at most one cut before the pick")
        cut_keep, cut_epochs = self.cuts[0] if len(self.cuts) == 2 else (2, 0)
        return base.replace(screen_inits=self.inits, screen_cut_epochs=cut_epochs, screen_cut_keep=cut_keep,
                            screen_epochs=self.cuts[-1][1])

    def keep(self, histories: list[list[dict]]) -> int:
        """Index of the initialisation kept, given each one's per-epoch metrics."""
        alive = list(range(len(histories)))
        for keep, epoch in self.cuts:
            order = label_free_ranking([histories[i][epoch - 1] for i in alive])
            alive = [alive[i] for i in order[:keep]]
        return alive[0]

    def __str__(self) -> str:
        return ":".join([str(self.inits), *(f"{keep}@{epoch}" for keep, epoch in self.cuts)])


def simulate(policy: Policy, histories: list[list[dict]]) -> dict:
    """The policy's kept accuracy (last epoch) over every subset of ``policy.inits`` of the seeds'
    ``histories``: mean, worst, 10th percentile, and the best of each subset by labels."""
    final = [history[-1]["cluster_accuracy"] for history in histories]
    kept, oracle = [], []
    for subset in itertools.combinations(range(len(histories)), policy.inits):
        kept.append(final[subset[policy.keep([histories[i] for i in subset])]])
        oracle.append(max(final[i] for i in subset))
    return {"subsets": len(kept), "mean": float(np.mean(kept)), "min": float(np.min(kept)),
            "p10": float(np.percentile(kept, 10)), "oracle": float(np.mean(oracle))}


def print_policies(policies: list[Policy], histories: list[list[dict]], base: IICConfig) -> None:
    """One table: each policy's kept accuracy at the histories' last epoch, and its cost at ``base``'s."""
    epochs = len(histories[0])
    print(f"\naccuracy at epoch {epochs}, one initialisation: mean {np.mean([h[-1]['cluster_accuracy'] for h in histories]):.3f}")
    print(f"{'policy':>14}  {'subsets':>7}  {'mean':>6}  {'min':>6}  {'p10':>6}  {'oracle':>6}  model-epochs at {epochs}")
    for policy in policies:
        figures = simulate(policy, histories)
        cost = policy.config(base).model_epochs() if len(policy.cuts) <= 2 else "-"
        print(f"{str(policy):>14}  {figures['subsets']:>7}  {figures['mean']:>6.3f}  {figures['min']:>6.3f}  "
              f"{figures['p10']:>6.3f}  {figures['oracle']:>6.3f}  {cost}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: configs/digits.yaml)")
    parser.add_argument("--epochs", type=int, help="train this long (default: the config's); costs are at the config's")
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--policies", nargs="+", default=DEFAULT_POLICIES, metavar="n:k@e:...:1@E")
    parser.add_argument("--report-epochs", type=int, nargs="+", default=[], metavar="E",
                        help="also simulate runs that end at these epochs (the same run's first E epochs: "
                             "nothing in training depends on the epoch count)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--save", metavar="PATH", help="write the seeds' per-epoch histories here (JSON), for --load")
    parser.add_argument("--load", metavar="PATH", help="simulate the histories --save wrote instead of training "
                                                       "(--config, --seeds, --epochs and --set are then read from it)")
    args = parser.parse_args(argv)
    if args.load:
        saved = json.loads(Path(args.load).read_text())
        args.config, args.seeds, args.epochs, args.overrides = (saved.get("config", args.config), saved["seeds"],
                                                                 saved["epochs"], saved["overrides"])
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
    config.validate()
    print(f"{config.dataset}: {config.backbone} (width {config.backbone_width}), sobel {config.sobel}, {config.epochs} epochs, "
          f"no screening while training; seeds {args.seeds}; torch threads {torch.get_num_threads()}")
    started = time.perf_counter()
    histories = saved["histories"] if args.load else [run.history for run in train(config, seeds=args.seeds).seeds]
    seconds = time.perf_counter() - started
    if args.save:
        Path(args.save).write_text(json.dumps({"config": args.config, "seeds": args.seeds, "epochs": config.epochs, "overrides": args.overrides,
                                               "histories": histories}, default=float))
    for epochs in sorted({config.epochs, *(e for e in args.report_epochs if e < config.epochs)}):
        print_policies([p for p in policies if p.cuts[-1][1] < epochs], [h[:epochs] for h in histories],
                       base.replace(epochs=epochs))
    print(f"\n{seconds:.0f} s for all {len(args.seeds)} seeds at once" + (f" (read from {args.load})" if args.load else ""))
    print("command: python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    main()

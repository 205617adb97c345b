"""Self-labelling after IIC (iic/self_label.py): what each variant does to the same IIC runs.

    python benchmarks/self_label.py                                    # the tuning seeds 100-109, the default variants
    python benchmarks/self_label.py --seeds 1100 1101 1102 --variant "low lr:self_label_epochs=10,lr=0.0003"

Trains the config (default: IICConfig defaults) on the seeds, all at once, for --base-epochs
epochs of IIC and checkpoints it; then continues that checkpoint once per variant, each a set of
config overrides for the epochs after the base (self_label_epochs=N self-labels all N of them;
lr and the other schedulable fields take their new values from the first of them). A variant's
run is exactly a run of its config from scratch (a run is its first epochs: the self-labelled
epochs come last), so the base is trained once. Prints, for the base and each variant, the
accuracy's mean, min and sd over the seeds, the label-free best of 3 (triples in order / every
triple), the mean
largest-cluster share and held-out MI, and the command.

Seeds: 100-109 (the default here) are tuning seeds (benchmarks/digits_quality.py lists which seeds
decided what); a variant chosen on them is reported with benchmarks/digits_quality.py on seeds that
decided nothing.
"""

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from iic.config import IICConfig
from iic.data import load_dataset
from iic.seeds import label_free_best_of, label_free_best_of_every
from iic.train import Trainer, run_epochs, train

DEFAULT_SEEDS = list(range(100, 110))
DEFAULT_VARIANTS = [
    "5 epochs, lr 3e-4:self_label_epochs=5,lr=0.0003",
    "10 epochs, lr 3e-4:self_label_epochs=10,lr=0.0003",
    "10 epochs, lr 1e-4:self_label_epochs=10,lr=0.0001",
    "10 epochs, lr 3e-4, threshold 0.9:self_label_epochs=10,lr=0.0003,self_label_threshold=0.9",
]


def parse_variant(text: str) -> tuple[str, list[str]]:
    """'name:key=value,key=value' -> (name, ['key=value', ...]); self_label_epochs is required."""
    name, _, overrides = text.partition(":")
    pairs = [pair.strip() for pair in overrides.split(",") if pair.strip()]
    if not name or not any(pair.startswith("self_label_epochs=") for pair in pairs):
        raise SystemExit(f"--variant {text!r}: write it as 'name:self_label_epochs=N[,key=value,...]'")
    return name, pairs


def variant_config(base: IICConfig, overrides: list[str]) -> IICConfig:
    """The config whose run is the base's epochs then the variant's: its self-labelled epochs come
    after the base, and its other overrides (lr, say) take effect with the first of them."""
    changed = base.with_overrides(overrides)
    epochs = base.epochs + changed.self_label_epochs
    scheduled = {
        name: getattr(changed, name)
        for name in IICConfig.SCHEDULABLE_FIELDS
        if getattr(changed, name) != getattr(base, name)
    }
    schedule = [*(base.schedule or []), {"epoch": base.epochs + 1, "values": scheduled}] if scheduled else base.schedule
    return changed.replace(
        **{name: getattr(base, name) for name in scheduled}, epochs=epochs, schedule=schedule
    ).validate()


def save_at_the_end(trainer: Trainer, path: Path) -> None:
    if trainer.epoch == trainer.config.epochs:
        trainer.save_checkpoint(path)


def summary(per_seed: list[dict]) -> str:
    accuracy = np.array([m["cluster_accuracy"] for m in per_seed])
    largest = np.mean([m["largest_cluster_share"] for m in per_seed])
    information = np.mean([m["mutual_information"] for m in per_seed])
    return (
        f"{accuracy.mean():.3f} / {accuracy.min():.3f} / {accuracy.std(ddof=1):.3f}  "
        f"best of 3 {label_free_best_of(per_seed):.3f} / {label_free_best_of_every(per_seed):.3f}  "
        f"largest {largest:.2f}  MI {information:.3f}  [" + " ".join(f"{a:.2f}" for a in accuracy) + "]"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (default: IICConfig defaults)")
    parser.add_argument(
        "--base-epochs", type=int, help="epochs of IIC before self-labelling (default: the config's epochs)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS, help="default: the tuning seeds 100-109")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="for the base"
    )
    parser.add_argument(
        "--variant",
        dest="variants",
        action="append",
        metavar="NAME:KEY=VALUE,...",
        help="repeatable; default: " + "; ".join(DEFAULT_VARIANTS),
    )
    args = parser.parse_args()
    variants = [parse_variant(text) for text in args.variants or DEFAULT_VARIANTS]

    base = (IICConfig.from_yaml(args.config) if args.config else IICConfig()).with_overrides(args.overrides)
    base = base.replace(epochs=args.base_epochs or base.epochs, self_label_epochs=0).validate()
    configs = {
        name: variant_config(base, overrides) for name, overrides in variants
    }  # every variant checked before any compute
    data = load_dataset(
        base.dataset,
        base.data_root,
        split=base.split,
        input_size=base.input_size,
        greyscale=base.greyscale,
        class_map=base.class_map,
        max_samples=base.max_samples,
        seed=base.seed,
    )
    print(
        f"{base.dataset}: IIC for {base.epochs} epochs (lr {base.lr}, batch {base.batch_size}x{base.repeats}), "
        f"seeds {args.seeds}, then each variant from its checkpoint"
    )
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "base.pt"
        started = time.perf_counter()
        result = train(
            base, data=data, seeds=args.seeds, on_epoch=lambda metrics, trainer: save_at_the_end(trainer, checkpoint)
        )
        print(
            f"{'IIC alone, epoch ' + str(base.epochs):>44}: {summary([run.metrics for run in result.seeds])}  ({time.perf_counter() - started:.0f} s)"
        )
        for name, config in configs.items():
            started = time.perf_counter()
            continued = run_epochs(Trainer(config, data, seeds=args.seeds), None, checkpoint).seeds
            print(f"{name:>44}: {summary([run.metrics for run in continued])}  ({time.perf_counter() - started:.0f} s)")
    print(
        "accuracy: mean / min / sd over the seeds; best of 3: the highest-MI seed of each triple in order / of every triple; "
        "largest: mean largest-cluster share"
    )
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))


if __name__ == "__main__":
    main()

"""Export the best trials of a search as configs that ``python -m iic.train`` runs unchanged
(search.best_configs).

    python search/export.py --experiment iic-digits --top 5 --out best/
    python search/export.py --experiment iic-har --search har-1 --top 3 --out best-har --objective mutual_information
    python -m iic.train --config best/rank01_<trial>.yaml --out runs/retrain/rank01   # retrain the best
    python search/run.py --warm-start best/                                            # or seed a new search

Configs confirmed on fresh seeds come first, by their confirmed mean; each is written with the
epochs its trial ran, headed by what it holds on which seeds. OUT also receives ``summary.csv`` and
``summary.md``; the rank files of an earlier export into OUT are replaced.
"""

import argparse
import os
import sys
from pathlib import Path

from search.best_configs import export_best
from search.driver import default_tracking_uri
from search.objectives import OBJECTIVES
from search.preset import SearchDefaults
from search.tracking.records import RecordsError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python search/export.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", required=True, help="MLflow experiment of the search (e.g. iic-digits)")
    parser.add_argument(
        "--tracking-uri",
        default=default_tracking_uri(),
        help="MLflow store: sqlite:///FILE (default sqlite:///mlflow.db) or http://HOST:PORT",
    )
    parser.add_argument(
        "--search",
        help="only the trials of this search name (the iic.search tag; default: every search in the experiment)",
    )
    parser.add_argument("--top", type=int, required=True, help="number of distinct configs to export")
    parser.add_argument("--out", required=True, help="folder for rank01_<trial>.yaml ..., summary.csv and summary.md")
    parser.add_argument(
        "--objective",
        choices=sorted(OBJECTIVES),
        default=SearchDefaults.objective,
        help="metric to rank by (default: cluster_accuracy)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per run otherwise
    try:
        paths = export_best(args.tracking_uri, args.experiment, args.top, args.out, args.objective, args.search)
    except RecordsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    print(f"Best {len(paths)} distinct trial(s) of {args.experiment!r} by {args.objective} -> {out}/\n")
    print((out / "summary.md").read_text())
    print(f"Retrain the best:  python -m iic.train --config {paths[0]} --out runs/retrain/{paths[0].stem}")
    print(f"Seed a new search: python search/run.py --warm-start {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

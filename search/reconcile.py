"""Make MLflow hold what Tune recorded of a search (search.tracking.reconcile), for a search whose
driver died while MLflow was down.

    python search/reconcile.py --name iic-digits [--storage-path runs/search] [--tracking-uri sqlite:///mlflow.db]

Every write is idempotent, so running it again changes nothing.
"""

import argparse
import sys

from mlflow.tracking import MlflowClient

from iic.status import RunStatus
from search.driver import (
    SearchError,
    check_tracking_uri,
    code_version,
    default_storage_path,
    default_tracking_uri,
    resolve_storage_path,
)
from search.tracking.reconcile import epoch_span, reconcile_search


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python search/reconcile.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--name", required=True, help="the search's name (its Ray experiment folder and MLflow tag)")
    parser.add_argument("--storage-path", default=default_storage_path(), help="the search's Ray Tune storage")
    parser.add_argument("--tracking-uri", default=default_tracking_uri(), help="the search's MLflow store")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        tracking_uri = check_tracking_uri(args.tracking_uri)
        reports = reconcile_search(
            MlflowClient(tracking_uri), tracking_uri, args.name, resolve_storage_path(args.storage_path), code_version()
        )
    except (SearchError, LookupError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for role, report in reports:
        for trial_id, epochs in report.sent.items():
            print(f"{role} {trial_id}: sent epochs {epoch_span(epochs)}")
        for trial_id in report.closed_lost:
            print(f"{role} {trial_id}: closed as {RunStatus.LOST_WITH_DRIVER} (Tune never recorded it)")
        for failure in report.failures:
            print(f"{role}: {failure}")
        if not (report.sent or report.closed_lost or report.failures):
            print(f"{role}: MLflow already held everything Tune recorded")
    return 1 if any(report.failures for _, report in reports) else 0


if __name__ == "__main__":
    sys.exit(main())

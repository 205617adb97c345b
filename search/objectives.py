"""What a search may rank its trials by, and when each objective can be used.

Every objective is maximised. ``cluster_accuracy`` needs labels; the others are label-free
(``iic.label_free`` says what each measures). ASHA and PBT read the objective after every epoch, so a
search ranks by a per-epoch score; ``generalization`` (end of run only) ranks finished trials in
confirmation and export. A search whose ``num_clusters`` varies ranks by a score that compares K.
"""

from iic.label_free import ACROSS_K_SCORES, END_OF_RUN_SCORES, GENERALIZATION, LABEL_FREE, SEED_AGREEMENT

LABELLED_OBJECTIVES = ("cluster_accuracy",)
LABEL_FREE_OBJECTIVES = (LABEL_FREE, SEED_AGREEMENT, "mutual_information", GENERALIZATION)
OBJECTIVES = {name: "max" for name in LABELLED_OBJECTIVES + LABEL_FREE_OBJECTIVES}
MULTI_SEED_OBJECTIVES = (LABEL_FREE, SEED_AGREEMENT)  # agreement between a trial's seeds needs two
UNLABELLED_DEFAULT = LABEL_FREE


def objective_problems(search, searches_k: bool) -> list[str]:
    """Why ``search.objective`` cannot rank the trials and confirmations of ``search`` (a preset's
    ``SearchDefaults``) as they train; empty if it can."""
    objective, seeds_per_trial = search.objective, search.seeds_per_trial
    if objective not in OBJECTIVES:
        return [f"objective {objective!r} is not one of {', '.join(OBJECTIVES)}"]
    problems = []
    if objective in END_OF_RUN_SCORES:
        problems.append(
            f"objective {objective}: reported after a run's last epoch only, so ASHA and PBT cannot act on it; "
            f"search by {LABEL_FREE} and rank the finished trials with search/export.py --objective {objective}"
        )
    if objective in MULTI_SEED_OBJECTIVES and seeds_per_trial < 2:
        problems.append(
            f"objective {objective}: measures how a trial's seeds agree, so it needs --seeds-per-trial 2 or more "
            f"(got {seeds_per_trial})"
        )
    if objective in MULTI_SEED_OBJECTIVES and search.confirm_top and search.confirm_seeds < 2:
        problems.append(
            f"objective {objective}: confirmation ranks by it too, so it needs --confirm-seeds 2 or more "
            f"(got {search.confirm_seeds}), or --confirm-top 0"
        )
    if searches_k and objective not in ACROSS_K_SCORES + LABELLED_OBJECTIVES:
        problems.append(
            f"objective {objective}: its values do not compare runs of different num_clusters, which the space "
            f"searches; rank by {' or '.join(ACROSS_K_SCORES)}, or fix num_clusters"
        )
    return problems


def unlabelled_problem(objective: str) -> str | None:
    """Why ``objective`` cannot rank trials on images without labels (None if it can)."""
    if objective in LABELLED_OBJECTIVES:
        return (
            f"--objective {objective}: the images have no labels to score it with; choose a label-free objective: "
            f"{', '.join(o for o in LABEL_FREE_OBJECTIVES if o not in END_OF_RUN_SCORES)}"
        )
    return None

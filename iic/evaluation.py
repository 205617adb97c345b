"""How a stack of models is scored after each epoch, without labels choosing anything.

Each model reports its sub-head with the lowest training loss, that sub-head's clusters, the
clustering metrics where labels exist, and the mutual information it reaches between the images
and their held-out augmented views: the label-free score that screening and searches may rank by.
"""

import torch

from iic.label_free import (
    BALANCE,
    GENERALIZATION,
    LABEL_FREE,
    SEED_AGREEMENT,
    generalization,
    label_free_score,
    seed_agreement,
)
from iic.loss import mutual_information
from iic.metrics import clustering_metrics
from iic.seeds import INIT_SEED


def evaluate(trainer, subhead_losses: torch.Tensor) -> list[dict]:
    """Each model's metrics, of its sub-head with the lowest training loss (chosen without
    labels), with the mutual information it reaches on held-out augmented views (a label-free
    objective). After the last epoch each also reports its generalization score (``iic.label_free``),
    from its backbone's features. ``subhead_losses``: (sub-heads, models)."""
    image_features = [] if trainer.epoch >= trainer.config.epochs else None  # the probe's, after the last epoch
    probabilities = predict(trainer, held_out_views=False, image_features=image_features)
    features = torch.cat(image_features, dim=1).float().cpu().numpy() if image_features is not None else None
    twin_probabilities = predict(trainer, held_out_views=True)
    num_clusters, num_classes = trainer.config.num_clusters, trainer.data.num_classes
    per_model = []
    for index, init in enumerate(trainer.inits):
        chosen = int(subhead_losses[:, index].argmin())
        clusters = probabilities[chosen][index].argmax(dim=1).cpu().numpy()
        metrics = {
            "seed": trainer.seed_of_model[index],
            "loss": float(subhead_losses[chosen, index]),
            "mutual_information": mutual_information(probabilities[chosen][index], twin_probabilities[chosen][index]),
            "chosen_subhead": chosen,
            **clustering_metrics(clusters, trainer.labels, num_clusters, num_classes),
        }
        if features is not None:
            metrics[GENERALIZATION] = generalization(features[index], clusters, seed=init)
        if trainer.config.screen_inits > 1:
            metrics[INIT_SEED] = init
        if "cluster_accuracy" in metrics and len(probabilities) > 1:
            # Picks a sub-head by looking at labels: a diagnostic of sub-head spread, never the result.
            metrics["diagnostic_best_subhead_accuracy"] = max(
                clustering_metrics(p[index].argmax(dim=1).cpu().numpy(), trainer.labels, num_clusters, num_classes)[
                    "cluster_accuracy"
                ]
                for p in probabilities
            )
        trainer.last_clusters[index] = clusters
        per_model.append(metrics)
    return per_model


def run_scores(trainer, reported: list[int], combined: dict) -> dict:
    """The label-free scores of the run as a whole: its reported models' seed agreement, and the
    ``label_free`` objective from it and the seeds' mean balance (absent with one seed)."""
    agreement = seed_agreement([trainer.last_clusters[i] for i in reported])
    if agreement is None:
        return {}
    return {SEED_AGREEMENT: agreement, LABEL_FREE: label_free_score(agreement, combined[BALANCE])}


@torch.no_grad()
def predict(trainer, held_out_views: bool, image_features: list | None = None) -> list[torch.Tensor]:
    """Main-head probabilities of every image, (S, N, k) per sub-head: of the images
    themselves, or of each model's held-out augmented views of them. ``image_features``, a list,
    gets the backbone features the heads read, (S, batch, F) per evaluation batch."""
    trainer.model.eval()
    outputs = []
    count = len(trainer.inits)
    for start in range(0, len(trainer.images), trainer.config.eval_batch_size):
        stop = min(start + trainer.config.eval_batch_size, len(trainer.images))
        with torch.autocast(trainer.device.type, dtype=torch.bfloat16, enabled=trainer.amp):
            if trainer.cached_features is not None:  # held-out views without augmentation are the images
                features = trainer.cached_features[start:stop].expand(count, -1, -1)
            elif trainer.fixed_views is not None:  # one fixed held-out view, shared by the models
                indices = torch.arange(start, stop, device=trainer.device)
                fixed = trainer.fixed_views
                features = (fixed.held_out(indices) if held_out_views else fixed.of_images(indices)).expand(
                    count, -1, -1
                )
            elif held_out_views:
                draws = [draw[start:stop] for draw in trainer.held_out_draws]
                batch = trainer.prepare(trainer.images[start:stop].repeat(count, 1, 1, 1), draws)
                features = trainer.model.features(batch.unflatten(0, (count, stop - start)))
            else:
                features = trainer.model.features_of_same_images(trainer.prepare(trainer.images[start:stop], None))
            outputs.append(trainer.model.classify(features, "main"))
            if image_features is not None:
                image_features.append(features)
    trainer.model.train()
    return [torch.cat(per_subhead, dim=1) for per_subhead in zip(*outputs, strict=True)]

"""Self-labelling: a clustering head trained on its own confident assignments."""

import torch
from torch import nn

SELF_LABEL_SHARE = "self_label_share"  # metric: the share of images confident enough to be pseudo-labels


class SelfLabelLoss(nn.Module):
    """Self-labelling loss of SCAN (Van Gansbeke, Vandenhende, Georgoulis, Proesmans, Van Gool,
    "SCAN: Learning to Classify Images without Labels", ECCV 2020, arXiv:2005.12320, section 2.3).

    The images a head assigns with probability above ``threshold`` become pseudo-labels (their
    most likely cluster); the head is then trained with cross-entropy to give the same cluster to
    augmented views of those images. Each cluster's images are weighted by the inverse of how many
    confident images it has, so that a large cluster does not grow at the others' expense: the
    loss is the mean over the clusters present of their mean cross-entropy. No gradient flows
    through the pseudo-labels. A batch with no confident image gives 0 (and no gradient).

    Inputs may carry leading batch dimensions, ``(..., N, k)``: several independent heads (one per
    seed, say) then get one loss each, of shape ``(...)``.

    Args:
        threshold: the probability above which an image's assignment becomes its pseudo-label
            (SCAN: 0.99).

    Example:
        >>> criterion = SelfLabelLoss(threshold=0.99)
        >>> p = model(images).softmax(dim=1)                # (N, k): the pseudo-labels' source
        >>> p_view = model(augment(images)).softmax(dim=1)  # (N, k)
        >>> loss = criterion(p, p_view)
        >>> loss.backward()
    """

    def __init__(self, threshold: float = 0.99):
        super().__init__()
        self.threshold = threshold

    def forward(self, p: torch.Tensor, p_view: torch.Tensor) -> torch.Tensor:
        if p.shape != p_view.shape or p.dim() < 2:
            raise ValueError(
                f"SelfLabelLoss expects two (..., N, k) tensors of equal shape, got {tuple(p.shape)} and {tuple(p_view.shape)}"
            )
        confidence, pseudo_labels = p.detach().float().max(dim=-1)
        # (..., N, k): 1 at an image's pseudo-label where it is confident, else 0.
        chosen = nn.functional.one_hot(pseudo_labels, p.shape[-1]) * (confidence > self.threshold).unsqueeze(-1)
        counts = chosen.sum(dim=-2)
        cross_entropy = -(chosen * p_view.float().clamp(min=torch.finfo(torch.float32).tiny).log()).sum(dim=-2)
        per_cluster = cross_entropy / counts.clamp(min=1)
        return per_cluster.sum(dim=-1) / (counts > 0).sum(dim=-1).clamp(min=1)

    @torch.no_grad()
    def confident_share(self, p: torch.Tensor) -> torch.Tensor:
        """The share of images whose assignment in ``p`` (..., N, k) is confident enough to become a pseudo-label, (...)."""
        return (p.float().max(dim=-1).values > self.threshold).float().mean(dim=-1)

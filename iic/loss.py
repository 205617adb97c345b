"""The IIC objective: mutual information between the cluster assignments of paired views."""

import sys

import torch
from torch import nn


class IICLoss(nn.Module):
    """Invariant Information Clustering loss (Ji, Henriques, Vedaldi, "Invariant Information
    Clustering for Unsupervised Image Classification and Segmentation", ICCV 2019,
    arXiv:1807.06653).

    Given the softmax outputs ``p`` of a batch and ``p_twin`` of its augmented twins, the joint
    distribution of the two cluster assignments is estimated as P = pᵀ p_twin / N, symmetrised and
    normalised; the loss is ``-Σ P (log P - λ log Pᵢ - λ log Pⱼ)`` where Pᵢ, Pⱼ are its marginals.
    With λ = 1 this is minus the mutual information I(z, z'), whose minimum is -ln k: every image and
    its twin confidently in the same cluster, clusters equally used. λ > 1 pushes harder towards
    balanced clusters. Entries are clamped at machine epsilon so log never sees 0.

    Inputs may carry leading batch dimensions, ``(..., N, k)``: several independent models (one
    per seed, say) then get one loss each, of shape ``(...)``.

    Args:
        lamb: weight λ of the marginal entropy terms (1.0 in all of the paper's experiments).

    Example:
        >>> criterion = IICLoss()
        >>> logits = model(images)                 # (N, k)
        >>> logits_twin = model(augment(images))   # (N, k)
        >>> loss = criterion(logits.softmax(dim=1), logits_twin.softmax(dim=1))
        >>> loss.backward()
    """

    def __init__(self, lamb: float = 1.0):
        super().__init__()
        self.lamb = lamb

    def forward(self, p: torch.Tensor, p_twin: torch.Tensor) -> torch.Tensor:
        if p.shape != p_twin.shape or p.dim() < 2:
            raise ValueError(
                "IICLoss expects two (..., N, k) tensors of equal "
                f"shape, got {tuple(p.shape)} and {tuple(p_twin.shape)}"
            )
        # Log of tiny probabilities needs full precision even under autocast.
        joint = joint_distribution(p.float(), p_twin.float())
        eps = sys.float_info.epsilon
        joint = joint.clamp(min=eps)
        marginal_i = joint.sum(dim=-1, keepdim=True)
        marginal_j = joint.sum(dim=-2, keepdim=True)
        return -(joint * (joint.log() - self.lamb * marginal_i.log() - self.lamb * marginal_j.log())).sum(dim=(-2, -1))


def joint_distribution(p: torch.Tensor, p_twin: torch.Tensor) -> torch.Tensor:
    """Symmetrised, normalised k×k joint distribution of the assignments of paired views
    (``(..., N, k)`` inputs give ``(..., k, k)``)."""
    joint = p.transpose(-2, -1) @ p_twin / p.shape[-2]
    joint = (joint + joint.transpose(-2, -1)) / 2
    # A batch of all-but-zero probabilities would otherwise divide 0 by 0.
    return joint / joint.sum(dim=(-2, -1), keepdim=True).clamp(min=torch.finfo(joint.dtype).tiny)


def mutual_information(p: torch.Tensor, p_twin: torch.Tensor) -> float:
    """I(z, z') in nats between paired assignments: the label-free measure of how well a model
    clusters (λ = 1, so it is exactly -IICLoss)."""
    return -IICLoss(lamb=1.0)(p, p_twin).item()

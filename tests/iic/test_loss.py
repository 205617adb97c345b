import math

import torch

from iic.loss import IICLoss, joint_distribution, mutual_information


def test_confident_balanced_agreement_reaches_minus_log_k():
    k = 5
    p = torch.eye(k).repeat(4, 1)  # every cluster used equally, twin agrees exactly
    assert math.isclose(IICLoss()(p, p.clone()).item(), -math.log(k), rel_tol=1e-5)


def test_uniform_independent_predictions_give_zero():
    p = torch.full((32, 4), 0.25)
    assert abs(IICLoss()(p, p.clone()).item()) < 1e-6


def test_collapsed_clustering_carries_no_information():
    p = torch.zeros(16, 3)
    p[:, 0] = 1.0  # everything in one cluster: confident but useless
    assert abs(IICLoss()(p, p.clone()).item()) < 1e-4


def test_disagreeing_twins_score_worse_than_agreeing_ones():
    p = torch.eye(4).repeat(8, 1)
    shuffled = p[torch.randperm(len(p), generator=torch.Generator().manual_seed(0))]
    criterion = IICLoss()
    assert criterion(p, shuffled).item() > criterion(p, p).item() + 0.5


def test_joint_distribution_is_symmetric_and_normalised():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(10, 3, generator=g).softmax(1)
    q = torch.rand(10, 3, generator=g).softmax(1)
    joint = joint_distribution(p, q)
    assert torch.allclose(joint, joint.t())
    assert math.isclose(joint.sum().item(), 1.0, rel_tol=1e-6)


def test_gradients_are_finite_for_one_hot_and_near_zero_inputs():
    extreme = (torch.randn(6, 3, generator=torch.Generator().manual_seed(0)) * 1000).softmax(1)
    for p in (torch.eye(3).repeat(2, 1), extreme, torch.full((6, 3), 1e-30)):
        p = p.clone().requires_grad_(True)
        twin = p.detach().clone().requires_grad_(True)
        IICLoss()(p, twin).backward()
        assert torch.isfinite(p.grad).all() and torch.isfinite(twin.grad).all()


def test_lambda_above_one_favours_balanced_clusters_more():
    unbalanced = torch.zeros(10, 2)
    unbalanced[:8, 0] = 1
    unbalanced[8:, 1] = 1
    balanced = torch.eye(2).repeat(5, 1)

    def gap(lamb):
        criterion = IICLoss(lamb=lamb)
        return criterion(unbalanced, unbalanced).item() - criterion(balanced, balanced).item()

    assert 0 < gap(1.0) < gap(2.0)


def test_mutual_information_is_minus_the_lambda_one_loss():
    p = torch.eye(3).repeat(3, 1)
    assert math.isclose(mutual_information(p, p), math.log(3), rel_tol=1e-5)


def test_rejects_mismatched_shapes():
    import pytest

    with pytest.raises(ValueError, match="equal shape"):
        IICLoss()(torch.rand(4, 3), torch.rand(4, 2))


def test_leading_dimensions_give_one_loss_per_model():
    p = torch.rand(3, 40, 5).softmax(-1)
    p_twin = torch.rand(3, 40, 5).softmax(-1)
    batched = IICLoss(lamb=1.3)(p, p_twin)
    assert batched.shape == (3,)
    for index in range(3):
        assert torch.allclose(batched[index], IICLoss(lamb=1.3)(p[index], p_twin[index]))

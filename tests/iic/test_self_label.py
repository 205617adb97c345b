import pytest
import torch

from iic.self_label import SelfLabelLoss


def _cross_entropy(probability: float) -> torch.Tensor:
    return -torch.log(torch.tensor(probability))


def test_each_cluster_weighs_the_same_however_many_confident_images_it_has():
    # cluster 0: two confident images (views at 0.9 and 0.8); cluster 1: one (view at 0.8); one unsure image
    p = torch.tensor([[0.95, 0.05], [0.5, 0.5], [0.05, 0.95], [0.96, 0.04]])
    p_view = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.2, 0.8], [0.8, 0.2]], requires_grad=True)
    loss = SelfLabelLoss(threshold=0.9)(p, p_view)
    expected = ((_cross_entropy(0.9) + _cross_entropy(0.8)) / 2 + _cross_entropy(0.8)) / 2
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert p_view.grad[1].abs().sum() == 0  # the unsure image teaches nothing
    # the lone image of cluster 1 pulls twice as hard as each of cluster 0's two
    assert p_view.grad[2, 1] == pytest.approx(-0.5 / 0.8) and p_view.grad[0, 0] == pytest.approx(-0.25 / 0.9)


def test_no_gradient_flows_through_the_pseudo_labels():
    p = torch.tensor([[0.99, 0.01], [0.02, 0.98]], requires_grad=True)
    SelfLabelLoss(threshold=0.9)(p, torch.tensor([[0.7, 0.3], [0.4, 0.6]], requires_grad=True)).backward()
    assert p.grad is None


def test_a_batch_without_confident_images_gives_zero_and_no_gradient():
    p_view = torch.full((4, 3), 1 / 3, requires_grad=True)
    loss = SelfLabelLoss(threshold=0.99)(torch.full((4, 3), 1 / 3), p_view)
    loss.backward()
    assert loss.item() == 0 and p_view.grad.abs().sum() == 0


def test_leading_dimensions_give_one_loss_per_model():
    generator = torch.Generator().manual_seed(0)
    p = torch.randn(3, 2, 16, 4, generator=generator).mul(4).softmax(dim=-1)
    p_view = torch.randn(3, 2, 16, 4, generator=generator).softmax(dim=-1)
    criterion = SelfLabelLoss(threshold=0.8)
    losses = criterion(p, p_view)
    assert losses.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            assert losses[i, j].item() == pytest.approx(criterion(p[i, j], p_view[i, j]).item())
    assert criterion.confident_share(p).shape == (3, 2)
    assert criterion.confident_share(p[0, 0]).item() == (p[0, 0].max(dim=-1).values > 0.8).float().mean().item()


def test_shapes_that_do_not_match_are_refused():
    with pytest.raises(ValueError, match="two .* tensors of equal shape"):
        SelfLabelLoss()(torch.ones(4, 2) / 2, torch.ones(4, 3) / 3)

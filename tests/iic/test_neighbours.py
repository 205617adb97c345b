import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from iic.data import load_dataset
from iic.neighbours import nearest_neighbours, pair_candidates


def test_neighbours_are_the_most_cosine_similar_other_rows_nearest_first():
    vectors = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.2, 0.8], [-1.0, 0.1]])
    neighbours = nearest_neighbours(
        vectors * torch.tensor([[1.0], [10.0], [1.0], [3.0], [1.0]]), k=2
    )  # lengths do not matter
    assert neighbours.tolist() == [[1, 3], [0, 3], [3, 1], [2, 1], [2, 3]]


@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
def test_neighbours_match_scikit_learn_whatever_the_chunk_size(chunk_size):
    vectors = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    ours = nearest_neighbours(vectors, k=4, chunk_size=chunk_size)
    _, theirs = NearestNeighbors(n_neighbors=5, metric="cosine").fit(vectors.numpy()).kneighbors(vectors.numpy())
    assert np.array_equal(ours.numpy(), theirs[:, 1:])  # scikit-learn lists each row itself first


def test_pixel_neighbours_of_digits_mostly_share_their_class():
    data = load_dataset("digits", None, input_size=16)
    neighbours = nearest_neighbours(data.images, k=5)
    assert (data.labels[neighbours] == data.labels[:, None]).float().mean() > 0.95


def test_candidates_are_each_image_then_its_neighbours():
    neighbours = torch.tensor([[1, 2], [2, 0], [0, 1]])
    assert pair_candidates(neighbours).tolist() == [[0, 1, 2], [1, 2, 0], [2, 0, 1]]


@pytest.mark.parametrize("k", [0, 5])
def test_k_must_leave_other_rows(k):
    with pytest.raises(ValueError, match="k must be from 1 to 4"):
        nearest_neighbours(torch.randn(5, 3), k=k)

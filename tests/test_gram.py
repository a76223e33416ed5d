"""The Gram matrix against its definition, written out element by element."""

import pytest
import torch

from engine.style.gram import gram_matrix


def test_gram_matches_the_definition_element_by_element():
    torch.manual_seed(0)
    features = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    gram = gram_matrix(features)
    n, c, h, w = features.shape
    for b in range(n):
        for i in range(c):
            for j in range(c):
                expected = sum(features[b, i, y, x] * features[b, j, y, x] for y in range(h) for x in range(w)) / (c * h * w)
                assert gram[b, i, j].item() == pytest.approx(expected.item(), rel=1e-12)


def test_gram_is_symmetric_and_independent_of_area_for_a_tiled_texture():
    torch.manual_seed(1)
    tile = torch.rand(1, 4, 6, 6)
    larger = tile.repeat(1, 1, 3, 2)  # the same statistics over six times the area
    assert torch.allclose(gram_matrix(tile), gram_matrix(larger), atol=1e-6)
    assert torch.allclose(gram_matrix(tile), gram_matrix(tile).transpose(1, 2))


def test_gram_rejects_features_without_space():
    with pytest.raises(ValueError, match="N x C x H x W"):
        gram_matrix(torch.zeros(2, 3))


def _gram_by_definition(x):
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)


def test_gram_value_and_gradient_match_plain_autograd_in_either_memory_layout():
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.rand(2, 3, 4, 5, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_(True)
        assert torch.allclose(gram_matrix(x), _gram_by_definition(x))
        assert torch.autograd.gradcheck(gram_matrix, (x,))
        weights = torch.rand(2, 3, 3, dtype=torch.float64)
        ours, = torch.autograd.grad((gram_matrix(x) * weights).sum(), x)
        reference, = torch.autograd.grad((_gram_by_definition(x) * weights).sum(), x)
        assert torch.allclose(ours, reference)

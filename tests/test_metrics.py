"""Agreement metrics against direct computation on synthetic ground truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lacbed_refine.metrics import best_dihedral_shift_r, best_shift_lmse, best_shift_r, error_map, lmse, masked_pearson_r, minmax, pearson_r, zmcc


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(3, 16, 16, generator=g, dtype=torch.float64), torch.rand(3, 16, 16, generator=g, dtype=torch.float64)


def test_pearson_zmcc_lmse_match_numpy(images):
    a, b = images
    for i in range(3):
        r = np.corrcoef(a[i].ravel(), b[i].ravel())[0, 1]
        assert pearson_r(a, b)[i].item() == pytest.approx(r, abs=1e-12)
        assert zmcc(a, b)[i].item() == pytest.approx(0.5 + 0.5 * r, abs=1e-12)
        assert lmse(a, b)[i].item() == pytest.approx(float(((a[i] - b[i]) ** 2).mean()), abs=1e-15)
    assert error_map(a, b).shape == a.shape
    assert pearson_r(a, 3 * a + 1).allclose(torch.ones(3, dtype=torch.float64))
    m = minmax(a * 5 - 2)
    assert m.amin().item() == 0 and m.amax().item() == 1


def test_masked_pearson_uses_only_the_masked_pixels(images):
    a, b = images[0][0], images[1][0]
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[3:11, 2:14] = True
    r = np.corrcoef(a[mask].numpy(), b[mask].numpy())[0, 1]
    assert masked_pearson_r(a, b, mask).item() == pytest.approx(r, abs=1e-12)
    assert masked_pearson_r(a, b).item() == pytest.approx(pearson_r(a, b).item(), abs=1e-12)
    c = b.clone()
    c[~mask] = 1e6  # what lies outside the mask never matters
    assert masked_pearson_r(a, c, mask).item() == pytest.approx(r, abs=1e-12)


def test_best_shift_recovers_a_known_circular_shift(images):
    a, _ = images
    shifted = torch.roll(a, shifts=(3, -5), dims=(-2, -1))
    assert (pearson_r(a, shifted) < 0.5).all()
    r, shift = best_shift_r(a, shifted)
    torch.testing.assert_close(r, torch.ones(3, dtype=torch.float64))
    for i in range(3):
        torch.testing.assert_close(torch.roll(shifted[i], tuple(shift[i].tolist()), (-2, -1)), a[i])
    torch.testing.assert_close(best_shift_lmse(a, shifted), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    # brute force agrees on an unrelated pair
    b = images[1][0]
    brute = max(np.corrcoef(a[0].ravel(), torch.roll(b, (i, j), (0, 1)).ravel())[0, 1] for i in range(16) for j in range(16))
    assert best_shift_r(a[0], b)[0].item() == pytest.approx(brute, abs=1e-12)


def test_dihedral_and_shift_insensitive(images):
    a, _ = images
    other = torch.rot90(torch.roll(a, (2, 7), (-2, -1)), 1, (-2, -1)).flip(-1)
    assert (best_shift_r(a, other)[0] < 0.6).all()
    torch.testing.assert_close(best_dihedral_shift_r(a, other), torch.ones(3, dtype=torch.float64))

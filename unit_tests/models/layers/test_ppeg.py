"""PPEG: equals torchmil's PPEG on one square grid; bags with different grid sides batch exactly."""
from __future__ import annotations

import pytest
import torch

from milkit.models.layers.ppeg import PPEG


def test_matches_torchmil_ppeg_on_a_square_grid() -> None:
    ref_mod = pytest.importorskip("torchmil.models.transmil")
    ref, ours = ref_mod.PPEG(6), PPEG(6)
    ours.load_state_dict(ref.state_dict())  # same parameter names as the official code
    tokens = torch.randn(2, 16, 6)
    cls = torch.randn(2, 1, 6)
    expected = ref(torch.cat([cls, tokens], 1), 4, 4)[:, 1:]
    torch.testing.assert_close(ours(tokens, [4, 4]), expected)


def test_mixed_grid_sides_equal_each_bag_alone() -> None:
    ppeg = PPEG(5)
    sides = [4, 2, 3]
    tokens = torch.randn(3, 16, 5)
    out = ppeg(tokens, sides)
    for i, s in enumerate(sides):
        alone = ppeg(tokens[i : i + 1, : s * s], [s])
        torch.testing.assert_close(out[i, : s * s], alone[0], atol=1e-6, rtol=1e-5)
        assert (out[i, s * s :] == 0).all()

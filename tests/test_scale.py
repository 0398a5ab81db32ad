"""Server cost at scale: the blockwise Gramian (float32 block products, float64 sum)."""

from __future__ import annotations

import pytest
import torch

from strategies.balancing import build_weighting, linalg


def test_blockwise_gramian_matches_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 64 columns, chunks of 3 blocks and a remainder: G within float32 block error."""
    J = torch.randn(5, 1000, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(linalg, "FLOAT32_MIN_ELEMENTS", 0)
    monkeypatch.setattr(linalg, "BLOCK_COLUMNS", 64)
    monkeypatch.setattr(linalg, "CHUNK_ELEMENTS", 5 * 64 * 3)
    G = linalg.gramian(J)
    exact = J.double() @ J.double().T
    assert G.dtype == torch.float64 and G.device.type == "cpu"
    torch.testing.assert_close(G, G.T, rtol=0, atol=0)
    scale = exact.diagonal().max()
    assert float((G - exact).abs().max() / scale) < 1e-6


def test_float64_and_small_inputs_keep_the_float64_gramian() -> None:
    J = torch.randn(3, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(linalg.gramian(J), J @ J.T)
    small = J.float()
    torch.testing.assert_close(linalg.gramian(small), small.double() @ small.double().T)


@pytest.mark.parametrize("name", ["mgda", "upgrad"])
def test_weights_from_the_blockwise_gramian_match(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    J = torch.randn(6, 4096, generator=torch.Generator().manual_seed(2))
    exact = build_weighting(name).weights(J.double())
    monkeypatch.setattr(linalg, "FLOAT32_MIN_ELEMENTS", 0)
    monkeypatch.setattr(linalg, "BLOCK_COLUMNS", 512)
    blockwise = build_weighting(name).weights(J)
    torch.testing.assert_close(blockwise.double(), exact, rtol=1e-5, atol=1e-6)

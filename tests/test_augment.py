"""Augmentation: the official distributions, determinism under a seeded generator, purity."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ssamba.audio import AugmentConfig
from ssamba.audio.augment import add_noise_and_roll, freq_mask, mix_targets, mix_waveforms, sample_mix_lambda, \
    time_mask


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _masked_span(masked: torch.Tensor, dim: int) -> list[int]:
    """Indices along ``dim`` that were zeroed entirely."""
    other = 1 - (dim % 2)
    return torch.nonzero((masked == 0).all(dim=other)).flatten().tolist()


@pytest.mark.parametrize(("fn", "dim", "size"), [(freq_mask, 1, 128), (time_mask, 0, 100)])
def test_masks_are_one_contiguous_band_narrower_than_the_limit(fn, dim: int, size: int) -> None:
    x = torch.rand(100, 128) + 1.0  # no natural zeros
    original = x.clone()
    widths = []
    for seed in range(300):
        out = fn(x, 24, _gen(seed))
        span = _masked_span(out, dim)
        widths.append(len(span))
        if span:
            assert span == list(range(span[0], span[-1] + 1)) and span[-1] < size
        keep = torch.ones(size, dtype=torch.bool)
        keep[span] = False
        assert torch.equal(out.index_select(dim, torch.nonzero(keep).flatten()),
                           x.index_select(dim, torch.nonzero(keep).flatten()))
    assert min(widths) == 0 and max(widths) == 23  # width = floor(U * 24) in 0..23
    assert abs(np.mean(widths) - 11.5) < 1.5
    assert torch.equal(fn(x, 24, _gen(7)), fn(x, 24, _gen(7)))  # same generator state, same mask
    assert torch.equal(x, original)  # pure: the input is never modified
    assert fn(x, 0, _gen(0)) is x  # width 0 disables


def _recover_shift(x: torch.Tensor, out: torch.Tensor) -> int | None:
    """The roll ``s`` for which ``out - roll(x, s)`` is a valid noise field (every value in [0, 0.1))."""
    for s in range(-10, 10):
        noise = out - torch.roll(x, s, 0)
        if (noise >= 0).all() and (noise < 0.1).all():
            return s
    return None


def test_noise_is_below_a_tenth_and_the_roll_covers_minus_10_to_9() -> None:
    x = torch.arange(100.0)[:, None].repeat(1, 128)  # row t holds t, so the roll is identifiable
    shifts = {_recover_shift(x, add_noise_and_roll(x, _gen(seed))) for seed in range(400)}
    assert shifts == set(range(-10, 10))  # numpy's randint(-10, 10) excludes 10; None never occurs
    assert torch.equal(add_noise_and_roll(x, _gen(3)), add_noise_and_roll(x, _gen(3)))


def test_mixup_lambda_is_beta_10_10_and_reproducible() -> None:
    g = _gen(0)
    draws = np.array([sample_mix_lambda(g) for _ in range(4000)])
    assert abs(draws.mean() - 0.5) < 0.01
    assert abs(draws.std() - np.sqrt(1 / (4 * 21))) < 0.01  # Beta(a, a) variance: 1 / (4 (2a + 1))
    assert sample_mix_lambda(_gen(5)) == sample_mix_lambda(_gen(5))


def test_mix_waveforms_follows_the_official_recipe() -> None:
    first = torch.rand(1000) + 0.5
    second = torch.rand(600) - 2.0
    mixed = mix_waveforms(first, second, 0.3)
    a = first - first.mean()
    b = torch.nn.functional.pad(second - second.mean(), (0, 400))
    expected = 0.3 * a + 0.7 * b
    torch.testing.assert_close(mixed, expected - expected.mean())
    assert abs(float(mixed.mean())) < 1e-6
    assert mix_waveforms(first, torch.rand(3000), 0.5).shape == (1000,)  # longer partner is cut


def test_soft_labels() -> None:
    y = mix_targets(torch.tensor([1.0, 0, 0]), torch.tensor([0, 0, 1.0]), 0.25)
    torch.testing.assert_close(y, torch.tensor([0.25, 0, 0.75]))


def test_config_validation() -> None:
    assert AugmentConfig() == AugmentConfig(0, 0, 0.0, 10.0, False)
    for bad in ({"freqm": -1}, {"mixup": 1.5}, {"mixup_alpha": 0.0}):
        with pytest.raises(ValueError):
            AugmentConfig(**bad)

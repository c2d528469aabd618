"""DiffAugment: each transform does what the paper describes, is differentiable and seeded."""

from __future__ import annotations

import pytest
import torch

from medvol.models.gan2d.diffaugment import color, cutout, diff_augment, parse_policy, translation


def _image(b=6, c=1, s=16):
    return torch.arange(b * c * s * s, dtype=torch.float64).reshape(b, c, s, s) + 1


def test_translation_is_a_zero_filled_shift_within_an_eighth():
    x = _image()
    out = translation(x, torch.Generator().manual_seed(0))
    shifts = []
    for b in range(x.shape[0]):
        found = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                padded = torch.nn.functional.pad(x[b], (2, 2, 2, 2))
                shifted = padded[:, 2 + dy:18 + dy, 2 + dx:18 + dx]
                if torch.equal(shifted, out[b]):
                    found.append((dy, dx))
        assert len(found) == 1, b
        shifts += found
    assert len(set(shifts)) > 1  # per-sample draws


def test_cutout_zeroes_one_square_of_half_the_side():
    x = _image(b=32)
    out = cutout(x, torch.Generator().manual_seed(0))
    zeroed = out == 0
    assert torch.equal(out[~zeroed], x[~zeroed])
    counts = zeroed.flatten(1).sum(1)
    assert int(counts.max()) == 8 * 8 and int(counts.min()) >= 4 * 4
    b = int(counts.argmax())
    rows, cols = zeroed[b, 0].any(1).nonzero(), zeroed[b, 0].any(0).nonzero()
    assert int(rows.max() - rows.min()) == 7 and int(cols.max() - cols.min()) == 7


def test_color_ranges():
    x = torch.zeros(64, 1, 4, 4)
    out = color(x, torch.Generator().manual_seed(0))
    # A constant image: saturation and contrast keep it constant; brightness adds U[-0.5, 0.5].
    per_sample = out.flatten(1)
    assert torch.allclose(per_sample, per_sample[:, :1].expand_as(per_sample))
    assert float(per_sample.abs().max()) <= 0.5 and float(per_sample.std()) > 0.1
    y = torch.tensor([-1.0, 1.0]).repeat(64, 1, 2, 1).reshape(64, 1, 2, 2)
    spread = color(y, torch.Generator().manual_seed(1)).flatten(1)
    ratio = (spread.max(1).values - spread.min(1).values) / 2
    assert 0.5 - 1e-6 <= float(ratio.min()) and float(ratio.max()) <= 1.5 + 1e-6


def test_differentiable_and_seeded():
    x = torch.randn(4, 2, 16, 16, requires_grad=True)
    policy = parse_policy("color,translation,cutout")
    a = diff_augment(x, policy, torch.Generator().manual_seed(3))
    b = diff_augment(x, policy, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    a.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_parse_policy():
    assert parse_policy("") == ()
    assert parse_policy(" color , cutout ") == ("color", "cutout")
    with pytest.raises(ValueError, match="flip"):
        parse_policy("flip")
    with pytest.raises(ValueError, match="repeated"):
        parse_policy("color,color")

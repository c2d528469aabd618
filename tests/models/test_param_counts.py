"""Trainable parameter counts at the published configurations (built on the meta device)."""

import json

import pytest
import torch

from medvol.cli import main
from medvol.models import build

# shared/DESIGN.md, in millions: G, D, E, extra (CRF W entries or sub-encoder), total.
PUBLISHED = {
    ("crfgan", 64): (52.45, 4.47, 0.16, 16 * 16, 57.08),
    ("crfgan", 128): (52.45, 4.60, 0.16, 32 * 32, 57.21),
    ("crfgan", 256): (52.45, 4.63, 0.16, 64 * 64, 57.24),
    ("hagan", 128): (52.52, 7.24, 0.16, 19.66e6, 79.58),
    ("hagan", 256): (52.52, 7.40, 0.16, 19.66e6, 79.74),
}


def _counts(name, size, **options):
    with torch.device("meta"):
        return build(name, size, **options).param_counts()


@pytest.mark.parametrize("name,size", sorted(PUBLISHED))
def test_published_counts(name, size):
    g, d, e, extra, total = PUBLISHED[(name, size)]
    counts = _counts(name, size)
    key = "crf" if name == "crfgan" else "sub_E"
    # Published figures are rounded to 0.01M: allow that rounding or 0.1%, whichever is larger.
    for got, want in ((counts["G"], g), (counts["D"], d), (counts["E"], e), (counts["total"], total)):
        assert abs(got - want * 1e6) <= max(0.001 * want * 1e6, 0.005e6), (got, want)
    if name == "crfgan":
        assert counts[key] == extra  # an N x N compatibility matrix, N = S/4 nodes
    else:
        assert abs(counts[key] - extra) <= 0.005e6
    assert counts["total"] == counts["G"] + counts["D"] + counts["E"] + counts[key]


def test_generator_is_shared_across_sizes():
    # The trunk is size-independent: only where the upsamplings sit changes.
    assert len({_counts("crfgan", s)["G"] for s in (32, 64, 128, 256, 512)}) == 1
    assert len({_counts("hagan", s)["G"] for s in (32, 64, 128, 256, 512)}) == 1


def test_conditional_adds_label_inputs_and_heads():
    plain, cond = _counts("hagan", 128), _counts("hagan", 128, num_classes=3)
    # G: 3 more fc inputs (x 64*16c outputs); D: D^H class head (3 x (w/8 + 1)) + D^L 3 more outputs.
    assert cond["G"] - plain["G"] == 3 * 64 * 512
    assert cond["D"] - plain["D"] == 3 * (64 + 1) + 3 * (256 * 64 + 1)


def test_info_json(capsys):
    assert main(["info", "--model", "crfgan", "--size", "256", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts == _counts("crfgan", 256)
    assert list(counts) == ["G", "D", "E", "crf", "total"]


def test_info_table_and_options(capsys):
    assert main(["info", "--model", "hagan", "--size", "64", "--base-width", "8", "--latent-dim", "64"]) == 0
    text = capsys.readouterr().out
    counts = _counts("hagan", 64, base_width=8, latent_dim=64)
    assert "sub_E" in text and f"{counts['total']:,}" in text


def test_info_bad_size_exits_2(capsys):
    assert main(["info", "--model", "hagan", "--size", "100"]) == 2
    err = capsys.readouterr().err
    assert "size" in err and len(err.strip().splitlines()) == 1

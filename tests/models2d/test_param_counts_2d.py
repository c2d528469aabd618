"""Parameter counts: the thesis's fully connected GAN exactly, DCGAN against its layer formula."""

from __future__ import annotations

import json

import pytest

from medvol import cli
from medvol.models import build


def test_mlpgan_thesis_counts():
    counts = build("mlpgan", 64).param_counts()
    assert counts == {"G": 4_881_152, "D": 2_229_249, "total": 7_110_401}


def test_mlpgan_layers():
    system = build("mlpgan", 64)
    linears = [(m.in_features, m.out_features) for m in system.G.modules() if hasattr(m, "in_features")]
    assert linears == [(100, 256), (256, 512), (512, 1024), (1024, 4096)]
    linears = [(m.in_features, m.out_features) for m in system.D.modules() if hasattr(m, "in_features")]
    assert linears == [(4096, 512), (512, 256), (256, 1)]
    assert not any("Norm" in type(m).__name__ for m in system.modules())


def _dcgan_counts(size: int, c: int, latent: int, channels: int) -> tuple[int, int]:
    """Weights 4x4 without bias, BatchNorm scale + shift on every hidden layer but D's first."""
    n = size.bit_length() - 3
    w = [c * min(2 ** (n - 1 - i), 8) for i in range(n)]
    g = latent * w[0] * 16 + sum(a * b * 16 for a, b in zip(w, w[1:])) + w[-1] * channels * 16 + 2 * sum(w)
    r = w[::-1]
    d = channels * r[0] * 16 + sum(a * b * 16 for a, b in zip(r, r[1:])) + r[-1] * 16 + 2 * sum(r[1:])
    return g, d


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_dcgan_counts(size):
    g, d = _dcgan_counts(size, 64, 100, 1)
    assert build("dcgan", size).param_counts() == {"G": g, "D": d, "total": g + d}


def test_dcgan_64_is_the_classic_count():
    # The widely quoted DCGAN 64x64 counts (3 channels: G 3,576,704, D 2,765,568) less the two
    # colour channels' 4x4 x 64 weights each.
    assert build("dcgan", 64).param_counts() == {"G": 3_576_704 - 2048, "D": 2_765_568 - 2048,
                                                 "total": 3_576_704 + 2_765_568 - 4096}


def test_spectral_norm_adds_no_parameters():
    plain = build("dcgan", 32, base_width=8).param_counts()
    assert build("dcgan", 32, base_width=8, spectral_norm_d=True, spectral_norm_g=True).param_counts() == plain


def test_info_json(capsys):
    assert cli.main(["info", "--model", "mlpgan", "--size", "64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"G": 4_881_152, "D": 2_229_249, "total": 7_110_401}
    assert cli.main(["info", "--model", "dcgan", "--size", "128", "--json"]) == 0
    g, d = _dcgan_counts(128, 64, 100, 1)
    assert json.loads(capsys.readouterr().out) == {"G": g, "D": d, "total": g + d}


def test_info_bad_option_is_one_line_exit_2(capsys):
    assert cli.main(["info", "--model", "dcgan", "--size", "64", "--option", "loss=foo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "loss" in err

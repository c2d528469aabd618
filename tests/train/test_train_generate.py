"""Generation: deterministic per seed, NIfTI in HU with the training spacing, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from medvol import cli
from medvol.data.datasets import CachedVolumeDataset
from medvol.data.io import read_volume
from medvol.errors import MedvolError
from medvol.train.generate import generate_volumes
from medvol.train.trainer import train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_config_fn):
    cfg = tiny_config_fn(tmp_path_factory.mktemp("gen") / "run", name="crfgan", iterations=2)
    return train(cfg)


def test_generate_is_deterministic_and_writes_hu_nifti(run_dir, phantom_cache, tmp_path):
    first = generate_volumes(run_dir, 2, tmp_path / "a", seed=5)
    again = generate_volumes(run_dir, 1, tmp_path / "b", seed=5)
    other = generate_volumes(run_dir, 1, tmp_path / "c", seed=6)
    assert [p.name for p in first] == ["sample_0000.nii.gz", "sample_0001.nii.gz"]
    a0, a1 = (read_volume(p) for p in first)
    b0, c0 = read_volume(again[0]), read_volume(other[0])
    assert a0.array.shape == (32, 32, 32)
    np.testing.assert_array_equal(a0.array, b0.array)
    assert not np.array_equal(a0.array, a1.array) and not np.array_equal(a0.array, c0.array)
    # HU: the inverse of the [-1024, 600] window, not [-1, 1].
    assert a0.array.min() >= -1024.5 and a0.array.max() <= 600.5 and a0.array.max() - a0.array.min() > 2
    expected = CachedVolumeDataset(phantom_cache).spacing
    np.testing.assert_allclose(a0.spacing, expected, rtol=1e-5)
    tiled = read_volume(generate_volumes(run_dir, 1, tmp_path / "t", seed=5, tile_depth=2)[0])
    np.testing.assert_allclose(tiled.array, a0.array, atol=1e-2)


def test_generate_cli_and_errors(run_dir, tmp_path, capsys):
    assert cli.main(["generate", "--ckpt", str(run_dir), "--n", "1", "--out", str(tmp_path / "o"),
                     "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "sample_0000.nii.gz" in out and "peak memory" in out
    with pytest.raises(MedvolError, match="not class-conditional"):
        generate_volumes(run_dir, 1, tmp_path / "x", label=1)
    for argv in (["--ckpt", str(tmp_path / "nope.pt")], ["--ckpt", str(run_dir), "--n", "0"],
                 ["--ckpt", str(tmp_path)]):
        assert cli.main(["generate", "--out", str(tmp_path / "y"), *argv]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1

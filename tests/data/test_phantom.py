"""The procedural chest-CT phantom: determinism, realistic HU per tissue, variation, files."""

import numpy as np
import pytest

from medvol.data.io import read_volume
from medvol.data.phantom import TISSUES, make_phantom, render_phantom, write_phantoms
from medvol.errors import MedvolError


@pytest.fixture(scope="module")
def phantom96():
    return render_phantom(96, seed=1, nodules=True)


def test_shape_geometry_and_determinism():
    volume, mask = make_phantom(64, seed=7)
    assert mask is None
    assert volume.array.shape == (64, 64, 64) and volume.array.dtype == np.float32
    np.testing.assert_allclose(volume.spacing, (340 / 64, 380 / 64, 380 / 64))
    assert volume.direction == (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)
    again, _ = make_phantom(64, seed=7)
    np.testing.assert_array_equal(volume.array, again.array)
    with_seq, _ = make_phantom(64, seed=(7, 1))
    assert not np.array_equal(with_seq.array, volume.array)


@pytest.mark.parametrize("tissue, low, high", [
    ("air", -1010, -990), ("fat", -130, -70), ("muscle", 20, 70), ("lung", -900, -800),
    ("heart", 20, 60), ("blood", 20, 60), ("liver", 40, 80),
])
def test_tissue_hu(phantom96, tissue, low, high):
    values = phantom96.hu[phantom96.tissues == TISSUES[tissue]]
    assert values.size > 20
    assert low <= np.median(values) <= high


def test_bone_and_padding(phantom96):
    bone = phantom96.hu[phantom96.tissues == TISSUES["bone"]]
    assert 400 <= np.median(bone) <= 1000
    assert np.percentile(bone, 99) <= 1100
    assert (phantom96.hu[phantom96.tissues == TISSUES["outside"]] == -2048).all()
    # Every anatomical structure is present.
    for tissue in ("skin", "couch", "vessel", "airway", "disc", "canal", "mediastinum"):
        assert (phantom96.tissues == TISSUES[tissue]).sum() > 0, tissue


def test_nodule_mask_lies_in_the_lungs(phantom96):
    mask = phantom96.mask
    assert mask.dtype == np.uint8 and mask.shape == phantom96.hu.shape and mask.any()
    assert set(np.unique(mask)) <= {0, 1}
    # Nodules sit in lung: their 2-voxel neighbourhood holds lung tissue.
    zs, ys, xs = np.nonzero(mask)
    box = phantom96.tissues[zs.min() - 2:zs.max() + 3, ys.min() - 2:ys.max() + 3, xs.min() - 2:xs.max() + 3]
    assert (box == TISSUES["lung"]).any()
    # Solid cores at 0..50 HU; the mask's rim voxels share partial volume with the lung.
    assert 0 <= np.percentile(phantom96.hu[mask == 1], 90) <= 50 + 30
    assert np.median(phantom96.hu[mask == 1]) > -450


def test_anatomy_varies_with_seed():
    stats = []
    for seed in range(5):
        p = render_phantom(48, seed=seed)
        body = (p.hu > -500)[24].sum()  # body cross-section area (voxels) in the middle slice
        lung = np.median(p.hu[p.tissues == TISSUES["lung"]])
        noise = np.std(p.hu[p.tissues == TISSUES["air"]])
        stats.append((body, lung, noise))
    for column in zip(*stats):
        assert len(set(np.round(column, 3))) == 5


@pytest.mark.parametrize("fmt", ["nii.gz", "mhd"])
def test_write_phantoms_files(tmp_path, fmt):
    paths = write_phantoms(2, 32, tmp_path / "out", fmt=fmt, seed=4, nodules=True)
    assert [p.name for p in paths] == [f"phantom_0000.{fmt}", f"phantom_0001.{fmt}"]
    for index, path in enumerate(paths):
        volume = read_volume(path)
        expected, mask = make_phantom(32, seed=(4, index), nodules=True)
        np.testing.assert_allclose(volume.array, np.round(expected.array), atol=1.0)
        np.testing.assert_allclose(volume.spacing, expected.spacing, rtol=1e-6)
        np.testing.assert_allclose(volume.origin, expected.origin, atol=1e-4)
        written_mask = read_volume(tmp_path / "out" / f"phantom_{index:04d}_mask.{fmt}")
        np.testing.assert_array_equal(written_mask.array, mask)
    if fmt == "mhd":
        assert (tmp_path / "out" / "phantom_0000.raw").exists()


@pytest.mark.parametrize("kwargs, option", [
    ({"n": 0}, "--n"), ({"size": 8}, "--size"), ({"fmt": "png"}, "--format"), ({"seed": -1}, "--seed"),
])
def test_write_phantoms_bad_arguments(tmp_path, kwargs, option):
    arguments = {"n": 1, "size": 32, "fmt": "nii.gz", "seed": 0} | kwargs
    with pytest.raises(MedvolError, match=option):
        write_phantoms(arguments.pop("n"), arguments.pop("size"), tmp_path / "out", **arguments)
    assert not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True

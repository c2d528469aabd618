"""The procedural chest-CT phantom: determinism, realistic HU per tissue, variation, files."""

import numpy as np
import pytest

from medvol.data.io import read_volume
from medvol.data.phantom import MASK_LABELS, TISSUES, make_phantom, phantom_labels, render_phantom, write_phantoms
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
        # The file beside is the label map (lungs 1, nodules 2); its nodules are the nodule mask.
        written = read_volume(tmp_path / "out" / f"phantom_{index:04d}_mask.{fmt}").array
        np.testing.assert_array_equal(written, phantom_labels(render_phantom(32, (4, index), nodules=True)))
        np.testing.assert_array_equal(written == 2, mask == 1)
        assert set(np.unique(written)) == {0, 1, 2}
    if fmt == "mhd":
        assert (tmp_path / "out" / "phantom_0000.raw").exists()


def test_write_phantoms_without_nodules_writes_lung_label_maps(tmp_path):
    write_phantoms(1, 32, tmp_path / "out", seed=4)
    written = read_volume(tmp_path / "out" / "phantom_0000_mask.nii.gz").array
    assert set(np.unique(written)) == {0, 1}


def test_label_map_lungs_and_nodules(phantom96):
    labels = phantom_labels(phantom96)
    assert MASK_LABELS == ("lungs", "nodules")
    assert labels.dtype == np.uint8 and labels.shape == phantom96.hu.shape
    np.testing.assert_array_equal(labels == 2, phantom96.mask == 1)
    lungs = labels == 1
    # Lung label: every lung-tissue voxel not under a nodule, plus intrapulmonary vessels and airways.
    assert (lungs >= ((phantom96.tissues == TISSUES["lung"]) & (labels != 2))).all()
    assert (lungs & (phantom96.tissues == TISSUES["vessel"])).any()
    assert (lungs & (phantom96.tissues == TISSUES["airway"])).any()
    # Nothing outside the thorax's lungs: no bone, heart, liver, and not the trachea at the top.
    for tissue in ("bone", "heart", "liver", "mediastinum", "air", "outside"):
        assert not (lungs & (phantom96.tissues == TISSUES[tissue])).any(), tissue
    top = phantom96.tissues.shape[0] - 1
    assert (phantom96.tissues[top] == TISSUES["airway"]).any() and not lungs[top].any()
    assert 0.03 < lungs.mean() < 0.3
    # The image is unchanged by computing labels: lungs are dark, nodules soft tissue.
    assert np.median(phantom96.hu[lungs]) < -700 and np.median(phantom96.hu[labels == 2]) > -450


@pytest.mark.parametrize("kwargs, option", [
    ({"n": 0}, "--n"), ({"size": 8}, "--size"), ({"fmt": "png"}, "--format"), ({"seed": -1}, "--seed"),
])
def test_write_phantoms_bad_arguments(tmp_path, kwargs, option):
    arguments = {"n": 1, "size": 32, "fmt": "nii.gz", "seed": 0} | kwargs
    with pytest.raises(MedvolError, match=option):
        write_phantoms(arguments.pop("n"), arguments.pop("size"), tmp_path / "out", **arguments)
    assert not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True

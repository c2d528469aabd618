"""Preprocessing invariants: shape S^3, range [-1, 1], window applied, aspect kept, inversion."""

import numpy as np
import pytest
import torch

from medvol.data.io import Volume
from medvol.data.phantom import make_phantom
from medvol.data.preprocess import (PreprocessParams, handle_blank_slices, preprocess_volume,
                                    preprocess_with_info, to_intensity)
from medvol.errors import MedvolError

ZERO_HU = (0 + 1024) / 1624 * 2 - 1  # 0 HU under the default window [-1024, 600]


@pytest.mark.parametrize("size", [32, 64])
def test_phantom_to_cube_in_range(size):
    volume, _ = make_phantom(64, seed=2)
    out, info = preprocess_with_info(volume, PreprocessParams(size=size))
    assert out.shape == (size,) * 3 and out.dtype == np.float32
    assert out.min() == -1.0 and out.max() <= 1.0
    assert out.max() > 0.5  # bone survives the window
    # 340 mm along z in a 380 mm cube: 34/38 of the slices hold data, the rest is padding.
    assert info["shape_before_pad"][1:] == (size, size)
    assert info["shape_before_pad"][0] == round(size * 340 / 380)
    np.testing.assert_allclose(info["spacing"], (380.0 / size,) * 3)


def test_window_clips_and_scales():
    array = np.zeros((40, 40, 40), np.float32)
    array[:, :, :10] = -3000.0
    array[:, :, 30:] = 3000.0
    out = preprocess_volume(Volume(array=array), PreprocessParams(size=32, antialias=False))
    assert out.min() == -1.0 and out.max() == 1.0
    assert out[16, 16, 16] == pytest.approx(ZERO_HU, abs=1e-5)
    custom = preprocess_volume(Volume(array=array), PreprocessParams(size=32, window=(-1000.0, 1000.0)))
    assert custom[16, 16, 16] == pytest.approx(0.0, abs=1e-5)


def test_aspect_kept_by_padding_or_stretched_on_request():
    # 20 x 40 x 40 voxels of 1 mm: a slab half as tall as it is wide.
    volume = Volume(array=np.zeros((20, 40, 40), np.float32))
    out = preprocess_volume(volume, PreprocessParams(size=32))
    rows = np.isclose(out, -1.0).all(axis=(1, 2))
    assert rows.sum() == 16 and rows[:8].all() and rows[-8:].all()
    np.testing.assert_allclose(out[8:24], ZERO_HU, atol=1e-5)
    stretched = preprocess_volume(volume, PreprocessParams(size=32, keep_aspect=False))
    np.testing.assert_allclose(stretched, ZERO_HU, atol=1e-5)


def test_anisotropic_sphere_stays_round():
    # A 60 mm ball sampled at 3 mm slices and 1 mm pixels must come out round.
    z = (np.arange(40) + 0.5) * 3.0 - 60
    y = (np.arange(120) + 0.5) * 1.0 - 60
    ball = (z[:, None, None] ** 2 + y[None, :, None] ** 2 + y[None, None, :] ** 2) <= 30.0 ** 2
    volume = Volume(array=np.where(ball, 400.0, -1000.0).astype(np.float32), spacing=(3.0, 1.0, 1.0))
    out = preprocess_volume(volume, PreprocessParams(size=64))
    inside = out > 0.0
    extents = [np.ptp(np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != k)))) for k in range(3)]
    assert max(extents) - min(extents) <= 1
    assert 30 <= extents[0] <= 34  # 60 of 120 mm in 64 voxels


def test_blank_slices_replaced_by_nearest_neighbour():
    values = (-1024, 5, -1024, -1024, -1024, 7, -1024, 9, -2000)
    array = np.stack([np.full((4, 4), v, np.float32) for v in values])
    blank = array.reshape(len(values), -1).max(axis=1) <= -1000
    replaced = handle_blank_slices(array, blank, "replace")
    # Inside the anatomy each gap takes its nearest slice (the lower one on a tie, index 3);
    # air before the first and after the last non-blank slice stays.
    assert replaced[:, 0, 0].tolist() == [-1024, 5, 5, 5, 7, 7, 7, 9, -2000]
    assert handle_blank_slices(array, blank, "remove")[:, 0, 0].tolist() == [5, 7, 9]
    assert handle_blank_slices(array, blank, "keep") is array


def test_blank_slices_do_not_leave_air_gaps():
    array = np.zeros((32, 32, 32), np.float32)
    array[10:12] = -1024.0  # two dropped slices in the middle of the body
    out, info = preprocess_with_info(Volume(array=array), PreprocessParams(size=32, antialias=False))
    assert info["blank_slices"] == 2
    np.testing.assert_allclose(out, ZERO_HU, atol=1e-5)
    kept, _ = preprocess_with_info(Volume(array=array), PreprocessParams(size=32, blank_slices="keep"))
    assert kept[10:12].max() < -0.5


def test_all_blank_volume_is_an_error():
    volume = Volume(array=np.full((8, 8, 8), -1024.0, np.float32), path="air.nii.gz")
    with pytest.raises(MedvolError, match=r"air\.nii\.gz: every axial slice is blank"):
        preprocess_volume(volume, PreprocessParams(size=32))


def test_reorientation_to_lps():
    ramp = np.broadcast_to(np.linspace(-500, 500, 16, dtype=np.float32), (16, 16, 16)).copy()
    flipped_x = Volume(array=ramp, direction=(-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    standard = preprocess_volume(Volume(array=ramp[:, :, ::-1].copy()), PreprocessParams(size=32))
    reoriented = preprocess_volume(flipped_x, PreprocessParams(size=32))
    np.testing.assert_allclose(reoriented, standard, atol=1e-5)
    kept = preprocess_volume(flipped_x, PreprocessParams(size=32, orient=None))
    np.testing.assert_allclose(kept, standard[:, :, ::-1], atol=1e-5)


def test_to_intensity_inverts_the_scaling():
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1500, 1000, size=(32, 32, 32)).astype(np.float32)
    params = PreprocessParams(size=32, antialias=False)
    out = preprocess_volume(Volume(array=hu), params)  # 32^3 at 1 mm: no resampling
    np.testing.assert_allclose(to_intensity(out, params), np.clip(hu, -1024, 600), atol=0.05)
    tensor = to_intensity(torch.from_numpy(out), (-1024.0, 600.0))
    assert isinstance(tensor, torch.Tensor)
    np.testing.assert_allclose(tensor.numpy(), np.clip(hu, -1024, 600), atol=0.05)
    assert to_intensity(out, None) is out


def test_mr_percentile_normalisation():
    rng = np.random.default_rng(1)
    mr = rng.gamma(2.0, 200.0, size=(24, 32, 32)).astype(np.float32)
    params = PreprocessParams(size=32, modality="mr", percentiles=(1.0, 99.0))
    out = preprocess_volume(Volume(array=mr, spacing=(1.25, 1.0, 1.0)), params)
    assert out.shape == (32,) * 3 and out.min() == -1.0 and out.max() == 1.0
    assert params.intensity_window is None
    with pytest.raises(MedvolError, match="constant"):
        nearly_flat = np.zeros((8, 8, 8), np.float32)
        nearly_flat[4, 4, 4] = 5.0
        preprocess_volume(Volume(array=nearly_flat, path="flat"), PreprocessParams(size=32, modality="mr"))


def test_params_round_trip_through_dict():
    params = PreprocessParams(size=128, window=(-1000, 400), keep_aspect=False, orient=None)
    data = params.to_dict()
    assert data["pipeline_version"] >= 1 and data["window"] == [-1000.0, 400.0]
    assert PreprocessParams.from_dict(data) == params


def _ball_volume(shape, spacing, origin, direction, centre_index, radius_mm):
    """Air with a bright ball around the voxel ``centre_index`` (z, y, x); returns (volume, centre in mm)."""
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    mm = [(g - c) * s for g, c, s in zip(grids, centre_index, spacing)]
    ball = sum(m ** 2 for m in mm) <= radius_mm ** 2
    array = np.where(ball, 600.0, -1024.0).astype(np.float32)
    matrix = np.asarray(direction).reshape(3, 3)
    centre = np.asarray(origin) + matrix @ (np.asarray(centre_index[::-1]) * np.asarray(spacing[::-1]))
    return Volume(array=array, spacing=spacing, origin=origin, direction=direction), centre


def _physical_centroid(out, info):
    weight = out.astype(np.float64) + 1.0
    index_zyx = np.array([(weight * g).sum() / weight.sum() for g in np.indices(out.shape)])
    matrix = np.asarray(info["direction"]).reshape(3, 3)
    return np.asarray(info["origin"]) + matrix @ (index_zyx[::-1] * np.asarray(info["spacing"][::-1]))


@pytest.mark.parametrize("case", ["padded", "stretched", "upsampled", "blank-removed"])
def test_output_geometry_puts_the_anatomy_where_it_was(case):
    from tests.data.conftest import oblique_direction

    shape, spacing, centre_index, radius = (30, 50, 60), (2.5, 0.9, 0.8), (12, 30, 21), 9.0
    params = PreprocessParams(size=32)
    if case == "stretched":
        params = PreprocessParams(size=32, keep_aspect=False)
    elif case == "upsampled":  # finer than the grid needs: MONAI's Resize scales it up
        shape, spacing, centre_index, radius = (11, 13, 17), (1.0, 1.0, 1.0), (5, 6, 9), 3.5
    volume, centre = _ball_volume(shape, spacing, (-120.5, 33.25, 7.0), oblique_direction(), centre_index, radius)
    if case == "blank-removed":
        params = PreprocessParams(size=32, blank_slices="remove")
        volume.array[:5] = -1024.0  # removed: voxel 0 moves to slice 5
    out, info = preprocess_with_info(volume, params)
    assert len(info["origin"]) == 3 and len(info["direction"]) == 9 and len(info["spacing"]) == 3
    error = np.linalg.norm(_physical_centroid(out, info) - centre)
    assert error < 0.3 * min(info["spacing"]), (error, info)


def test_window_to_unit_is_the_closed_form_and_blank_for_an_empty_window():
    """The one scaling of volumes, slices and images: (x - low) / (high - low) * 2 - 1, clipped."""
    from medvol.data.preprocess import to_intensity, window_to_unit

    x = np.array([-2000.0, -1024.0, -212.0, 0.0, 600.0, 3000.0, np.nan])
    expected = np.array([-1.0, -1.0, 0.0, 1024.0 / 812.0 - 1.0, 1.0, 1.0, np.nan])
    np.testing.assert_allclose(window_to_unit(x, -1024.0, 600.0), expected, rtol=0, atol=1e-12)
    inside = np.array([-1000.0, -5.5, 599.0], dtype=np.float32)
    back = to_intensity(window_to_unit(inside, -1024.0, 600.0), (-1024.0, 600.0))
    assert window_to_unit(inside, -1024.0, 600.0).dtype == np.float32
    np.testing.assert_allclose(back, inside, rtol=0, atol=1e-3)
    for low, high in ((5.0, 5.0), (6.0, 5.0), (np.nan, 5.0)):  # nothing to show: blank, not NaN or inf
        np.testing.assert_array_equal(window_to_unit(np.full((2, 3), 5.0), low, high), np.full((2, 3), -1.0))

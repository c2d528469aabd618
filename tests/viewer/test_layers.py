"""Window presets, layer names, physical transforms and grid checks, without a viewer."""

from __future__ import annotations

import numpy as np
import pytest

from medvol.errors import MedvolError
from medvol.viewer.app import prepare_layers
from medvol.viewer.layers import default_contrast, image_layer_data, load_volumes, volume_name
from medvol.viewer.presets import WINDOW_PRESETS, parse_window


def test_presets_are_width_level_in_hu():
    assert parse_window("lung") == (-1350.0, 150.0)  # W1500 / L-600
    assert parse_window("Mediastinum") == (-125.0, 225.0)  # W350 / L50
    assert parse_window("bone") == (-500.0, 1300.0)  # W1800 / L400
    assert parse_window(" -160, 240 ") == (-160.0, 240.0)
    assert parse_window(None) is None
    assert set(WINDOW_PRESETS) == {"lung", "mediastinum", "bone"}


@pytest.mark.parametrize("text", ["liver", "100", "1,2,3", "300,100", "5,5", "a,b"])
def test_bad_window_is_one_line_error(text):
    with pytest.raises(MedvolError, match="--window") as info:
        parse_window(text)
    assert "\n" not in str(info.value)


def test_names_come_from_files():
    assert volume_name("out/sample_0003.nii.gz") == "sample_0003"
    assert volume_name("/data/subset0/1.3.6.1.4.1.14519.mhd") == "1.3.6.1.4.1.14519"
    assert volume_name("/data/series_12") == "series_12"
    assert volume_name(None) == "volume"


def test_layer_maps_voxels_to_itk_physical_points(volumes_dir):
    """The napari layer puts each voxel where SimpleITK puts it (LPS mm), and a permuted
    acquisition is transposed so that napari slices along world axes (no oblique slicing)."""
    import warnings

    import SimpleITK as sitk
    from napari.layers import Image

    path = volumes_dir / "geom.nrrd"
    (volume,) = load_volumes([path])
    data, kwargs, kind = image_layer_data(volume)
    assert kind == "image" and kwargs["name"] == "geom"
    # Data y runs along world z and data z along world y (see the fixture's direction).
    axes = kwargs["metadata"]["axes"]
    assert axes == (1, 0, 2)
    np.testing.assert_array_equal(data, volume.array.transpose(axes))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # napari warns when it cannot slice along data axes
        layer = Image(data, **kwargs)
    np.testing.assert_allclose(layer.scale, (0.8, 2.5, 0.7))
    image = sitk.ReadImage(str(path))
    for index_xyz in [(0, 0, 0), (8, 0, 0), (0, 6, 0), (0, 0, 5), (3, 4, 2)]:
        index_zyx = index_xyz[::-1]
        expected_zyx = image.TransformIndexToPhysicalPoint(index_xyz)[::-1]
        world_zyx = layer.data_to_world([index_zyx[a] for a in axes])
        np.testing.assert_allclose(world_zyx, expected_zyx, atol=1e-6)


def test_plain_volume_keeps_its_axes(volumes_dir):
    (volume,) = load_volumes([volumes_dir / "a.nii.gz"])
    data, kwargs, _ = image_layer_data(volume)
    assert data is volume.array
    np.testing.assert_allclose(kwargs["scale"], volume.spacing)
    assert np.allclose(np.abs(kwargs["rotate"]), np.eye(3))


def test_default_contrast_ignores_outliers():
    array = np.zeros((20, 20, 20), np.float32)
    array[:10] = 100.0
    array[0, 0, 0] = -3024.0  # CT padding must not stretch the window
    low, high = default_contrast(array)
    assert (low, high) == (0.0, 100.0)
    assert default_contrast(np.full((4, 4, 4), 7.0, np.float32)) == (7.0, 8.0)


def test_prepare_grid_aligns_voxels_and_rejects_shape_mismatch(volumes_dir):
    a, b, mask = load_volumes([volumes_dir / "a.nii.gz", volumes_dir / "b.nii.gz",
                               volumes_dir / "mask.nii.gz"])
    layers = prepare_layers([a, b], window=(-1350.0, 150.0), grid=True, labels=mask)
    assert [(kwargs["name"], kind) for _, kwargs, kind in layers] == [
        ("real: a", "image"), ("mask on real: a", "labels"), ("real: b", "image"), ("mask on real: b", "labels")]
    for _, kwargs, _ in layers:
        assert kwargs["translate"] == (0.0, 0.0, 0.0)
        np.testing.assert_allclose(kwargs["scale"], a.spacing)
    (small,) = load_volumes([volumes_dir / "small.nii.gz"])
    with pytest.raises(MedvolError, match="small.nii.gz"):
        prepare_layers([a, small], grid=True)
    with pytest.raises(MedvolError, match="--labels"):
        prepare_layers([small], labels=mask)


def test_metaimage_and_dicom_series_open_with_their_spacing(volumes_dir):
    b, b_mhd, small, series = load_volumes([volumes_dir / "b.nii.gz", volumes_dir / "b.mhd",
                                            volumes_dir / "small.nii.gz", volumes_dir / "series"])
    layers = prepare_layers([b_mhd, series])
    assert [kwargs["name"] for _, kwargs, _ in layers] == ["b", "series"]
    np.testing.assert_array_equal(layers[0][0], b.array)
    np.testing.assert_allclose(layers[1][1]["scale"], small.spacing, rtol=1e-5)
    np.testing.assert_allclose(layers[1][1]["translate"], small.origin[::-1], atol=1e-4)
    np.testing.assert_allclose(layers[1][0], np.rint(small.array), atol=0.5)


def test_unreadable_and_missing_files_name_the_file(volumes_dir):
    with pytest.raises(MedvolError, match="garbage.nii.gz"):
        load_volumes([volumes_dir / "garbage.nii.gz"])
    with pytest.raises(MedvolError, match="nope.nii.gz"):
        load_volumes([volumes_dir / "nope.nii.gz"])

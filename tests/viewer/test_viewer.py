"""The viewer medvol builds: layer scale, contrast and names; grid layout; linked slicing; views."""

from __future__ import annotations

import numpy as np
import pytest

from medvol.viewer.app import populate_viewer, prepare_layers, set_view
from medvol.viewer.layers import load_volumes


def _build(viewer, paths, **options):
    grid = options.pop("grid", False)
    slice_view = options.pop("slice_view", "axial")
    volumes = load_volumes(paths)
    layers = populate_viewer(viewer, prepare_layers(volumes, grid=grid, **options), grid=grid)
    set_view(viewer, slice_view)
    return volumes, layers


def test_layers_have_spacing_window_and_names(make_napari_viewer, volumes_dir):
    viewer = make_napari_viewer()
    (volume,), (layer,) = _build(viewer, [volumes_dir / "a.nii.gz"], window=(-1350.0, 150.0))
    assert layer.name == "a"
    np.testing.assert_allclose(layer.scale, volume.spacing)
    assert tuple(layer.contrast_limits) == (-1350.0, 150.0)
    # The slider still reaches the whole data range, not only the window.
    assert layer.contrast_limits_range[0] <= min(-1350.0, float(volume.array.min()))
    assert layer.contrast_limits_range[1] >= max(150.0, float(volume.array.max()))
    assert viewer.dims.ndisplay == 2 and tuple(viewer.dims.order) == (0, 1, 2)
    # The middle axial slice is shown.
    k = int(round(layer.world_to_data(viewer.dims.point)[0]))
    assert abs(k - volume.array.shape[0] // 2) <= 1


def test_grid_side_by_side_with_linked_slicing(make_napari_viewer, volumes_dir):
    viewer = make_napari_viewer()
    paths = [volumes_dir / "a.nii.gz", volumes_dir / "b.nii.gz", volumes_dir / "a.nii.gz"]
    volumes, layers = _build(viewer, paths, grid=True, window=(-1000.0, 400.0))
    assert viewer.canvas.grid.enabled
    assert viewer.canvas.grid.actual_shape(viewer.layers) == (1, 3)
    assert [viewer.canvas.grid.position(i, viewer.layers) for i in range(3)] == [(0, 0), (0, 1), (0, 2)]
    assert [layer.name for layer in layers] == ["real: a", "real: b", "real: a [1]"]
    for k in (5, 30):
        viewer.dims.set_current_step(0, k)
        for volume, layer in zip(volumes, layers):
            # One slider drives every cell: each shows slice k of its own volume.
            assert int(round(layer.world_to_data(viewer.dims.point)[0])) == k
            np.testing.assert_array_equal(np.asarray(layer._data_view), volume.array[k])


def test_grid_with_labels_puts_each_mask_with_its_image(make_napari_viewer, volumes_dir):
    viewer = make_napari_viewer()
    _build(viewer, [volumes_dir / "a.nii.gz", volumes_dir / "b.nii.gz"], grid=True,
           labels=load_volumes([volumes_dir / "mask.nii.gz"])[0])
    assert viewer.canvas.grid.stride == 2
    assert viewer.canvas.grid.contents_at((0, 0), viewer.layers) == (0, 1)
    assert viewer.canvas.grid.contents_at((0, 1), viewer.layers) == (2, 3)
    assert viewer.layers[1].data.dtype == np.int32 and viewer.layers[1].data.max() >= 1


@pytest.mark.parametrize("slice_view, order", [("coronal", (1, 0, 2)), ("sagittal", (2, 0, 1))])
def test_slice_choice_sets_displayed_axes(make_napari_viewer, volumes_dir, slice_view, order):
    viewer = make_napari_viewer()
    _build(viewer, [volumes_dir / "a.nii.gz"], slice_view=slice_view)
    assert tuple(viewer.dims.order) == order
    # Superior (+z in LPS) is drawn up in coronal and sagittal views.
    assert viewer.scene.camera.orientation2d[0] == "up"


def test_grid_cells_say_which_volume_is_real(make_napari_viewer, volumes_dir, tmp_path):
    """A generated (marked synthetic) volume beside a real one: each cell draws its own caption."""
    from medvol.data.io import read_volume
    from medvol.data.provenance import write_synthetic

    write_synthetic(read_volume(volumes_dir / "b.nii.gz"), tmp_path / "sample_0000.nii.gz",
                    {"model": "test", "seed": 0})
    import imageio.v3 as iio

    from medvol.viewer.app import save_screenshot

    viewer = make_napari_viewer(show=True)  # napari reads a screenshot back from a shown window
    _, layers = _build(viewer, [volumes_dir / "a.nii.gz", tmp_path / "sample_0000.nii.gz"], grid=True,
                       window=(-1000.0, 400.0))
    assert [layer.name for layer in layers] == ["real: a", "generated: sample_0000"]
    assert all(layer.name_overlay.visible for layer in layers)
    labelled = iio.imread(save_screenshot(viewer, tmp_path / "labelled.png", size=(256, 512))).astype(float)
    for layer in layers:
        layer.name_overlay.visible = False
    bare = iio.imread(save_screenshot(viewer, tmp_path / "bare.png", size=(256, 512))).astype(float)
    assert bare.std() > 20  # the volumes are drawn
    changed = np.abs(labelled - bare).max(axis=2) > 60
    width = changed.shape[1]
    # the caption is drawn in each cell (left: real, right: generated), near its top
    for cell in (changed[:, : width // 2], changed[:, width // 2:]):
        rows = np.flatnonzero(cell.any(axis=1))
        assert rows.size and rows.max() < changed.shape[0] // 3, rows

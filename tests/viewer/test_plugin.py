"""The npe2 plugin: napari finds medvol's reader and widget through its own machinery."""

from __future__ import annotations

import shutil

import numpy as np


def test_manifest_declares_reader_and_widget():
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("medvol")
    assert "*.nii.gz" in manifest.contributions.readers[0].filename_patterns
    assert [w.display_name for w in manifest.contributions.widgets] == ["Generate volume"]
    readers = [r.command for r in pm.iter_compatible_readers(["scan.nii.gz"])]
    assert "medvol.get_reader" in readers


def test_napari_opens_nifti_through_medvol(make_napari_viewer, volumes_dir):
    from medvol.viewer.layers import load_volumes

    viewer = make_napari_viewer()
    layers = viewer.open(str(volumes_dir / "geom.nrrd"), plugin="medvol")
    assert [layer.name for layer in layers] == ["geom"]
    np.testing.assert_allclose(layers[0].scale, (0.8, 2.5, 0.7))  # transposed to world axes
    layers = viewer.open(str(volumes_dir / "a.nii.gz"), plugin="medvol")
    (volume,) = load_volumes([volumes_dir / "a.nii.gz"])
    np.testing.assert_array_equal(layers[0].data, volume.array)
    np.testing.assert_allclose(layers[0].scale, volume.spacing)
    assert layers[0].source.reader_plugin == "medvol"


def test_napari_opens_a_sample_folder(make_napari_viewer, volumes_dir, tmp_path):
    folder = tmp_path / "samples"
    folder.mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        shutil.copy(volumes_dir / name, folder / name)
    viewer = make_napari_viewer()
    layers = viewer.open(str(folder), plugin="medvol")
    assert [layer.name for layer in layers] == ["a", "b"]


def test_reader_declines_other_files(tmp_path):
    from medvol.viewer.plugin import get_reader

    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path)) is None  # a folder without volumes

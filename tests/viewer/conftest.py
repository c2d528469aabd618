"""Volumes on disk for the viewer tests: phantoms, an oblique/anisotropic volume, a mask."""

from __future__ import annotations

import locale

import numpy as np
import pytest

from medvol.viewer.display import guard_triton

# Before any test makes an OpenGL context: Triton imported after Mesa's llvmpipe crashes the
# process (two LLVMs), and later tests (training a tiny checkpoint) import it.
guard_triton()

PHANTOM_SIZE = 48


@pytest.fixture(scope="session")
def volumes_dir(tmp_path_factory):
    """Folder with ``a.nii.gz`` and ``b.nii.gz`` (two phantoms of one shape, different seeds),
    ``b.mhd`` (MetaImage copy of b), ``small.nii.gz`` (another shape) and ``series/`` (the same as
    a DICOM series), ``mask.nii.gz`` (labels for ``a``), ``geom.nrrd`` (anisotropic spacing, an
    origin, a permuted and flipped direction) and ``garbage.nii.gz`` (not a volume)."""
    from medvol.data.io import Volume, write_volume
    from medvol.data.phantom import make_phantom

    folder = tmp_path_factory.mktemp("volumes")
    a, mask = make_phantom(size=PHANTOM_SIZE, seed=0, nodules=True)
    b, _ = make_phantom(size=PHANTOM_SIZE, seed=1)
    small, _ = make_phantom(size=32, seed=2)
    write_volume(a, folder / "a.nii.gz")
    write_volume(b, folder / "b.nii.gz")
    write_volume(small, folder / "small.nii.gz")
    write_volume(Volume(array=np.asarray(mask, dtype=np.float32), spacing=a.spacing, origin=a.origin,
                        direction=a.direction), folder / "mask.nii.gz")
    rng = np.random.default_rng(0)
    geom = Volume(
        array=rng.normal(size=(6, 7, 9)).astype(np.float32),
        spacing=(2.5, 0.8, 0.7),
        origin=(-12.0, 30.0, 105.5),
        # Rows x, y, z: x flipped, y and z swapped (a permuted, mirrored acquisition).
        direction=(-1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0),
    )
    write_volume(geom, folder / "geom.nrrd")
    write_volume(b, folder / "b.mhd")
    found = locale.setlocale(locale.LC_ALL)
    try:
        _write_dicom_series(small, folder / "series")
    finally:  # GDCM's writer sets the locale to "C" (the default text codec becomes ASCII)
        locale.setlocale(locale.LC_ALL, found)
    (folder / "garbage.nii.gz").write_bytes(b"this is not a NIfTI file" * 20)
    return folder


def _write_dicom_series(volume, folder) -> None:
    """``volume`` (HU, identity direction) as CT slices ``folder/sliceNNN.dcm`` (int16, SimpleITK)."""
    import SimpleITK as sitk

    folder.mkdir()
    image = sitk.GetImageFromArray(np.rint(volume.array).astype(np.int16))
    image.SetSpacing(tuple(reversed(volume.spacing)))
    image.SetOrigin(volume.origin)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        piece = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        for key, value in [("0008|0060", "CT"), ("0020|000d", "1.2.826.0.1.3680043.2.1125.9"),
                           ("0020|000e", "1.2.826.0.1.3680043.2.1125.9.1"),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0020|0013", str(k + 1)),
                           ("0020|0032", "\\".join(f"{v:.6f}" for v in position))]:
            piece.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(piece)


@pytest.fixture
def napari_app(mock_app_model):
    """A fresh napari application model for tests whose code builds its own ``napari.Viewer``
    (as ``medvol view`` does): plugins and actions register anew, as in a new process, and
    nothing is left registered for the next test (``make_napari_viewer`` does the same)."""
    from napari._qt._qapp_model.qactions import init_qactions
    from napari.plugins import _initialize_plugins

    _initialize_plugins.cache_clear()
    init_qactions.cache_clear()
    return mock_app_model

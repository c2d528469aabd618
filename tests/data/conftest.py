"""Fixtures of the data tests: small volumes with awkward geometry, written to tmp_path."""

import numpy as np
import pytest

from medvol.data.io import Volume


def oblique_direction() -> tuple[float, ...]:
    """A non-identity direction: 30 degrees about z, then x flipped (a proper rotation times a flip)."""
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return tuple((rotation @ np.diag([-1.0, 1.0, 1.0])).ravel())


@pytest.fixture
def oblique_volume() -> Volume:
    """(7, 9, 11) integer-valued HU, anisotropic spacing, shifted origin, oblique direction."""
    rng = np.random.default_rng(0)
    array = rng.integers(-1024, 1500, size=(7, 9, 11)).astype(np.float32)
    return Volume(array=array, spacing=(2.5, 0.8, 0.7), origin=(-120.5, 33.25, 7.0),
                  direction=oblique_direction())


def write_dicom_series(volume: Volume, folder, intercept: float = -1024.0, slope: float = 1.0) -> None:
    """Write ``volume`` (HU) as a CT DICOM series with SimpleITK; stored values carry the rescale.

    GDCM's writer sets the process's locale to "C" (the default text codec then becomes ASCII);
    the locale found is restored after."""
    import locale

    import SimpleITK as sitk

    found = locale.setlocale(locale.LC_ALL)
    try:
        _write_dicom_series(sitk, volume, folder, intercept, slope)
    finally:
        locale.setlocale(locale.LC_ALL, found)


def _write_dicom_series(sitk, volume: Volume, folder, intercept: float, slope: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(volume.array.astype(np.float32))
    image.SetSpacing(tuple(reversed(volume.spacing)))
    image.SetOrigin(volume.origin)
    image.SetDirection(volume.direction)
    direction = np.asarray(volume.direction).reshape(3, 3)
    orientation = "\\".join(f"{v:.10f}" for v in list(direction[:, 0]) + list(direction[:, 1]))
    tags = [("0008|0060", "CT"), ("0020|000d", "1.2.826.0.1.3680043.2.1125.1"),
            ("0020|000e", "1.2.826.0.1.3680043.2.1125.1.7"), ("0020|0037", orientation),
            ("0028|1052", str(intercept)), ("0028|1053", str(slope)),
            ("0028|0100", "16"), ("0028|0101", "16"), ("0028|0102", "15"), ("0028|0103", "1"),
            ("0018|0050", str(volume.spacing[0]))]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        piece = image[:, :, k]
        for key, value in tags:
            piece.SetMetaData(key, value)
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        piece.SetMetaData("0020|0032", "\\".join(f"{v:.10f}" for v in position))
        piece.SetMetaData("0020|0013", str(k + 1))
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(piece)


@pytest.fixture
def dicom_writer():
    """The :func:`write_dicom_series` helper, as a fixture."""
    return write_dicom_series


@pytest.fixture
def phantom_files(tmp_path):
    """Three 32^3 phantoms written as NIfTI (int16 HU) in tmp_path/src."""
    from medvol.data.phantom import write_phantoms

    paths = write_phantoms(3, 32, tmp_path / "src", seed=5)
    return tmp_path / "src", paths

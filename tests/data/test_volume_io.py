"""Reading and writing volumes: round trips keep voxels, spacing, origin and direction."""

import os

import numpy as np
import pytest

from medvol.data.io import Volume, read_volume, write_volume
from medvol.errors import MedvolError


def assert_same_geometry(a: Volume, b: Volume, atol=1e-4):
    np.testing.assert_allclose(a.spacing, b.spacing, atol=atol)
    np.testing.assert_allclose(a.origin, b.origin, atol=atol)
    np.testing.assert_allclose(a.direction, b.direction, atol=atol)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mhd", ".mha", ".nrrd"])
def test_round_trip_keeps_voxels_and_geometry(tmp_path, oblique_volume, suffix):
    path = write_volume(oblique_volume, tmp_path / f"vol{suffix}")
    back = read_volume(path)
    assert back.array.dtype == np.float32 and back.array.shape == (7, 9, 11)
    np.testing.assert_array_equal(back.array, oblique_volume.array)
    assert_same_geometry(back, oblique_volume)
    assert back.path == str(path)
    # Nothing but the volume's own files is left in the folder (no temp files).
    expected = {"vol.mhd", "vol.raw"} if suffix == ".mhd" else {f"vol{suffix}"}
    assert set(os.listdir(tmp_path)) == expected


def test_mhd_header_names_its_raw_file(tmp_path, oblique_volume):
    write_volume(oblique_volume, tmp_path / "scan.mhd", dtype=np.int16)
    header = (tmp_path / "scan.mhd").read_text(encoding="utf-8")
    assert "ElementDataFile = scan.raw" in header
    assert "MET_SHORT" in header
    assert (tmp_path / "scan.raw").stat().st_size == oblique_volume.array.size * 2


def test_nibabel_reader_agrees_with_simpleitk(tmp_path, oblique_volume):
    path = write_volume(oblique_volume, tmp_path / "vol.nii.gz")
    by_sitk = read_volume(path, reader="sitk")
    by_nib = read_volume(path, reader="nibabel")
    np.testing.assert_array_equal(by_nib.array, by_sitk.array)
    assert_same_geometry(by_nib, by_sitk)


def test_nibabel_written_ras_affine_reads_as_lps(tmp_path):
    import nibabel as nib

    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)  # nibabel order (i, j, k)
    affine = np.diag([0.5, 0.75, 2.0, 1.0])
    affine[:3, 3] = (10.0, -20.0, 30.0)
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "ras.nii.gz"))
    for reader in ("sitk", "nibabel"):
        vol = read_volume(tmp_path / "ras.nii.gz", reader=reader)
        assert vol.array.shape == (6, 5, 4)
        np.testing.assert_array_equal(vol.array, data.transpose(2, 1, 0))
        np.testing.assert_allclose(vol.spacing, (2.0, 0.75, 0.5))
        # RAS (10, -20, 30) is LPS (-10, 20, 30); RAS axes are LPS axes with x and y negated.
        np.testing.assert_allclose(vol.origin, (-10.0, 20.0, 30.0), atol=1e-5)
        np.testing.assert_allclose(vol.direction, np.diag([-1.0, -1.0, 1.0]).ravel(), atol=1e-6)


def test_auto_reader_reads_sheared_nifti(tmp_path):
    import nibabel as nib

    data = np.ones((4, 5, 6), dtype=np.float32)
    affine = np.array([[1.0, 0.3, 0, 0], [0, 1.0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]])
    image = nib.Nifti1Image(data, affine)
    image.set_qform(None, code=0)
    nib.save(image, str(tmp_path / "shear.nii"))
    with pytest.raises(MedvolError, match=r"shear\.nii: cannot read volume"):
        read_volume(tmp_path / "shear.nii", reader="sitk")
    vol = read_volume(tmp_path / "shear.nii")
    assert vol.array.shape == (6, 5, 4)
    np.testing.assert_allclose(vol.spacing[0], 2.0)


def test_itk_reader_agrees_with_simpleitk(tmp_path, oblique_volume):
    path = write_volume(oblique_volume, tmp_path / "vol.nrrd")
    by_itk = read_volume(path, reader="itk")
    np.testing.assert_array_equal(by_itk.array, oblique_volume.array)
    assert_same_geometry(by_itk, oblique_volume)


def test_dicom_series_comes_out_in_hu_with_geometry(tmp_path, oblique_volume, dicom_writer):
    # DICOM's slice normal is row x column, so its direction is a proper rotation (det +1).
    c, s = np.cos(0.4), np.sin(0.4)
    tilt = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    oblique_volume.direction = tuple((np.asarray(oblique_volume.direction).reshape(3, 3) @ np.diag([-1.0, 1, 1])
                                      @ tilt).ravel())
    assert np.linalg.det(np.reshape(oblique_volume.direction, (3, 3))) > 0
    dicom_writer(oblique_volume, tmp_path / "series")
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(tmp_path / "series" / "slice000.dcm"))
    reader.ReadImageInformation()
    assert float(reader.GetMetaData("0028|1052")) == -1024.0  # stored values are HU + 1024
    vol = read_volume(tmp_path / "series")
    np.testing.assert_allclose(vol.array, oblique_volume.array, atol=1e-3)
    assert_same_geometry(vol, oblique_volume, atol=1e-3)


def test_single_dicom_slice_is_2d(tmp_path, oblique_volume, dicom_writer):
    dicom_writer(oblique_volume, tmp_path / "series")
    with pytest.raises(MedvolError, match=r"slice000\.dcm: is a 2D image"):
        read_volume(tmp_path / "series" / "slice000.dcm")


def test_write_failure_leaves_nothing(tmp_path, oblique_volume, monkeypatch):
    import SimpleITK as sitk

    def broken(image, path, *args):
        with open(path, "wb") as handle:
            handle.write(b"half a volume")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", broken)
    for name in ("vol.nii.gz", "vol.mhd"):
        with pytest.raises(MedvolError, match=rf"cannot write volume .*{name}: disk full"):
            write_volume(oblique_volume, tmp_path / name)
    assert os.listdir(tmp_path) == []


def test_write_refuses_unknown_suffix_and_2d(tmp_path, oblique_volume):
    with pytest.raises(MedvolError, match=r"vol\.png"):
        write_volume(oblique_volume, tmp_path / "vol.png")
    flat = Volume(array=np.zeros((4, 4), np.float32))
    with pytest.raises(MedvolError, match="3D"):
        write_volume(flat, tmp_path / "flat.nii.gz")
    assert os.listdir(tmp_path) == []

"""Bad input gives a one-line MedvolError naming the file or option."""

import gzip

import numpy as np
import pytest

from medvol.data.io import Volume, read_volume, write_volume
from medvol.data.preprocess import PreprocessParams, parse_window, preprocess_volume
from medvol.errors import MedvolError


def one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_missing_path(tmp_path):
    with pytest.raises(MedvolError) as error:
        read_volume(tmp_path / "absent.nii.gz")
    assert "absent.nii.gz: no such file or folder" in one_line(error)


def test_empty_folder_is_not_a_dicom_series(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedvolError) as error:
        read_volume(tmp_path / "empty")
    assert "empty: no DICOM series" in one_line(error)


@pytest.mark.parametrize("name", ["junk.nii.gz", "junk.nii", "junk.nrrd", "junk.mha"])
def test_corrupt_file(tmp_path, name):
    (tmp_path / name).write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(MedvolError) as error:
        read_volume(tmp_path / name)
    assert f"{name}: cannot read volume" in one_line(error)


def test_empty_file(tmp_path):
    (tmp_path / "zero.nii.gz").write_bytes(b"")
    with pytest.raises(MedvolError, match=r"zero\.nii\.gz: file is empty"):
        read_volume(tmp_path / "zero.nii.gz")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_truncated_nifti(tmp_path, oblique_volume, suffix):
    path = write_volume(oblique_volume, tmp_path / f"vol{suffix}")
    raw = gzip.decompress(path.read_bytes()) if suffix == ".nii.gz" else path.read_bytes()
    cut = raw[: len(raw) // 2]
    path.write_bytes(gzip.compress(cut) if suffix == ".nii.gz" else cut)
    for reader in ("sitk", "nibabel", "auto"):
        with pytest.raises(MedvolError) as error:
            read_volume(path, reader=reader)
        assert f"vol{suffix}: cannot read volume" in one_line(error)


def test_truncated_gzip_stream(tmp_path, oblique_volume):
    path = write_volume(oblique_volume, tmp_path / "vol.nii.gz")
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(MedvolError, match=r"vol\.nii\.gz: cannot read volume"):
        read_volume(path)


def test_mhd_with_missing_or_short_raw(tmp_path, oblique_volume):
    write_volume(oblique_volume, tmp_path / "scan.mhd")
    raw = tmp_path / "scan.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    with pytest.raises(MedvolError, match=r"scan\.mhd: cannot read volume"):
        read_volume(tmp_path / "scan.mhd")
    raw.unlink()
    with pytest.raises(MedvolError, match=r"scan\.mhd: cannot read volume"):
        read_volume(tmp_path / "scan.mhd")


def test_2d_and_4d_images(tmp_path):
    import nibabel as nib
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 9), np.float32)), str(tmp_path / "flat.nii.gz"))
    with pytest.raises(MedvolError, match=r"flat\.nii\.gz: is 2D .*3D volume is needed"):
        read_volume(tmp_path / "flat.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((5, 6, 1), np.float32), np.eye(4)), str(tmp_path / "slab.nii.gz"))
    for reader in ("sitk", "nibabel"):
        with pytest.raises(MedvolError, match=r"slab\.nii\.gz: is a 2D image"):
            read_volume(tmp_path / "slab.nii.gz", reader=reader)
    nib.save(nib.Nifti1Image(np.zeros((5, 6, 7, 3), np.float32), np.eye(4)), str(tmp_path / "fmri.nii.gz"))
    for reader in ("sitk", "nibabel"):
        with pytest.raises(MedvolError, match=r"fmri\.nii\.gz: is 4D"):
            read_volume(tmp_path / "fmri.nii.gz", reader=reader)


def test_unknown_reader_and_format(tmp_path, oblique_volume):
    path = write_volume(oblique_volume, tmp_path / "vol.mhd")
    with pytest.raises(MedvolError, match="unknown reader 'pydicom'"):
        read_volume(path, reader="pydicom")
    with pytest.raises(MedvolError, match=r"vol\.mhd: reader 'nibabel' reads only NIfTI"):
        read_volume(path, reader="nibabel")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(MedvolError, match=r"image\.png: unrecognised volume format"):
        read_volume(tmp_path / "image.png")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_voxels(bad):
    array = np.zeros((8, 8, 8), np.float32)
    array[3, 4, 5] = bad
    with pytest.raises(MedvolError) as error:
        preprocess_volume(Volume(array=array, path="/data/ct7.nii.gz"), PreprocessParams(size=32))
    assert one_line(error) == "/data/ct7.nii.gz: 1 voxels are NaN or infinite"


def test_2d_array_in_preprocess():
    with pytest.raises(MedvolError, match="<in-memory volume>: shape \\(1, 8, 8\\) is not a 3D volume"):
        preprocess_volume(Volume(array=np.zeros((1, 8, 8), np.float32)), PreprocessParams(size=32))


@pytest.mark.parametrize("window", [(600.0, -1024.0), (0.0, 0.0), (float("nan"), 1.0)])
def test_bad_window(window):
    with pytest.raises(MedvolError, match=r"--window"):
        PreprocessParams(size=64, window=window)


@pytest.mark.parametrize("text", ["600,-1024", "1,1", "abc", "-1024", "1,2,3"])
def test_bad_window_text(text):
    with pytest.raises(MedvolError, match=r"--window"):
        parse_window(text)


@pytest.mark.parametrize("size", [0, 48, 100, 1024, 64.0, True])
def test_unsupported_size(size):
    with pytest.raises(MedvolError) as error:
        PreprocessParams(size=size)
    assert "--size" in one_line(error) and "32, 64, 128, 256, 512" in one_line(error)


def test_other_bad_params():
    with pytest.raises(MedvolError, match="--modality"):
        PreprocessParams(size=64, modality="pet")
    with pytest.raises(MedvolError, match="--percentiles"):
        PreprocessParams(size=64, modality="mr", percentiles=(99.0, 1.0))
    with pytest.raises(MedvolError, match="--blank-slices"):
        PreprocessParams(size=64, blank_slices="drop")

"""Dataset discovery: file, folder, glob, .txt list; LUNA16, LiTS and DICOM layouts."""

import numpy as np
import pytest

from medvol.data.discover import discover
from medvol.data.io import Volume, write_volume
from medvol.errors import MedvolError


@pytest.fixture
def tiny():
    return Volume(array=np.zeros((3, 4, 5), np.float32))


def test_luna16_layout(tmp_path, tiny):
    root = tmp_path / "LUNA16"
    for subset, uid in [("subset0", "1.3.6.1.4.1.14519.5.2.1.6279.6001.100"), ("subset1", "1.3.6.1.4.1.2")]:
        write_volume(tiny, root / subset / f"{uid}.mhd", dtype=np.int16)
    write_volume(tiny, root / "seg-lungs-LUNA16" / "1.3.6.1.4.1.2.mhd", dtype=np.uint8)
    (root / "annotations.csv").write_text("seriesuid,coordX\n", encoding="utf-8")
    found = discover(root)
    assert [p.relative_to(root).as_posix() for p in found] == [
        "subset0/1.3.6.1.4.1.14519.5.2.1.6279.6001.100.mhd", "subset1/1.3.6.1.4.1.2.mhd"]
    assert discover(str(root / "subset*" / "*.mhd")) == found


def test_lits_layout_takes_only_volumes(tmp_path, tiny):
    batch = tmp_path / "LiTS" / "Training Batch 1"
    for n in (0, 1, 10):
        write_volume(tiny, batch / f"volume-{n}.nii")
        write_volume(tiny, batch / f"segmentation-{n}.nii")
    found = discover(tmp_path / "LiTS")
    assert sorted(p.name for p in found) == ["volume-0.nii", "volume-1.nii", "volume-10.nii"]


def test_masks_beside_images_are_skipped_but_explicit_files_kept(tmp_path, tiny):
    write_volume(tiny, tmp_path / "phantom_0000.nii.gz")
    write_volume(tiny, tmp_path / "phantom_0000_mask.nii.gz")
    assert [p.name for p in discover(tmp_path)] == ["phantom_0000.nii.gz"]
    assert discover(tmp_path / "phantom_0000_mask.nii.gz") == [tmp_path / "phantom_0000_mask.nii.gz"]


def test_dicom_folder_is_one_source(tmp_path, oblique_volume, dicom_writer):
    oblique_volume.direction = (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)
    dicom_writer(oblique_volume, tmp_path / "patient1" / "CT")
    write_volume(oblique_volume, tmp_path / "other.nrrd")
    assert discover(tmp_path) == [tmp_path / "other.nrrd", tmp_path / "patient1" / "CT"]
    assert discover(str(tmp_path / "patient1" / "CT" / "*.dcm")) == [tmp_path / "patient1" / "CT"]


def test_text_list_with_comments_and_relative_paths(tmp_path, tiny):
    write_volume(tiny, tmp_path / "data" / "a.nii.gz")
    write_volume(tiny, tmp_path / "data" / "b.mhd")
    listing = tmp_path / "list.txt"
    listing.write_text("# training set\n\ndata/b.mhd\n" + str(tmp_path / "data" / "a.nii.gz") + "\n", encoding="utf-8")
    assert discover(listing) == [tmp_path / "data" / "a.nii.gz", tmp_path / "data" / "b.mhd"]
    listing.write_text("data/a.nii.gz\ndata/missing.nii.gz\n", encoding="utf-8")
    with pytest.raises(MedvolError, match=r"list\.txt:2: data/missing\.nii\.gz: no such file"):
        discover(listing)


def test_recursive_glob(tmp_path, tiny):
    write_volume(tiny, tmp_path / "x" / "y" / "deep.nii.gz")
    write_volume(tiny, tmp_path / "top.nii.gz")
    expected = [tmp_path / "top.nii.gz", tmp_path / "x" / "y" / "deep.nii.gz"]
    assert discover(str(tmp_path / "**" / "*.nii.gz")) == expected


def test_discovery_errors_name_the_path(tmp_path):
    with pytest.raises(MedvolError, match=r"nowhere: no such file or folder"):
        discover(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedvolError, match=r"empty: no volumes found"):
        discover(tmp_path / "empty")
    with pytest.raises(MedvolError, match=r"\*\.nii: no volumes match"):
        discover(str(tmp_path / "*.nii"))
    (tmp_path / "notes.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(MedvolError, match=r"notes\.csv: not a volume"):
        discover(tmp_path / "notes.csv")

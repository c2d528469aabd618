"""2D DICOM into a 2D cache, on the DICOM files that ship inside pydicom (and copies medvol
rewrites from them): window, VOI LUT, MONOCHROME1, Modality LUT, spacing. Every expected value is
computed here from the stored pixels with the formulas of DICOM PS3.3 C.11.2 (not with pydicom's
LUT functions, which the code under test calls)."""

import json

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402

from medvol.data.image_cache import ImageParams, build_image_cache  # noqa: E402


def _bundled(name):
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not among the installed pydicom test files")
    return path


def _cache_one(tmp_path, dataset, size, name="img.dcm", **options):
    folder = tmp_path / "src"
    folder.mkdir(parents=True, exist_ok=True)
    dataset.save_as(folder / name, enforce_file_format=True)
    cache = build_image_cache(folder, tmp_path / "cache", ImageParams(size=size, **options), strict=True)
    entry = cache.manifest["volumes"][0]
    return np.load(tmp_path / "cache" / entry["file"]), entry


def _window_oracle(x, center, width, low, high):
    """PS3.3 C.11.2.1.2.1 LINEAR window to [low, high], then that range to [-1, 1]."""
    c, w = center - 0.5, width - 1
    y = np.where(x <= c - w / 2, low, np.where(x > c + w / 2, high, ((x - c) / w + 0.5) * (high - low) + low))
    return (y - low) / (high - low) * 2 - 1


def test_the_window_of_a_shipped_mr_image(tmp_path):
    ds = pydicom.dcmread(_bundled("MR_small.dcm"))
    assert (ds.PixelRepresentation, ds.BitsStored, float(ds.WindowCenter), float(ds.WindowWidth)) == (1, 16, 600, 1600)
    raw = ds.pixel_array.astype(np.float64)
    cached, entry = _cache_one(tmp_path, ds, 64)
    expected = _window_oracle(raw, 600.0, 1600.0, -32768.0, 32767.0)
    assert cached.shape == (1, 64, 64) and cached.dtype == np.float32
    np.testing.assert_allclose(cached[0], expected, atol=1e-6)
    assert entry["voi"] == "window" and entry["scaled_from"] == [-32768.0, 32767.0]
    assert entry["spacing"] == [0.3125, 0.3125] and entry["original_spacing"] == [0.3125, 0.3125]


def test_pixel_spacing_follows_the_resize(tmp_path):
    ds = pydicom.dcmread(_bundled("MR_small.dcm"))
    _, entry = _cache_one(tmp_path, ds, 16)
    assert entry["spacing"] == [1.25, 1.25]


def test_monochrome1_radiograph_is_inverted_and_keeps_imager_spacing(tmp_path):
    ds = pydicom.dcmread(_bundled("MR_small.dcm"))
    plain, _ = _cache_one(tmp_path / "m2", ds, 64)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.Modality = "CR"
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = [0.15, 0.2]
    inverted, entry = _cache_one(tmp_path / "m1", ds, 64)
    np.testing.assert_array_equal(inverted, -plain)
    assert entry["photometric"] == "MONOCHROME1" and entry["modality"] == "CR"
    assert entry["spacing"] == [0.15, 0.2]


def test_a_voi_lut_sequence_is_applied_before_the_window(tmp_path):
    ds = pydicom.dcmread(_bundled("MR_small.dcm"))
    raw = ds.pixel_array.astype(np.int64)
    first, entries = int(np.percentile(raw, 20)), 64
    table = np.round(np.linspace(0, 255, entries) ** 2 / 255).astype(np.uint16)  # not linear: a window cannot fake it
    item = Dataset()
    item.LUTDescriptor = [entries, first, 8]
    item.add_new(0x00283006, "US", [int(v) for v in table])  # LUT Data
    ds.VOILUTSequence = Sequence([item])
    cached, entry = _cache_one(tmp_path, ds, 64)
    expected = table[np.clip(raw - first, 0, entries - 1)] / 255.0 * 2 - 1
    np.testing.assert_allclose(cached[0], expected, atol=1e-6)
    assert entry["voi"] == "lut" and entry["scaled_from"] == [0.0, 255.0]


def test_ct_rescale_then_a_hu_window(tmp_path):
    ds = pydicom.dcmread(_bundled("CT_small.dcm"))
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    cached, entry = _cache_one(tmp_path, ds, 128, scale="window", window=(-160.0, 240.0))
    np.testing.assert_allclose(cached[0], np.clip((hu + 160) / 400 * 2 - 1, -1, 1), atol=1e-6)
    assert entry["scaled_from"] == [-160.0, 240.0]


def test_without_a_window_auto_is_min_max(tmp_path):
    ds = pydicom.dcmread(_bundled("CT_small.dcm"))
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    cached, entry = _cache_one(tmp_path, ds, 128)
    np.testing.assert_allclose(cached[0], (hu - hu.min()) / (hu.max() - hu.min()) * 2 - 1, atol=1e-6)
    assert entry["scaled_from"] == [hu.min(), hu.max()] and "voi" not in entry


def test_colour_dicom_grey_or_rgb(tmp_path):
    ds = pydicom.dcmread(_bundled("examples_rgb_color.dcm"))
    rgb = np.ascontiguousarray(ds.pixel_array[:, :240])  # square: no resize in the way of the oracle
    ds.PixelData, ds.Columns = rgb.tobytes(), 240
    kept, _ = _cache_one(tmp_path / "rgb", ds, 240, colour="rgb")
    grey, _ = _cache_one(tmp_path / "grey", ds, 240)
    expected = np.moveaxis(rgb.astype(np.float64), -1, 0) / 255 * 2 - 1
    np.testing.assert_allclose(kept, expected, atol=1e-6)
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(grey[0], luma / 255 * 2 - 1, atol=1e-6)


def test_a_multiframe_dicom_is_refused_in_one_line(tmp_path, capsys):
    from medvol.cli import main

    src = tmp_path / "src"
    src.mkdir()
    (src / "frames.dcm").write_bytes(open(_bundled("SC_rgb_rle_2frame.dcm"), "rb").read())
    code = main(["preprocess", "--images", "images", "--src", str(src), "--dst", str(tmp_path / "c"), "--size", "32",
                 "--strict"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "frames.dcm: a multi-frame DICOM (2 frames)" in err, err
    assert not (tmp_path / "c" / "manifest.json").exists()


def test_a_dicom_sidecar_marked_synthetic_is_refused(tmp_path):
    from medvol.errors import MedvolError

    src = tmp_path / "src"
    src.mkdir()
    pydicom.dcmread(_bundled("MR_small.dcm")).save_as(src / "fake.dcm")
    (src / "fake.json").write_text(json.dumps({"synthetic": True, "model": "dcgan"}), encoding="utf-8")
    with pytest.raises(MedvolError, match=r"fake\.dcm: marked synthetic \(sidecar fake\.json\)"):
        build_image_cache(src, tmp_path / "c", ImageParams(size=32))
    summary = build_image_cache(src, tmp_path / "c", ImageParams(size=32), allow_synthetic=True)
    entry = summary.manifest["volumes"][0]
    assert entry["synthetic"] is True and entry["split"] == "train" and entry["provenance"]["model"] == "dcgan"


def test_dicom_files_without_a_suffix_are_found(tmp_path):
    ds = pydicom.dcmread(_bundled("MR_small.dcm"))
    cached, entry = _cache_one(tmp_path, ds, 64, name="IM0001")
    assert entry["name"] == "IM0001" and entry["voi"] == "window" and cached.shape == (1, 64, 64)

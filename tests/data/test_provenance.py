"""Provenance of synthetic data: marks on generated volumes, finding them again (after a SimpleITK
read and write, without the sidecar), preprocessing and loading refusing marked volumes unless
allowed, mixed caches, and ``medvol info PATH``."""

from __future__ import annotations

import json
import re
import shutil
import time

import numpy as np
import pytest

import medvol
from medvol import cli
from medvol.data.cache import build_cache, export_nifti, load_manifest
from medvol.data.datasets import CachedVolumeDataset
from medvol.data.io import Volume, read_volume, write_volume
from medvol.data.phantom import write_phantoms
from medvol.data.preprocess import PreprocessParams
from medvol.data.provenance import (describe, provenance_of, sidecar_path, voxels_sha256,
                                    write_synthetic)
from medvol.errors import MedvolError

sitk = pytest.importorskip("SimpleITK")
nib = pytest.importorskip("nibabel")

P32 = PreprocessParams(size=32)
RECORD = {"model": "crfgan@32", "checkpoint": "/runs/a/checkpoints/ckpt_00000002.pt",
          "checkpoint_sha256": "0123456789abcdef" * 4, "iteration": 2, "seed": 7, "index": 1, "label": None}


@pytest.fixture
def real_and_generated(tmp_path):
    """``src`` holds 3 real phantoms (int16 HU) and 3 volumes marked as generated (phantom voxels,
    so that they preprocess like scans)."""
    src = tmp_path / "src"
    real = write_phantoms(3, 32, src, seed=1)
    generated = []
    for i, path in enumerate(write_phantoms(3, 32, tmp_path / "tmp", seed=2)):
        out = src / f"sample_{i:04d}.nii.gz"
        write_synthetic(read_volume(path), out, dict(RECORD, index=i))
        generated.append(out)
    shutil.rmtree(tmp_path / "tmp")
    return src, real, generated


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha", ".nrrd", ".mhd"])
def test_generated_volume_carries_header_mark_and_sidecar(tmp_path, suffix):
    array = np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32)
    path = tmp_path / f"sample_0001{suffix}"
    before = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    record = write_synthetic(Volume(array=array, spacing=(2.0, 1.0, 1.5)), path, RECORD)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    notes = reader.GetMetaData("descrip" if suffix == ".nii.gz" else "ITK_FileNotes")
    assert re.match(r"synthetic\b", notes) and len(notes.encode()) <= 79
    if suffix == ".nii.gz":
        header = nib.load(str(path)).header
        assert header["descrip"].item().decode().startswith("synthetic medvol crfgan@32 seed 7 #1")
        assert header["aux_file"].item().decode() == "medvol synthetic"
    else:
        assert reader.GetMetaData("medvol_synthetic") == "true"
    side = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    assert sidecar_path(path).name == "sample_0001.json" and side == record
    assert side["synthetic"] is True and side["medvol_version"] == medvol.__version__
    for key in ("model", "checkpoint", "checkpoint_sha256", "iteration", "seed", "index", "label"):
        assert side[key] == RECORD[key], key
    assert before <= side["created"] <= time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    assert side["voxels_sha256"] == voxels_sha256(read_volume(path).array)
    assert side["voxels_sha256"] != voxels_sha256(array + 1e-3)


def test_description_starts_with_the_word_and_fits_the_field():
    long = dict(RECORD, model="a-model-with-a-very-long-registry-name-and-options@512", seed=2**40, index=99999,
                label=12)
    for record in (RECORD, long, {}):
        text = describe(record)
        assert text.startswith("synthetic ") and len(text) <= 79 and text.isascii()


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha", ".nrrd"])
def test_mark_survives_simpleitk_read_and_write_without_the_sidecar(tmp_path, suffix):
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    path = tmp_path / f"g{suffix}"
    write_synthetic(Volume(array=array), path, RECORD)
    copy = tmp_path / "elsewhere" / f"copy{suffix}"
    copy.parent.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(path)), str(copy))
    found = provenance_of(copy)
    assert not sidecar_path(copy).exists() and found["sidecar"] is None and found["listed_in"] is None
    assert found["synthetic"] and all(mark.startswith("header ") for mark in found["evidence"])
    # A NIfTI converted to MetaImage keeps the marks as free fields.
    converted = tmp_path / "elsewhere" / "converted.mha"
    sitk.WriteImage(sitk.ReadImage(str(path)), str(converted))
    assert provenance_of(converted)["synthetic"]


def test_plain_copy_and_nibabel_rewrite_keep_the_nifti_mark(tmp_path):
    path = tmp_path / "g.nii.gz"
    write_synthetic(Volume(array=np.zeros((3, 4, 5), np.float32)), path, RECORD)
    copy = tmp_path / "other" / "scan.nii.gz"
    copy.parent.mkdir()
    shutil.copy(path, copy)
    assert provenance_of(copy)["evidence"] == ["header descrip " + repr(describe(RECORD)),
                                              "header aux_file 'medvol synthetic'"]
    image = nib.load(str(path))
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj) + 1, image.affine, image.header), str(tmp_path / "other" / "b.nii.gz"))
    assert provenance_of(tmp_path / "other" / "b.nii.gz")["synthetic"]
    # A fresh header drops the header marks: only the sidecar and the listing remain.
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), image.affine), str(tmp_path / "other" / "fresh.nii.gz"))
    assert not provenance_of(tmp_path / "other" / "fresh.nii.gz")["synthetic"]


def test_sidecar_or_listing_alone_is_enough_and_real_files_are_unmarked(tmp_path):
    real = write_phantoms(1, 32, tmp_path / "real", seed=0)[0]
    found = provenance_of(real)
    assert (found["synthetic"], found["evidence"], found["record"]) == (False, [], None)
    # A BIDS sidecar of a scan (acquisition parameters) is no provenance record.
    sidecar_path(real).write_text(json.dumps({"RepetitionTime": 2.0}), encoding="utf-8")
    assert not provenance_of(real)["synthetic"]
    sidecar_path(real).write_text(json.dumps({"synthetic": True, "model": "x"}), encoding="utf-8")
    assert provenance_of(real)["evidence"] == ["sidecar phantom_0000.json"]
    assert provenance_of(real)["record"]["model"] == "x"
    sidecar_path(real).unlink()
    (tmp_path / "real" / "generated.json").write_text(json.dumps({"files": {real.name: {"seed": 4}}}),
                                                      encoding="utf-8")
    found = provenance_of(real)
    assert found["synthetic"] and found["record"] == {"seed": 4} and found["evidence"][0].startswith("listed in")
    with pytest.raises(MedvolError, match="no such file"):
        provenance_of(tmp_path / "missing.nii.gz")


def test_preprocess_refuses_marked_volumes_then_accepts_them_with_the_flag(tmp_path, real_and_generated, capsys):
    src, real, generated = real_and_generated
    dst = tmp_path / "cache"
    argv = ["preprocess", "--src", str(src), "--dst", str(dst), "--size", "32", "--workers", "1",
            "--val-fraction", "0.5"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--allow-synthetic" in err and "marked synthetic" in err
    assert str(generated[0].resolve()) in err and "2 more of the 6" in err
    assert not dst.exists()  # refused before anything was written
    assert cli.main([*argv, "--allow-synthetic"]) == 0
    assert "3 synthetic" in capsys.readouterr().out
    entries = {e["name"]: e for e in load_manifest(dst)["volumes"]}
    for path in real:
        assert entries[path.name.split(".")[0]]["synthetic"] is False
        assert "provenance" not in entries[path.name.split(".")[0]]
    for i, path in enumerate(generated):
        entry = entries[f"sample_{i:04d}"]
        assert entry["synthetic"] is True and entry["split"] == "train"  # the val split stays real
        assert entry["provenance"]["checkpoint_sha256"] == RECORD["checkpoint_sha256"]
        assert entry["provenance"]["index"] == i and "sidecar sample_%04d.json" % i in entry["provenance"]["evidence"]
    assert any(e["split"] == "val" for e in entries.values())
    # The mixed cache grows with real volumes without the flag; its synthetic entries stay marked.
    more = write_phantoms(1, 32, tmp_path / "more", seed=9)
    build_cache(more[0], dst, P32)
    assert sum(e["synthetic"] is True for e in load_manifest(dst)["volumes"]) == 3
    # Growing it again from the marked source without the flag is refused.
    with pytest.raises(MedvolError, match="sample_0000.nii.gz: marked synthetic"):
        build_cache(src, dst, P32)


def test_loaders_refuse_a_mixed_cache_unless_allowed(tmp_path, real_and_generated):
    from medvol.config import load_config
    from medvol.train.data import build_dataset, data_meta

    src, _, _ = real_and_generated
    cache = tmp_path / "cache"
    build_cache(src, cache, P32, allow_synthetic=True, val_fraction=0.5)
    with pytest.raises(MedvolError, match=r"3 of its \d+ train volume\(s\) are marked synthetic.*"
                                          r"data\.allow_synthetic: true"):
        CachedVolumeDataset(cache)
    allowed = CachedVolumeDataset(cache, allow_synthetic=True)
    assert sorted(allowed.synthetic) == ["sample_0000", "sample_0001", "sample_0002"]
    assert len(allowed) == len(allowed.synthetic) + sum(e["split"] == "train" and not e["synthetic"]
                                                        for e in load_manifest(cache)["volumes"])
    assert CachedVolumeDataset(cache, split="val").synthetic == []  # the real validation split loads
    cfg = load_config(None, ["--data.source", str(cache), "--model.size", "32"])
    assert cfg.data.allow_synthetic is False
    with pytest.raises(MedvolError, match="marked synthetic"):
        build_dataset(cfg.data, 32)
    cfg = load_config(None, ["--data.source", str(cache), "--model.size", "32", "--data.allow_synthetic", "true"])
    dataset = build_dataset(cfg.data, 32)
    meta = data_meta(dataset, cfg.data)
    assert (meta["volumes"], meta["synthetic_volumes"]) == (len(dataset), 3)
    with pytest.raises(MedvolError, match="data.allow_synthetic"):
        load_config(None, ["--data.allow_synthetic", "maybe"])


def test_entries_without_a_record_are_judged_by_their_source(tmp_path, real_and_generated):
    src, _, generated = real_and_generated
    cache = tmp_path / "cache"
    build_cache(src, cache, P32, allow_synthetic=True, val_fraction=0.5)
    manifest = load_manifest(cache)
    for entry in manifest["volumes"]:  # a cache made before medvol recorded provenance
        entry.pop("synthetic")
        entry.pop("provenance", None)
    (cache / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(MedvolError, match="marked synthetic"):
        CachedVolumeDataset(cache, split="all")
    assert provenance_of(cache)["unchecked"] and not provenance_of(cache)["synthetic"]
    for path in generated:
        path.unlink()
    assert len(CachedVolumeDataset(cache, split="all")) == 6  # the sources are gone: nothing to judge by


def test_export_of_a_mixed_cache_keeps_the_marks(tmp_path, real_and_generated):
    src, real, _ = real_and_generated
    cache = tmp_path / "cache"
    build_cache(src, cache, P32, allow_synthetic=True)
    written = {p.name: p for p in export_nifti(cache, tmp_path / "export")}
    assert provenance_of(written["sample_0002.nii.gz"], verify=True)["synthetic"]
    record = json.loads((tmp_path / "export" / "sample_0002.json").read_text(encoding="utf-8"))
    assert record["exported_from"] == {"cache": str(cache), "entry": "sample_0002"}
    assert record["seed"] == RECORD["seed"] and record["index"] == 2
    assert provenance_of(written["sample_0002.nii.gz"], verify=True)["voxels_match"]
    found = provenance_of(written[real[0].name])
    assert not found["synthetic"] and not (tmp_path / "export" / "phantom_0000.json").exists()


def test_info_path_prints_provenance(tmp_path, real_and_generated, capsys):
    src, real, generated = real_and_generated
    assert cli.main(["info", str(generated[1])]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"{generated[1]}: SYNTHETIC"
    assert "mark: sidecar sample_0001.json" in out and f"checkpoint sha256 {RECORD['checkpoint_sha256']}" in out
    assert "seed 7, index 1" in out and "voxels match the sidecar's checksum" in out
    assert cli.main(["info", str(real[0])]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"{real[0]}: not marked synthetic" and "mark:" not in out
    copy = tmp_path / "copies" / "scan.nii.gz"
    copy.parent.mkdir()
    shutil.copy(generated[1], copy)
    assert cli.main(["info", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and "only the header says what made it" in out and "mark: sidecar" not in out
    # The voxels changed under an intact header and sidecar: said so.
    volume = read_volume(generated[1])
    volume.array += 1
    write_volume(volume, generated[1], notes=describe(RECORD))
    assert cli.main(["info", str(generated[1]), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["synthetic"] and found["voxels_match"] is False
    cache = tmp_path / "cache"
    build_cache(src, cache, P32, allow_synthetic=True)
    assert cli.main(["info", str(cache / "volumes" / "sample_0000.npy")]) == 0
    assert "SYNTHETIC (entry 'sample_0000' of the cache" in capsys.readouterr().out
    assert cli.main(["info", str(cache)]) == 0
    assert "medvol cache of 6 volume(s), 3 marked synthetic" in capsys.readouterr().out
    # The parameter-count form still works; neither form, or both, is a one-line error.
    assert cli.main(["info", "--model", "crfgan", "--size", "64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["G"] > 0
    for argv in (["info"], ["info", str(real[0]), "--model", "crfgan"], ["info", str(tmp_path / "none.nii")]):
        assert cli.main(argv) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_info_on_a_2d_image_cache_says_what_it_holds(tmp_path, capsys):
    """``medvol info CACHE`` of ``medvol preprocess --images``: dims, count, size, colour, classes, split."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, n in (("normal", 3), ("tb", 2)):
        (tmp_path / "pngs" / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "pngs" / cls / f"{i}.png")
    assert cli.main(["preprocess", "--src", str(tmp_path / "pngs"), "--dst", str(tmp_path / "cache"), "--images",
                     "images", "--size", "8", "--colour", "rgb", "--classes", "folders", "--val-fraction", "0.4"]) == 0
    capsys.readouterr()
    val = sum(e["split"] == "val" for e in load_manifest(tmp_path / "cache")["volumes"])
    assert cli.main(["info", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "medvol 2D image cache (dims 2) of 5 image(s), 0 marked synthetic" in out
    assert f"8x8 rgb, of image files; classes: normal 3, tb 2; split seeded: train {5 - val}, val {val}" in out
    assert cli.main(["info", str(tmp_path / "cache"), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert (found["dims"], found["size"], found["colour"], found["classes"]) == (2, 8, "rgb", {"normal": 3, "tb": 2})

"""Generation: deterministic per seed, NIfTI in HU (MR in [-1, 1]) with the training spacing and
direction, a centred origin and provenance; one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medvol import cli
from medvol.data.datasets import CachedVolumeDataset
from medvol.data.io import read_volume
from medvol.config import load_config
from medvol.data.preprocess import PreprocessParams
from medvol.errors import MedvolError
from medvol.train import checkpoint as ckpt
from medvol.sample.generate import generate_volumes
from medvol.sample.records import PROVENANCE

# optional packages ([itk], [dev]): the module is skipped where they are absent (a bare GPU
# machine collects `pytest -m gpu` without them)
sitk = pytest.importorskip("SimpleITK")
Rotation = pytest.importorskip("scipy.spatial.transform").Rotation

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.fixture
def run_dir(trained_run):
    return trained_run


def test_generate_is_deterministic_and_writes_hu_nifti(run_dir, phantom_cache, tmp_path):
    first = generate_volumes(run_dir, 2, tmp_path / "a", seed=5)
    again = generate_volumes(run_dir, 1, tmp_path / "b", seed=5)
    other = generate_volumes(run_dir, 1, tmp_path / "c", seed=6)
    assert [p.name for p in first] == ["sample_0000.nii.gz", "sample_0001.nii.gz"]
    a0, a1 = (read_volume(p) for p in first)
    b0, c0 = read_volume(again[0]), read_volume(other[0])
    assert a0.array.shape == (32, 32, 32)
    np.testing.assert_array_equal(a0.array, b0.array)
    assert not np.array_equal(a0.array, a1.array) and not np.array_equal(a0.array, c0.array)
    # HU: the inverse of the [-1024, 600] window, not [-1, 1].
    assert a0.array.min() >= -1024.5 and a0.array.max() <= 600.5 and a0.array.max() - a0.array.min() > 2
    expected = CachedVolumeDataset(phantom_cache).spacing
    np.testing.assert_allclose(a0.spacing, expected, rtol=1e-5)
    tiled = read_volume(generate_volumes(run_dir, 1, tmp_path / "t", seed=5, tile_depth=2)[0])
    np.testing.assert_allclose(tiled.array, a0.array, atol=1e-2)


def test_generate_cli_and_errors(run_dir, tmp_path, capsys):
    assert cli.main(["generate", "--ckpt", str(run_dir), "--n", "1", "--out", str(tmp_path / "o"),
                     "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "sample_0000.nii.gz" in out and "peak memory" in out
    with pytest.raises(MedvolError, match="not class-conditional"):
        generate_volumes(run_dir, 1, tmp_path / "x", label=1)
    for argv in (["--ckpt", str(tmp_path / "nope.pt")], ["--ckpt", str(run_dir), "--n", "0"],
                 ["--ckpt", str(tmp_path)]):
        assert cli.main(["generate", "--out", str(tmp_path / "y"), *argv]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def _with_data_facts(run_dir, tmp_path, **facts):
    """A copy of the run's checkpoint whose recorded training data has other ``facts``."""
    state = ckpt.read_checkpoint(run_dir)
    state["data"] = dict(state["data"], **facts)
    path = tmp_path / "ckpt" / ckpt.checkpoint_name(state["iteration"])
    path.parent.mkdir()
    ckpt.save_checkpoint(path, {k: v for k, v in state.items() if k not in ("path", "format", "version")})
    return path


def test_generated_volumes_carry_training_geometry_and_provenance(run_dir, tmp_path):
    # Axes of an LPS-sorted scan read in another order: x runs right-to-left, y is superior.
    direction = (-1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0)
    spacing = (2.5, 0.8, 0.7)
    path = _with_data_facts(run_dir, tmp_path, spacing=list(spacing), direction=list(direction))
    (written,) = generate_volumes(path, 1, tmp_path / "g", seed=3)
    volume = read_volume(written)
    np.testing.assert_allclose(volume.spacing, spacing, rtol=1e-6)
    np.testing.assert_allclose(volume.direction, direction, atol=1e-6)
    # The centre of the volume sits at (0, 0, 0) mm.
    centre_index = (np.asarray(volume.shape[::-1]) - 1) / 2.0  # (x, y, z) index of the centre
    centre = np.asarray(volume.origin) + np.asarray(direction).reshape(3, 3) @ (centre_index * spacing[::-1])
    np.testing.assert_allclose(centre, 0.0, atol=1e-4)
    import nibabel as nib

    assert nib.load(str(written)).header["descrip"].item().decode().startswith("synthetic medvol crfgan@32 seed 3 #0")
    record = json.loads((tmp_path / "g" / PROVENANCE).read_text(encoding="utf-8"))["files"][written.name]
    assert record["checkpoint"] == str(path.resolve()) and record["iteration"] == 2
    assert record["checkpoint_sha256"] == ckpt.checksum_path(path).read_text(encoding="utf-8").split()[0]
    assert (record["seed"], record["index"], record["model"], record["intensity"]) == (3, 0, "crfgan@32", "HU")
    np.testing.assert_allclose(record["origin"], volume.origin, atol=1e-4)


def test_mr_output_stays_in_minus_one_to_one(run_dir, tmp_path):
    path = _with_data_facts(run_dir, tmp_path, window=None, modality="mr")
    (written,) = generate_volumes(path, 1, tmp_path / "g", seed=3)
    array = read_volume(written).array
    assert array.min() >= -1.0 and array.max() <= 1.0 and array.max() - array.min() > 0.1
    record = json.loads((tmp_path / "g" / PROVENANCE).read_text(encoding="utf-8"))["files"][written.name]
    assert record["intensity"].startswith("[-1, 1]") and record["window"] is None


def test_training_records_the_data_direction(phantom_cache, tmp_path):
    from medvol.train.data import data_meta, oriented_direction, training_direction

    flipped = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # RAS-sorted axes
    swapped = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)

    class Cache:  # the manifest facts a CachedVolumeDataset exposes
        def __init__(self, entries, orient):
            self.entries, self.params = entries, PreprocessParams(size=32, orient=orient)

    # Newer caches record each entry's direction; the most common one wins.
    assert training_direction(Cache([{"direction": swapped}] * 2 + [{"direction": flipped}], "LPS")) == swapped
    # Older ones: the source's direction, reoriented as the cache did.
    assert training_direction(Cache([{"original_direction": flipped}], "LPS")) == IDENTITY
    assert training_direction(Cache([{"original_direction": flipped}], None)) == flipped
    oblique = tuple(float(v) for v in Rotation.from_rotvec([0.1, -0.2, 0.15]).as_matrix()[:, [1, 0, 2]].ravel())
    image = sitk.Image([2, 2, 2], sitk.sitkFloat32)
    image.SetDirection(oblique)
    for code in ("LPS", "RAS", "PLI"):
        np.testing.assert_allclose(oriented_direction(oblique, code), sitk.DICOMOrient(image, code).GetDirection(),
                                   atol=1e-12, err_msg=code)
    cfg = load_config(None, ["--data.source", str(phantom_cache)])
    meta = data_meta(CachedVolumeDataset(phantom_cache), cfg.data)
    assert meta["direction"] == list(IDENTITY) and meta["modality"] == "ct"


def _bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def test_generate_continues_its_own_job_and_refuses_or_overwrites_another(run_dir, tmp_path, capsys):
    """Issue 22: --out holding another job's samples is refused unless --overwrite, which removes
    only what medvol wrote there; the identical command continues."""
    out = tmp_path / "g"
    generate_volumes(run_dir, 2, out, seed=5)
    volume = (out / "sample_0001.nii.gz").read_bytes()
    generate_volumes(run_dir, 2, out, seed=5)  # the same job again: continues (sidecars get a new date)
    first = _bytes(out)
    assert sorted(first) == [PROVENANCE, "preview.png", "sample_0000.json", "sample_0000.nii.gz",
                             "sample_0001.json", "sample_0001.nii.gz"]
    assert first["sample_0001.nii.gz"] == volume
    for other in (dict(n=2, seed=6), dict(n=3, seed=5), dict(n=2, seed=5, tile_depth=2)):
        with pytest.raises(MedvolError, match="holds the outputs of another medvol generate"):
            generate_volumes(run_dir, other.pop("n"), out, **other)
    assert cli.main(["generate", "--ckpt", str(run_dir), "--n", "1", "--seed", "6", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0]
    assert _bytes(out) == first
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    generate_volumes(run_dir, 1, out, seed=6, overwrite=True)
    listing = json.loads((out / PROVENANCE).read_text(encoding="utf-8"))
    assert sorted(listing["files"]) == ["sample_0000.nii.gz"] and listing["files"]["sample_0000.nii.gz"]["seed"] == 6
    assert not (out / "sample_0001.nii.gz").exists() and not (out / "sample_0001.json").exists()
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_generate_never_replaces_a_file_it_did_not_write(run_dir, tmp_path):
    out = tmp_path / "g"
    out.mkdir()
    (out / "sample_0001.nii.gz").write_bytes(b"a user's scan")
    with pytest.raises(MedvolError, match="sample_0001.nii.gz"):
        generate_volumes(run_dir, 2, out)
    # --overwrite keeps it: refused before anything is generated, nothing else written.
    with pytest.raises(MedvolError, match="sample_0001.nii.gz: exists and was not written by medvol"):
        generate_volumes(run_dir, 2, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["sample_0001.nii.gz"]
    assert (out / "sample_0001.nii.gz").read_bytes() == b"a user's scan"
    (out / "sample_0001.nii.gz").unlink()
    (out / PROVENANCE).write_text("{}", encoding="utf-8")  # a generated.json medvol did not write
    with pytest.raises(MedvolError, match="generated.json"):
        generate_volumes(run_dir, 1, out, overwrite=True)
    assert (out / PROVENANCE).read_text(encoding="utf-8") == "{}"

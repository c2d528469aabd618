"""Provenance end to end: generated volumes are marked (header, sidecar with the checkpoint's
SHA-256), a cache of them is refused by training unless ``data.allow_synthetic``, and a model
trained on them records it in its checkpoint and in what it generates."""

from __future__ import annotations

import json

import pytest

from medvol import cli
from medvol.data.cache import build_cache, load_manifest
from medvol.data.preprocess import PreprocessParams
from medvol.data.provenance import provenance_of, sidecar_path
from medvol.errors import MedvolError
from medvol.train.checkpoint import load_checkpoint
from medvol.sample.generate import generate_volumes
from medvol.sample.records import PROVENANCE
from medvol.utils import sha256_file

nib = pytest.importorskip("nibabel")
pytest.importorskip("SimpleITK")


def test_generated_volumes_are_marked_with_the_checkpoint_checksum(trained_run, tmp_path):
    paths = generate_volumes(trained_run, 2, tmp_path / "g", seed=4)
    _, _, state = load_checkpoint(trained_run)
    listing = json.loads((tmp_path / "g" / PROVENANCE).read_text(encoding="utf-8"))["files"]
    for i, path in enumerate(paths):
        descrip = nib.load(str(path)).header["descrip"].item().decode()
        assert descrip.split()[:3] == ["synthetic", "medvol", "crfgan@32"] and f"#{i}" in descrip
        side = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
        assert side == listing[path.name]  # the folder listing stays, with the same record
        assert side["checkpoint_sha256"] == sha256_file(state["path"])  # the file's own hash
        assert (side["synthetic"], side["seed"], side["index"], side["label"]) == (True, 4, i, None)
        assert side["training_data"]["synthetic_volumes"] == 0
        assert provenance_of(path, verify=True)["voxels_match"]


def test_training_on_generated_volumes_needs_allow_synthetic(trained_run, tmp_path, tiny_config_fn, capsys):
    from medvol.train.trainer import train

    generate_volumes(trained_run, 2, tmp_path / "g", seed=1)
    cache = tmp_path / "cache"
    assert cli.main(["preprocess", "--src", str(tmp_path / "g"), "--dst", str(cache), "--size", "32",
                     "--workers", "1"]) == 2
    assert "--allow-synthetic" in capsys.readouterr().err
    assert cli.main(["preprocess", "--src", str(tmp_path / "g"), "--dst", str(cache), "--size", "32",
                     "--workers", "1", "--allow-synthetic"]) == 0
    assert all(e["synthetic"] and e["provenance"]["model"] == "crfgan@32" for e in load_manifest(cache)["volumes"])
    cfg = tiny_config_fn(tmp_path / "run", source=str(cache), iterations=1)
    with pytest.raises(MedvolError, match="2 of its 2 train volume.*data.allow_synthetic"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()
    run = train(tiny_config_fn(tmp_path / "run2", "--data.allow_synthetic", "true", source=str(cache),
                               iterations=1))
    _, _, state = load_checkpoint(run)
    assert (state["data"]["volumes"], state["data"]["synthetic_volumes"]) == (2, 2)
    (path,) = generate_volumes(run, 1, tmp_path / "g2")
    record = provenance_of(path)["record"]
    assert record["training_data"] == {"source": str(cache), "volumes": 2, "synthetic_volumes": 2}

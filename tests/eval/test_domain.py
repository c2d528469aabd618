"""The domain feature network: plumbing with random-init weights, refusals, and that
`medvol features train` learns (its reconstruction loss falls)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medvol.cli import main
from medvol.errors import MedvolError
from medvol.eval import domain as D
from medvol.eval.features import get_extractor


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("domain")
    assert main(["data", "phantom", "--n", "6", "--size", "32", "--out", str(root / "src")]) == 0
    assert main(["preprocess", "--src", str(root / "src"), "--dst", str(root / "cache"),
                 "--size", "32", "--workers", "1"]) == 0
    return root / "cache"


def test_untrained_plumbing(tmp_path, seeded_rng):
    path = D.save_untrained(tmp_path / "d.pt", size=32, seed=3)
    ext = get_extractor(f"domain:{path}")
    vols = [(f"v{i}", seeded_rng.uniform(-1, 1, (32, 32, 32)).astype(np.float32)) for i in range(3)]
    a = ext.extract(vols)
    assert a.features["volume"].shape == (3, 1024) and ext.dim == 1024
    np.testing.assert_array_equal(a.features["volume"], get_extractor(f"domain:{path}").extract(vols).features["volume"])
    # one volume alone gives the same features as in a set (instance norm, no batch statistics)
    np.testing.assert_allclose(ext.extract(vols[1:2]).features["volume"][0], a.features["volume"][1],
                               rtol=1e-6, atol=1e-7)
    assert ext.info()["weights_sha256"] and "untrained" in ext.info()["preprocessing"]
    with pytest.raises(MedvolError, match="trained on 32\\^3"):
        ext.volume_features(np.zeros((64, 64, 64), np.float32))


def test_refusals(tmp_path):
    with pytest.raises(MedvolError, match="medvol features train"):
        get_extractor(f"domain:{tmp_path / 'none.pt'}")
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(MedvolError, match="not a medvol domain feature file"):
        get_extractor(f"domain:{other}")
    with pytest.raises(MedvolError, match="needs its weights file"):
        get_extractor("domain")


def test_features_train_learns(cache, tmp_path, capsys):
    out = tmp_path / "domain.pt"
    assert main(["features", "train", "--data", str(cache), "--out", str(out), "--iters", "40",
                 "--batch", "2", "--lr", "3e-3"]) == 0
    blob = D.read_feature_file(out)
    loss = blob["train"]["loss"]
    assert np.mean(loss[-8:]) < 0.8 * np.mean(loss[:8])
    assert blob["data"]["manifest_sha256"] and blob["size"] == 32
    ext = get_extractor(f"domain:{out}")
    assert ext.info()["trained_on"]["cache"].endswith("cache")
    capsys.readouterr()
    assert main(["features", "train", "--data", str(cache), "--out", str(out), "--iters", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert D.read_feature_file(out)["train"]["loss"] == loss


@pytest.fixture
def no_training(monkeypatch):
    def build(*args, **kwargs):
        raise AssertionError("training started before --out was checked")

    monkeypatch.setattr(D, "build_autoencoder", build)


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_features_train_never_replaces_a_file_it_did_not_write(cache, tmp_path, capsys, no_training, overwrite):
    """Issue 22: --out naming a user's file (or a folder) is refused before training, --overwrite or not."""
    out = tmp_path / "mine.pt"
    out.write_bytes(b"a user's file")
    assert main(["features", "train", "--data", str(cache), "--out", str(out), *overwrite]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a domain feature file medvol wrote" in err[0]
    assert out.read_bytes() == b"a user's file"
    assert main(["features", "train", "--data", str(cache), "--out", str(tmp_path), *overwrite]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_features_train_overwrite_replaces_its_own_file(cache, tmp_path):
    out = tmp_path / "domain.pt"
    D.save_untrained(out, size=32, seed=0)
    assert main(["features", "train", "--data", str(cache), "--out", str(out), "--iters", "1", "--batch", "1",
                 "--overwrite"]) == 0
    assert D.read_feature_file(out)["train"]["iters"] == 1


def test_features_train_on_a_full_disk(cache, tmp_path, medvol_with_file_limit):
    out = tmp_path / "domain.pt"
    done = medvol_with_file_limit(["features", "train", "--data", cache, "--out", out, "--iters", 1, "--batch", 1],
                                  limit=100_000)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"medvol features: error: cannot write domain feature file {out}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_feature_file_of_the_old_format_still_loads():
    """``tests/eval/data/domain_v1.pt`` was written by ``train_domain_features`` before the fit loop
    (format ``medvol-domain-features`` 1, channels 2-4-8-16, 32³); the features it gives a fixed
    volume were saved beside it by that code."""
    from pathlib import Path

    here = Path(__file__).parent / "data"
    blob = torch.load(here / "domain_v1.pt", weights_only=True)
    assert blob["format"] == "medvol-domain-features" and "kind" not in blob  # really the old format
    assert D.is_feature_file(here / "domain_v1.pt")
    volume = np.random.default_rng(5).uniform(-1, 1, (32, 32, 32)).astype(np.float32)
    features = get_extractor(f"domain:{here / 'domain_v1.pt'}").volume_features(volume)["volume"]
    np.testing.assert_array_equal(features, np.load(here / "domain_v1_features.npy"))
    assert D.read_feature_file(here / "domain_v1.pt")["train"]["loss"] == blob["train"]["loss"]


def test_an_old_feature_file_cannot_be_continued(cache, tmp_path):
    import shutil
    from pathlib import Path

    old = tmp_path / "old.pt"
    shutil.copy(Path(__file__).parent / "data" / "domain_v1.pt", old)
    for out, resume in ((old, "auto"), (tmp_path / "new.pt", str(old))):
        with pytest.raises(MedvolError, match="earlier format, without optimiser and RNG states"):
            D.train_domain_features(cache, out, iters=3, channels=(2, 4, 8, 16), resume=resume)
    assert not (tmp_path / "new.pt").exists()


def test_features_train_resumes_bit_exactly_and_refuses_changes(cache, tmp_path):
    """Through the fit loop: 2 iterations then ``--resume auto`` to 4 equal 4 at once; another
    recipe is refused in place and allowed as a fork into a new file."""
    whole, part = tmp_path / "whole.pt", tmp_path / "part.pt"
    options = dict(batch=1, channels=(2, 4, 8, 16), seed=3, log_every=0)
    D.train_domain_features(cache, whole, iters=4, **options)
    D.train_domain_features(cache, part, iters=2, ckpt_every=1, **options)
    D.train_domain_features(cache, part, iters=4, resume="auto", **options)
    a, b = D.read_feature_file(whole), D.read_feature_file(part)
    assert a["train"]["loss"] == b["train"]["loss"] and len(a["train"]["loss"]) == 4
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    history = torch.load(part, weights_only=True)["auxiliary"]["history"]
    assert [h["event"] for h in history] == ["start", "resume"]
    with pytest.raises(MedvolError, match="other settings .*batch 1 -> 2"):
        D.train_domain_features(cache, part, iters=5, resume="auto", **dict(options, batch=2))
    fork = tmp_path / "fork.pt"
    D.train_domain_features(cache, fork, iters=5, resume=str(part), **dict(options, batch=2))
    history = torch.load(fork, weights_only=True)["auxiliary"]["history"]
    assert history[-1]["event"] == "fork" and history[-1]["changes"] == {"batch": [1, 2]}
    assert D.read_feature_file(fork)["train"]["loss"][:4] == a["train"]["loss"]
    # A corrupted feature file is refused by its checksum, by the extractor and by a resume.
    data = bytearray(part.read_bytes())
    data[-100] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(MedvolError, match="corrupt or truncated"):
        get_extractor(f"domain:{part}")
    with pytest.raises(MedvolError, match="corrupt or truncated"):
        D.train_domain_features(cache, part, iters=6, resume="auto", **options)


def test_features_train_cli_resume(cache, tmp_path, capsys):
    """``--resume auto`` continues --out (no --overwrite needed: the same job); changed settings are
    one line and exit 2, and the file is kept."""
    out = tmp_path / "d.pt"
    common = ["features", "train", "--data", str(cache), "--out", str(out), "--batch", "1"]
    assert main([*common, "--iters", "2", "--ckpt-every", "1"]) == 0
    assert main([*common, "--iters", "3", "--resume", "auto"]) == 0
    assert len(D.read_feature_file(out)["train"]["loss"]) == 3
    before = out.read_bytes()
    capsys.readouterr()
    assert main([*common[:-1], "2", "--iters", "4", "--resume", "auto"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other settings (batch 1 -> 2)" in err[0]
    assert out.read_bytes() == before

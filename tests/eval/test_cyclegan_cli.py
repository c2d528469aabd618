"""cyclegan end to end through the CLI at a tiny size: train on two phantom image caches,
translate a cache with generate (A -> B and B -> A), score the translations against domain B with
evaluate; and generate's refusals of bad translation input (one line, exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medvol.cli import main
from test_features import TinyInception


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(11)
    path = tmp_path_factory.mktemp("w") / "inception_standin_cyclegan.pt"
    with pytest.warns(FutureWarning):
        torch.jit.save(torch.jit.script(TinyInception(dim=16)), str(path))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, unpaired_caches):
    out = tmp_path_factory.mktemp("cyclegan") / "run"
    code = main(["train", "--config", "cyclegan_tiny", "--data.source", str(unpaired_caches["A"]),
                 "--data.cache_b", str(unpaired_caches["B"]), "--train.iterations", "2", "--train.ckpt_every", "2",
                 "--train.sample_every", "2", "--train.out", str(out)])
    assert code == 0
    return out


def _nifti(path):
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_train_generate_evaluate(tmp_path, run, unpaired_caches, weights, capsys):
    from medvol.data.image_datasets import CachedImageDataset
    from medvol.data.preprocess import to_intensity

    a_cache = CachedImageDataset(unpaired_caches["A"], split="all")
    config = (run / "config.yaml").read_text(encoding="utf-8")
    assert "cache_b: " + str(unpaired_caches["B"]) in config
    out = tmp_path / "ab"
    assert main(["generate", "--ckpt", str(run), "--input", str(unpaired_caches["A"]), "--n", "6",
                 "--out", str(out), "--device", "cpu"]) == 0
    files = sorted(out.glob("sample_*.nii.gz"))
    assert len(files) == 6 and (out / "grid_0000.png").is_file() and not list(out.glob("*_mask.nii.gz"))
    record = json.loads((out / "generated.json").read_text(encoding="utf-8"))["files"]["sample_0002.nii.gz"]
    assert record["translation"] == "AB" and record["translated_from"] == a_cache.names[2]
    assert record["synthetic"] is True and record["input"] == str(unpaired_caches["A"].resolve())
    # The written image is G.AB of the cache's image 2, in domain B's HU.
    from medvol.sample.sampler import Sampler

    sampler = Sampler.load(run, device="cpu")
    x = torch.from_numpy(a_cache[2]["image"][None].numpy())
    expected = sampler.draw(sampler.system.sample_latent(1), images=x, direction="AB")[0, 0]
    np.testing.assert_allclose(_nifti(files[2]), to_intensity(expected, (-1024.0, 600.0)), atol=0.05)
    # B -> A uses the other generator.
    back = tmp_path / "ba"
    assert main(["generate", "--ckpt", str(run), "--input", str(unpaired_caches["B"]), "--n", "2",
                 "--direction", "BA", "--out", str(back), "--device", "cpu"]) == 0
    assert json.loads((back / "generated.json").read_text(encoding="utf-8"))["files"]["sample_0000.nii.gz"][
        "translation"] == "BA"
    y = CachedImageDataset(unpaired_caches["B"], split="all")[0]["image"][None]
    z = sampler.system.sample_latent(1)
    by_ba, by_ab = (sampler.draw(z, images=y, direction=d)[0, 0] for d in ("BA", "AB"))
    assert np.abs(by_ba - by_ab).max() > 0.01
    np.testing.assert_allclose(_nifti(back / "sample_0000.nii.gz"), to_intensity(by_ba, (-1024.0, 600.0)), atol=0.05)
    capsys.readouterr()
    code = main(["evaluate", "--real", str(unpaired_caches["B"]), "--fake", str(out), "--out", str(tmp_path / "ev"),
                 "--features", f"inception:{weights}", "--metrics", "fid,kid", "--n", "6", "--bootstrap", "3",
                 "--split", "train"])
    assert code == 0, capsys.readouterr().err
    scores = json.loads((tmp_path / "ev" / "scores.json").read_text(encoding="utf-8"))
    assert np.isfinite(scores["extractors"][0]["scores"]["image/fid"]["value"])


def test_generate_refuses_bad_translation_input(tmp_path, run, unpaired_caches, capsys):
    from medvol.data.image_cache import build_image_cache
    from medvol.data.image_prep import ImageParams
    from medvol.data.phantom import write_phantoms

    write_phantoms(1, 32, tmp_path / "volumes", seed=9)
    other_window = tmp_path / "window"
    build_image_cache(tmp_path / "volumes", other_window,
                      ImageParams(size=32, source="slices", window=(-1200.0, 400.0)), labels=False)
    (tmp_path / "plain").mkdir()
    a = str(unpaired_caches["A"])
    cases = [
        ([], "--input: cyclegan translates images; give the 2D image cache of domain A"),
        (["--input", str(tmp_path / "nothing")], "no such folder"),
        (["--input", str(tmp_path / "plain")], "not a 2D image cache"),
        (["--input", str(other_window)], "intensity window [-1200.0, 400.0] differs from domain A's"),
        (["--input", a, "--n", "999"], "--n 999 asked for"),
        (["--input", a, "--volume"], "--volume: cyclegan translates"),
        (["--input", a, "--masks", str(tmp_path)], "--masks: cyclegan translates"),
    ]
    for k, (extra, message) in enumerate(cases):
        out = tmp_path / f"out{k}"
        code = main(["generate", "--ckpt", str(run), "--out", str(out), "--device", "cpu", *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and len(err.splitlines()) == 1, (extra, err)
        assert not out.exists()
    # A translation model samples nothing from noise: evaluate scores its generate folder instead.
    for fake in (["--fake", str(run)], ["--run", str(run)]):
        code = main(["evaluate", "--real", str(unpaired_caches["B"]), *fake, "--out", str(tmp_path / "ev"),
                     "--n", "4"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "cyclegan translates given images; write its translations with medvol generate" in err
        assert len(err.splitlines()) == 1 and not (tmp_path / "ev").exists()

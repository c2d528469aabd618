"""``medvol evaluate`` on 2D images: a 2D model's checkpoint or a folder of PNG / 2D NIfTI images
against phantom slices, with a random-init TorchScript stand-in for the Inception network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medvol.cli import main
from medvol.config import load_config
from medvol.data.datasets import PhantomVolumeDataset, SliceDataset
from medvol.errors import MedvolError
from medvol.eval.features import get_extractor
from medvol.eval.images2d import read_image
from test_features import save_tiny_inception

SIZE = 32
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_tiny_inception(tmp_path_factory.mktemp("w") / "inception_standin_2d.pt", 11, dim=16)


def phantom_slices(seed: int, count: int) -> list[np.ndarray]:
    """``count`` non-blank axial slices of phantoms of ``seed``, evenly spaced, in [-1, 1]."""
    slices = SliceDataset(PhantomVolumeDataset(SIZE, 2, seed=seed), content_only=True)
    picks = np.linspace(0, len(slices) - 1, count).round().astype(int)
    return [slices[int(k)]["image"][0].numpy() for k in picks]


def write_pngs(folder, images):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(images):
        grey = np.round((np.clip(x, -1, 1) + 1) * 127.5).astype(np.uint8)
        Image.fromarray(grey).save(folder / f"img_{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def png_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("png")
    rng = np.random.default_rng(5)
    return {"phantom": write_pngs(root / "phantom1", phantom_slices(1, 12)),
            "noise": write_pngs(root / "noise", [rng.uniform(-1, 1, (SIZE, SIZE)) for _ in range(12)])}


@pytest.fixture(scope="module")
def run_2d(tmp_path_factory, tiny_dcgan_run):
    """A dcgan run of 4 iterations on 32^2 phantom slices, with checkpoints at 2 and 4."""
    return tiny_dcgan_run(tmp_path_factory.mktemp("run2d") / "run", 4, ckpt_every=2, sample_every=4)


def run_eval(capsys, *args):
    code = main(["evaluate", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def scores_of(folder):
    report = json.loads((folder / "scores.json").read_text(encoding="utf-8"))
    return report, report["extractors"][0]["scores"]


def test_inception_2d_plumbing(weights):
    images = phantom_slices(0, 5)
    one = get_extractor(f"inception:{weights}", batch=1)
    three = get_extractor(f"inception:{weights}", batch=3)
    a = one.extract((f"s{i}", x) for i, x in enumerate(images))
    b = three.extract((f"s{i}", x) for i, x in enumerate(images))
    assert one.dims == 2 and one.info()["views"] == ["image"] and one.info()["extractor"] == "inception"
    assert a.features["image"].shape == (5, 16) and a.n_volumes == 5
    assert list(a.groups["image"]) == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(a.features["image"], b.features["image"], rtol=1e-5, atol=1e-6)
    # one image per row: the row of image 2 alone equals its row in the batch
    c = one.extract([("x", images[2])])
    np.testing.assert_allclose(c.features["image"][0], a.features["image"][2], rtol=1e-5, atol=1e-6)
    with pytest.raises(MedvolError, match="expected a 2D image"):
        one.extract([("vol", np.zeros((4, SIZE, SIZE), np.float32))])
    with pytest.raises(MedvolError, match="NaN"):
        one.extract([("nan", np.full((SIZE, SIZE), np.nan, np.float32))])


def test_image_files_phantoms_score_closer_than_noise(tmp_path, weights, png_sets, capsys):
    common = ["--features", f"inception:{weights}", "--n", 12, "--bootstrap", 5]
    code, out, err = run_eval(capsys, "--real", "phantom:0", "--fake", png_sets["phantom"],
                              "--out", tmp_path / "pp", *common)
    assert code == 0, err
    assert "image/fid" in out
    code, _, err = run_eval(capsys, "--real", "phantom:0", "--fake", png_sets["noise"],
                            "--out", tmp_path / "pn", *common)
    assert code == 0, err
    pp, s_pp = scores_of(tmp_path / "pp")
    pn, s_pn = scores_of(tmp_path / "pn")
    assert s_pp["image/fid"]["value"] < s_pn["image/fid"]["value"]
    assert s_pp["image/kid"]["value"] < s_pn["image/kid"]["value"]
    assert s_pp["image/mmd"]["value"] < s_pn["image/mmd"]["value"]
    assert s_pp["image/coverage"]["value"] > s_pn["image/coverage"]["value"]
    assert pp["dims"] == 2 and pp["fake"]["kind"] == "images" and pp["fake"]["n_images"] == 12
    assert pp["real"]["kind"] == "slices" and pp["real"]["n_images"] == 12
    assert pp["real"]["data"]["phantom_seed"] == 0 and pp["real"]["data"]["plane"] == "axial"
    info = pp["extractors"][0]["info"]
    assert info["extractor"] == "inception" and info["weights"] == str(weights)
    assert len(info["weights_sha256"]) == 64 and "mask channels are not fed" in info["preprocessing"]
    assert pp["extractors"][0]["rows"] == {"image": [12, 12]}
    assert "ci_low" in s_pp["image/fid"] and "(12 images)" in (tmp_path / "pp" / "scores.md").read_text(encoding="utf-8")


def test_checkpoint_against_its_training_slices(tmp_path, weights, run_2d, capsys):
    common = ["--real", "data", "--fake", run_2d, "--features", f"inception:{weights}", "--n", 10,
              "--bootstrap", 4, "--seed", 3]
    code, _, err = run_eval(capsys, *common, "--batch", 4, "--out", tmp_path / "a")
    assert code == 0, err
    code, _, err = run_eval(capsys, *common, "--batch", 7, "--out", tmp_path / "b")
    assert code == 0, err
    a, sa = scores_of(tmp_path / "a")
    b, sb = scores_of(tmp_path / "b")
    # deterministic per seed, whatever the generation batch (up to float summation order)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key]["value"] == pytest.approx(sb[key]["value"], rel=1e-6, abs=1e-9), key
    assert a["fake"]["names"] == b["fake"]["names"] and a["real"]["names"] == b["real"]["names"]
    ckpt = sorted((run_2d / "checkpoints").glob("ckpt_*.pt"))[-1]
    sha = (ckpt.parent / (ckpt.name + ".sha256")).read_text(encoding="utf-8").split()[0]
    fake = a["fake"]
    assert fake["kind"] == "checkpoint" and fake["checkpoint_sha256"] == sha and fake["iteration"] == 4
    assert fake["seed"] == 3 and fake["n_images"] == 10 and fake["model"] == "dcgan@32"
    real = a["real"]
    assert real["source"] == "data" and real["data"]["phantom_n"] == 2 and real["draw_seed"] == 3
    assert real["n_images"] == 10 and real["slices_available"] > 10
    # another seed draws other latents and other real slices
    code, _, err = run_eval(capsys, *common[:-2], "--seed", 4, "--out", tmp_path / "c")
    assert code == 0, err
    assert scores_of(tmp_path / "c")[1]["image/fid"]["value"] != sa["image/fid"]["value"]


def test_run_curve_for_a_2d_run(tmp_path, weights, run_2d, capsys):
    code = main(["evaluate", "--real", "data", "--run", str(run_2d), "--every", "2", "--features",
                 f"inception:{weights}", "--n", "6", "--bootstrap", "0", "--out", str(tmp_path / "curve")])
    assert code == 0, capsys.readouterr().err
    lines = (tmp_path / "curve" / "curve.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("iteration,checkpoint,image/fid")
    assert [line.split(",")[0] for line in lines[1:]] == ["2", "4"]
    best = json.loads((tmp_path / "curve" / "best.json").read_text(encoding="utf-8"))
    assert best["best_score"] == "image/fid" and best["best_iteration"] in (2, 4)


def test_nifti_images_read_in_hu(tmp_path):
    from medvol.data.io import Volume, write_volume
    from medvol.data.preprocess import to_intensity

    x = phantom_slices(0, 1)[0]
    path = tmp_path / "s_0000.nii.gz"
    write_volume(Volume(array=to_intensity(x, (-1024.0, 600.0))[None].astype(np.float32),
                        spacing=(1.0, 1.0, 1.0)), path)
    np.testing.assert_allclose(read_image(path, (-1024.0, 600.0)), x, atol=1e-5)
    shifted = read_image(path, (-1024.0, 1000.0))
    assert not np.allclose(shifted, x, atol=1e-3)


def test_nifti_folder_scores_as_images(tmp_path, weights, capsys):
    from medvol.data.io import Volume, write_volume
    from medvol.data.preprocess import to_intensity

    folder = tmp_path / "nii"
    folder.mkdir()
    for i, x in enumerate(phantom_slices(1, 6)):
        write_volume(Volume(array=to_intensity(x, (-1024.0, 600.0))[None].astype(np.float32),
                            spacing=(1.0, 1.0, 1.0)), folder / f"sample_{i:04d}.nii.gz")
        # a mask beside each image is not an image to score
        write_volume(Volume(array=np.zeros((1, SIZE, SIZE), np.float32), spacing=(1.0, 1.0, 1.0)),
                     folder / f"sample_{i:04d}_mask.nii.gz")
    code, _, err = run_eval(capsys, "--real", "phantom:0", "--fake", folder, "--features",
                            f"inception:{weights}", "--n", 6, "--bootstrap", 0, "--out", tmp_path / "e")
    assert code == 0, err
    report, _ = scores_of(tmp_path / "e")
    assert report["fake"]["n_images"] == 6 and all("mask" not in n for n in report["fake"]["names"])


@pytest.mark.parametrize("extra, culprit", [
    (["--features", "inception2.5d:{w}"], "inception2.5d"),
    (["--metrics", "fid,msssim"], "msssim"),
    (["--size", "64"], "--size"),
    (["--real", "data"], "--real data"),
])
def test_2d_refusals_are_one_line(tmp_path, weights, png_sets, capsys, extra, culprit):
    args = ["--real", "phantom:0", "--fake", png_sets["phantom"], "--features", f"inception:{weights}",
            "--n", 4, "--bootstrap", 0, "--out", tmp_path / "e"]
    extra = [e.replace("{w}", str(weights)) for e in extra]
    for i in range(0, len(extra), 2):  # later flags win with argparse
        args += extra[i:i + 2]
    code, _, err = run_eval(capsys, *args)
    assert code == 2 and culprit in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "e" / "scores.json").exists()


def test_2d_extractor_refused_on_volumes_and_bad_png(tmp_path, weights, png_sets, capsys):
    code, _, err = run_eval(capsys, "--real", "phantom:0", "--fake", "phantom:1", "--size", SIZE,
                            "--n", 2, "--features", f"inception:{weights}", "--out", tmp_path / "v")
    assert code == 2 and "scores 2D images" in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"not a png")
    code, _, err = run_eval(capsys, "--real", "phantom:0", "--fake", bad, "--features",
                            f"inception:{weights}", "--out", tmp_path / "b")
    assert code == 2 and "a.png" in err and len(err.strip().splitlines()) == 1


def test_fed_images_are_channel_0_of_the_seeded_latents(tmp_path):
    """Real slices with a mask channel and a two-channel model: only channel 0 reaches the extractor,
    and generated image i is G of the i-th latent of the seeded generator, whatever the batch."""
    from medvol.eval.images2d import GeneratedImages, RealSlices
    from medvol.models import build

    slices = SliceDataset(PhantomVolumeDataset(SIZE, 2, nodules=True), content_only=True, masks=True)
    real = RealSlices(slices, 5, seed=0, info={"source": "test"})
    for (name, image), k in zip(real, real.indices):
        item = slices[int(k)]["image"]
        assert item.shape[0] == 2 and image.shape == (SIZE, SIZE)
        np.testing.assert_array_equal(image, item[0].numpy())
    torch.manual_seed(0)
    system = build("dcgan", SIZE, base_width=4, latent_dim=8, channels=2)
    state = {"path": str(tmp_path / "ckpt.pt"), "iteration": 0}
    (tmp_path / "ckpt.pt").write_bytes(b"stand-in")
    cfg = load_config(ROOT / "configs" / "dcgan_tiny.yaml", ["--model.channels", "2", "--data.masks", "true"])
    generated = list(GeneratedImages((system, cfg, state), 3, seed=1, batch=2, device="cpu"))
    z = torch.cat([system.sample_latent(1, generator=g) for g in [torch.Generator().manual_seed(1)]
                   for _ in range(3)])
    both = system.generate(z)
    assert both.shape[1] == 2 and len(generated) == 3
    for (name, image), full in zip(generated, both):
        np.testing.assert_allclose(image, full[0].numpy(), atol=1e-6)


def test_a_2d_generate_folder_scores_without_its_preview_grids(tmp_path, weights, run_2d, capsys):
    """Issue 22: medvol's own grid_0000.png (and the views PNGs of --volume) are previews, not samples."""
    from medvol.sample.generate import generate

    generate(run_2d, 70, tmp_path / "g", seed=1)  # 70 samples: grid_0000.png and grid_0001.png
    assert {"grid_0000.png", "grid_0001.png"} <= {p.name for p in (tmp_path / "g").iterdir()}
    code, _, err = run_eval(capsys, "--real", "phantom:0", "--fake", tmp_path / "g", "--features",
                            f"inception:{weights}", "--n", 70, "--bootstrap", 0, "--out", tmp_path / "e")
    assert code == 0, err
    report, _ = scores_of(tmp_path / "e")
    assert report["fake"]["n_images"] == 70 and all(n.startswith("sample_") for n in report["fake"]["names"])
    # The generated folder as the real set: refused (marked synthetic) unless allowed.
    code, _, err = run_eval(capsys, "--real", tmp_path / "g", "--fake", tmp_path / "g", "--features",
                            f"inception:{weights}", "--n", 4, "--bootstrap", 0, "--out", tmp_path / "r")
    assert code == 2 and "--allow-synthetic-real" in err and len(err.strip().splitlines()) == 1


def test_a_cache_of_generated_volumes_as_the_real_slices_needs_allow_synthetic_real(tmp_path, weights, png_sets,
                                                                                     capsys):
    from medvol.data.io import Volume
    from medvol.data.provenance import write_synthetic

    (tmp_path / "gen").mkdir()
    for i in range(2):
        volume = Volume(array=np.full((SIZE,) * 3, -1000.0 + 200 * i, np.float32), spacing=(1.0, 1.0, 1.0))
        volume.array[8:24, 8:24, 8:24] = 40.0
        write_synthetic(volume, tmp_path / "gen" / f"sample_{i:04d}.nii.gz", {"model": "test", "index": i})
    assert main(["preprocess", "--src", str(tmp_path / "gen"), "--dst", str(tmp_path / "cache"), "--size", str(SIZE),
                 "--val-fraction", "0.5", "--workers", "1", "--allow-synthetic"]) == 0
    capsys.readouterr()
    argv = ["--real", tmp_path / "cache", "--split", "train", "--fake", png_sets["phantom"], "--features",
            f"inception:{weights}", "--n", 4, "--bootstrap", 0, "--metrics", "fid"]
    code, _, err = run_eval(capsys, *argv, "--out", tmp_path / "e")
    assert code == 2 and "--allow-synthetic-real" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_eval(capsys, *argv, "--out", tmp_path / "a", "--allow-synthetic-real")
    assert code == 0, err
    report, _ = scores_of(tmp_path / "a")
    assert report["real"]["synthetic"]["count"] == 2 and report["allow_synthetic_real"] is True


@pytest.mark.parametrize("colour", ["grey", "rgb"])
def test_a_2d_image_cache_is_a_real_set(tmp_path, weights, png_sets, capsys, colour):
    """``--real CACHE`` of ``medvol preprocess --images`` (grey or RGB): its images are the real set,
    channel 0 fed as on the fake side; a cache of 8 images scores 8."""
    from PIL import Image

    from medvol.data.image_cache import ImageParams, build_image_cache

    rng = np.random.default_rng(3)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / f"c{i}.png")
    build_image_cache(folder, tmp_path / "cache", ImageParams(size=SIZE, colour=colour), val_fraction=0.25)
    code, _, err = run_eval(capsys, "--real", tmp_path / "cache", "--split", "all", "--fake", png_sets["noise"],
                            "--out", tmp_path / "ev", "--features", f"inception:{weights}", "--n", 8,
                            "--bootstrap", 2)
    assert code == 0, err
    report, scores = scores_of(tmp_path / "ev")
    assert report["real"]["n_images"] == 8 and report["real"]["source"] == str(tmp_path / "cache")
    assert np.isfinite(scores["image/fid"]["value"])


def test_factors_beside_features_read_each_set_once(tmp_path, weights, run_2d, capsys, monkeypatch):
    """``--metrics factors`` with a feature metric scores the arrays the feature pass read: a
    checkpoint's images are generated once (per extractor pass), not a second time for the
    factors, and the factor scores equal those of ``--metrics factors`` alone."""
    from medvol.eval import sources

    passes = []
    plain_iter = sources.GeneratedImages.__iter__

    def counted(self):
        passes.append(1)
        return plain_iter(self)

    monkeypatch.setattr(sources.GeneratedImages, "__iter__", counted)
    common = ["--real", "phantom:7", "--plane", "axial", "--fake", run_2d, "--n", 8, "--seed", 2]
    code, _, err = run_eval(capsys, *common, "--metrics", "factors,fid", "--features", f"inception:{weights}",
                            "--bootstrap", 3, "--out", tmp_path / "both")
    assert code == 0, err
    assert len(passes) == 1
    code, _, err = run_eval(capsys, *common, "--metrics", "factors", "--out", tmp_path / "alone")
    assert code == 0, err
    assert len(passes) == 2
    both, alone = (json.loads((tmp_path / d / "scores.json").read_text(encoding="utf-8")) for d in ("both", "alone"))
    assert both["factors"] == alone["factors"] and both["factors"]["n"] == [8, 8]
    assert both["real"]["set_sha256"] == alone["real"]["set_sha256"]

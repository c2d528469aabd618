"""The reader study on 2D images: a 2D image cache, folders of PNG / 2D NIfTI and a 2D model's
checkpoint as sources, for single images (the visual Turing test) and pairs; the blinding attacks
of test_reader_blind.py and test_reader_single.py on 2D studies; mixed 2D / 3D refused; scoring."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from medvol.cli import main
from medvol.errors import MedvolError
from medvol.study.reader.make import make_study
import test_reader_blind as blind  # a module of this folder (no tests package on a bare machine)
import test_reader_single as single

SIDE = 32


def _png(array: np.ndarray, path: Path) -> Path:
    """``array`` in [-1, 1] as an 8-bit grey PNG."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round((np.clip(array, -1, 1) + 1) * 127.5).astype(np.uint8)).save(path)
    return path


def _nifti(array: np.ndarray, path: Path) -> Path:
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(np.asarray(array, dtype=np.float32)), str(path))
    return path


def _phantom_slices(seed: int, count: int, side: int) -> list[np.ndarray]:
    from medvol.data.datasets import PhantomVolumeDataset, SliceDataset

    slices = SliceDataset(PhantomVolumeDataset(side, 2, seed=seed), content_only=True)
    picks = np.linspace(0, len(slices) - 1, count).round().astype(int)
    return [slices[int(k)]["image"][0].numpy() for k in picks]


@pytest.fixture(scope="module")
def slice_cache(tmp_path_factory) -> Path:
    """``medvol preprocess --images slices`` of two 32³ phantoms (``medvol data phantom``): 64 CT slices."""
    root = tmp_path_factory.mktemp("slices")
    assert main(["data", "phantom", "--n", "2", "--size", str(SIDE), "--out", str(root / "phantoms")]) == 0
    assert main(["preprocess", "--src", str(root / "phantoms"), "--dst", str(root / "cache"), "--images", "slices",
                 "--size", str(SIDE)]) == 0
    return root / "cache"


@pytest.fixture(scope="module")
def png_fakes(tmp_path_factory) -> Path:
    """12 PNGs of 16² phantom slices of another seed (half the cache's side: real images are shrunk)."""
    folder = tmp_path_factory.mktemp("pngs") / "fake"
    for i, image in enumerate(_phantom_slices(7, 12, SIDE)):
        _png(image.reshape(16, 2, 16, 2).mean(axis=(1, 3)), folder / f"gen_{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def run_2d(tmp_path_factory, tiny_dcgan_run) -> Path:
    """A dcgan run of 2 iterations on 32² phantom slices (configs/dcgan_tiny.yaml, narrowed)."""
    return tiny_dcgan_run(tmp_path_factory.mktemp("run2d") / "run", 2, ckpt_every=2, sample_every=2)


def _key(study: Path) -> dict:
    return json.loads((study / "key.json").read_text(encoding="utf-8"))


def _pixels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image)


def _auto_uint8(image: np.ndarray) -> np.ndarray:
    """The oracle of ``--window auto`` on one image (as float32, the images' type): its 0.5 / 99.5
    percentiles to 0 / 255."""
    image = np.asarray(image, dtype=np.float32).astype(np.float64)
    low, high = np.percentile(image, (0.5, 99.5))
    return np.clip(np.rint((image - low) / (high - low) * 255.0), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def cache_study(tmp_path_factory, slice_cache, png_fakes) -> Path:
    """Single images: 10 real slices of the cache (train split), 10 PNGs, ``--window auto``."""
    out = tmp_path_factory.mktemp("single2d") / "study"
    assert main(["study", "reader", "make", "--mode", "single", "--real", str(slice_cache), "--real-split", "train",
                 "--fake", f"png={png_fakes}", "--images", "20", "--window", "auto", "--out", str(out)]) == 0
    return out


def test_single_2d_study_of_a_slice_cache_and_png_fakes(cache_study, slice_cache, png_fakes):
    """Every image at the fake's 16²; a real one is its cached slice in HU, area-halved, auto window."""
    from medvol.data.image_datasets import CachedImageDataset

    key = _key(cache_study)
    assert key["dims"] == 2 and key["planes"] == ["2d"] and key["positions"] is None
    assert key["counts"] == {"real": 10, "synthetic": 10}
    assert len({p["volume"] for p in key["pairs"]}) == 20  # each image used once
    single.assert_single_page_holds_images_only(cache_study)
    cache = CachedImageDataset(slice_cache, split="train")
    low, high = cache.window
    for item in key["pairs"]:
        shown = _pixels(cache_study / "page" / "images" / item["image"])
        assert shown.shape == (16, 16) and item["plane"] == "2d" and item["slice"] is None
        assert item["truth"] == ("real" if item["volume"].startswith("cache:") else "synthetic") == \
            ("real" if item["source"] == "real" else "synthetic")
        if item["source"] == "real":
            name = item["volume"].removeprefix("cache:")
            cached = np.load(slice_cache / "volumes" / f"{name}.npy")[0].astype(np.float64)
            hu = low + (cached + 1) / 2 * (high - low)
            halved = hu.reshape(16, 2, 16, 2).mean(axis=(1, 3))
            expected = _auto_uint8(halved)
        else:
            grey = _pixels(Path(item["volume"])).astype(np.float64) / 255 * 2 - 1
            expected = _auto_uint8(grey)
        assert np.abs(shown.astype(int) - expected.astype(int)).max() <= 1, item


def test_score_a_filled_answer_sheet_of_the_2d_study(cache_study, tmp_path, capsys):
    """Two readers' CSV sheets scored end to end; accuracy and the rates counted here from the key."""
    key = _key(cache_study)
    rng = np.random.default_rng(4)
    # The truth from what each image shows (a cache entry is real, a PNG of the fake folder is not).
    truth = {p["pair"]: "real" if p["volume"].startswith("cache:") else "synthetic" for p in key["pairs"]}
    sheets, given = [], {}
    for reader in ("R1", "R2"):
        rows = ["reader,pair,choice,difficulty,seconds"]
        for p in key["pairs"]:
            right = truth[p["pair"]]
            choice = right if rng.random() < 0.7 else ("real" if right == "synthetic" else "synthetic")
            given[(reader, p["pair"])] = choice
            rows.append(f"{reader},{p['pair']},{choice},3,2.0")
        sheets.append(tmp_path / f"{reader}.csv")
        sheets[-1].write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert main(["study", "reader", "score", str(cache_study), *map(str, sheets), "--out", str(tmp_path / "sc")]) == 0
    capsys.readouterr()
    result = json.loads((tmp_path / "sc" / "score.json").read_text(encoding="utf-8"))
    for reader in ("R1", "R2"):
        mine = {pair: c for (r, pair), c in given.items() if r == reader}
        correct = sum(c == truth[pair] for pair, c in mine.items())
        caught = sum(c == "synthetic" for pair, c in mine.items() if truth[pair] == "synthetic")
        rates = result["by_reader"][reader]
        assert rates["accuracy"]["k"] == correct and rates["accuracy"]["n"] == 20
        assert rates["sensitivity"]["value"] == caught / 10
    assert result["pooled"]["accuracy"]["k"] == sum(c == truth[pair] for (_, pair), c in given.items())


def test_a_2d_checkpoint_gives_its_seeded_images(tmp_path, slice_cache, run_2d):
    """Single images and pairs from a 2D model: image i is sample i of the seed (channel 0), CT
    mapped back to HU by the training window as the real slices are by the cache's, so that a
    window in HU shows both alike."""
    from medvol.data.image_datasets import CachedImageDataset
    from medvol.sample.sampler import Sampler

    low, high = -1100.0, 300.0
    study = make_study(tmp_path / "s", [f"dcgan={run_2d}"], str(slice_cache), mode="single", images=6,
                       window=f"{low:g},{high:g}", seed=3, device="cpu")
    key = _key(study)
    sampler = Sampler.load(run_2d, "cpu")
    assert sampler.window is not None  # trained on CT phantom slices: the samples are shown in HU
    samples = [np.clip(s.array[0], -1, 1).astype(np.float64) for s in sampler.stream(3, 3)]
    cache = CachedImageDataset(slice_cache, split="all")

    def in_hu(x, window):
        return window[0] + (x + 1) / 2 * (window[1] - window[0])

    fakes = [p for p in key["pairs"] if p["source"] == "dcgan"]
    assert sorted(p["volume"] for p in fakes) == [f"{run_2d} seed 3 #{i}" for i in range(3)]
    for item in key["pairs"]:
        if item["source"] == "dcgan":
            hu = in_hu(samples[int(item["volume"].rsplit("#", 1)[1])], sampler.window)
        else:
            name = item["volume"].removeprefix("cache:")
            hu = in_hu(np.load(slice_cache / "volumes" / f"{name}.npy")[0].astype(np.float64), cache.window)
        expected = np.clip(np.rint((hu - low) / (high - low) * 255), 0, 255)
        shown = _pixels(study / "page" / "images" / item["image"])
        assert np.abs(shown.astype(int) - expected.astype(int)).max() <= 1, item
    pairs = make_study(tmp_path / "p", [f"dcgan={run_2d}"], str(slice_cache), pairs=3, window="auto", device="cpu")
    key = _key(pairs)
    assert key["dims"] == 2 and {p["plane"] for p in key["pairs"]} == {"2d"}
    assert {tuple(sorted((p["left"], p["right"]))) for p in key["pairs"]} == {("dcgan", "real")}
    sizes = {_pixels(f).shape for f in (pairs / "page" / "images").iterdir()}
    assert sizes == {(SIDE, SIDE)}
    assert not list(tmp_path.glob(".s*")) and not list(tmp_path.glob(".p*"))  # scratch removed


def test_generated_images_as_real_are_refused_unless_allowed(tmp_path, run_2d, png_fakes, capsys):
    """``medvol generate`` output (2D NIfTI listed in generated.json) is marked synthetic."""
    assert main(["generate", "--ckpt", str(run_2d), "--n", "4", "--out", str(tmp_path / "gen"),
                 "--device", "cpu"]) == 0
    capsys.readouterr()
    args = ["study", "reader", "make", "--mode", "single", "--real", str(tmp_path / "gen"), "--fake",
            f"png={png_fakes}", "--images", "8", "--window", "auto"]
    assert main([*args, "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "is marked synthetic" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s" / "key.json").exists()
    assert main([*args, "--allow-synthetic-real", "--out", str(tmp_path / "s2")]) == 0
    assert len(_key(tmp_path / "s2")["synthetic_real"]) == 4


@pytest.fixture(scope="module")
def twin_images(tmp_path_factory) -> dict[str, Path]:
    """60 real 2D NIfTI files and 60 "generated" PNGs of one image (the NIfTI holds the PNG's grey
    levels as floats in [-1, 1]): both read to the same pixels, through different file formats."""
    root = tmp_path_factory.mktemp("twins2d")
    png = _png(_phantom_slices(11, 1, SIDE)[0], root / "original.png")
    grey = _pixels(png).astype(np.float64) / 255 * 2 - 1
    nifti = _nifti(grey, root / "original.nii.gz")
    folders = {"real": root / "scans", "fake": root / "generated"}
    for name, folder in folders.items():
        folder.mkdir()
        for i in range(blind.PAIRS):
            source, suffix = (nifti, ".nii.gz") if name == "real" else (png, ".png")
            os.link(source, folder / f"{name}_{i:04d}{suffix}")
    return folders


def test_no_attack_on_a_2d_pair_study_beats_a_coin(tmp_path, twin_images):
    studies = [make_study(tmp_path / name, [f"gan={twin_images['fake']}"], str(twin_images["real"]),
                          pairs=blind.PAIRS, window="auto") for name in ("study", "replay")]
    blind.assert_sides_look_the_same(studies[0])
    blind.assert_no_attack_beats_a_coin(*studies)


def test_no_attack_on_a_2d_single_study_beats_a_coin(tmp_path, twin_images):
    assert single.IMAGES <= 2 * blind.PAIRS
    studies = [make_study(tmp_path / name, [f"gan={twin_images['fake']}"], str(twin_images["real"]), mode="single",
                          images=single.IMAGES, window="auto") for name in ("study", "replay")]
    single.assert_single_page_holds_images_only(studies[0])
    page, data = single._page(studies[0])
    assert len({(page / item["image"]).read_bytes() for item in data["pairs"]}) == 1  # real PNG == NIfTI pixels
    single.assert_no_single_attack_beats_a_coin(*studies)


@pytest.mark.parametrize("sides", ["2d real, 3d fake", "3d real, 2d fake"])
def test_2d_and_3d_sources_in_one_study_are_refused(tmp_path, slice_cache, png_fakes, phantom_sources, capsys, sides):
    real, fake = (slice_cache, phantom_sources["fakeA"]) if sides.startswith("2d") else \
        (phantom_sources["real"], png_fakes)
    code = main(["study", "reader", "make", "--mode", "single", "--real", str(real), "--fake", f"g={fake}",
                 "--images", "4", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "never both" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s").exists() or not list((tmp_path / "s").iterdir())


def test_planes_and_positions_are_refused_for_2d_images(tmp_path, slice_cache, png_fakes):
    for option in ({"planes": "axial"}, {"positions": "0.2,0.8"}):
        with pytest.raises(MedvolError, match="2D images, which have no planes"):
            make_study(tmp_path / "s", [f"g={png_fakes}"], str(slice_cache), mode="single", images=4, **option)


def test_a_cache_image_is_used_once(tmp_path, slice_cache, png_fakes):
    with pytest.raises(MedvolError, match=r"12 image\(s\) for 13 images"):
        make_study(tmp_path / "s", [f"g={png_fakes}"], str(slice_cache), mode="single", images=26, window="auto")


def test_a_3d_model_in_a_2d_study_is_refused_and_two_2d_fakes_pair_up(tmp_path, slice_cache, png_fakes, run_2d,
                                                                      phantom_cache, capsys):
    from medvol.train.trainer import train
    from tests.train.conftest import tiny_config

    run_3d = train(tiny_config(tmp_path / "run3d", source=str(phantom_cache), iterations=2))
    code = main(["study", "reader", "make", "--mode", "single", "--real", str(slice_cache), "--fake",
                 f"crf={run_3d}", "--images", "4", "--device", "cpu", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "is a 3D model" in err and "never both" in err and len(err.strip().splitlines()) == 1
    # model-vs-model of a 2D model and a folder of PNGs: 2D pairs at the larger shape.
    study = make_study(tmp_path / "m", [f"dcgan={run_2d}", f"png={png_fakes}"], mode="model-vs-model", pairs=4,
                       window="auto", device="cpu")
    key = _key(study)
    assert key["dims"] == 2 and {p["plane"] for p in key["pairs"]} == {"2d"}
    assert {_pixels(f).shape for f in (study / "page" / "images").iterdir()} == {(SIDE, SIDE)}


def test_rgb_cache_images_are_shown_by_their_luminance(tmp_path):
    """An RGB 2D cache (fundus-like) is shown grey by PIL's weights, as an RGB PNG is read."""
    from PIL import Image

    from medvol.data.image_cache import ImageParams, build_image_cache
    from medvol.study.reader.sources import real_source

    rng = np.random.default_rng(3)
    folder = tmp_path / "rgb"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"c{i}.png")
    build_image_cache(folder, tmp_path / "cache", ImageParams(size=16, colour="rgb"), val_fraction=0.34)
    source = real_source(str(tmp_path / "cache"))
    assert source.dims == 2 and len(source) == 3
    for i, item in enumerate(source.items):
        rgb = np.load(tmp_path / "cache" / "volumes" / f"{item.removeprefix('cache:')}.npy").astype(np.float64)
        image, _ = source.load(i)
        assert image.shape == (16, 16)
        np.testing.assert_allclose(image, 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2], atol=1e-6)


def test_real_images_of_another_aspect_are_refused(tmp_path, png_fakes):
    for i in range(2):
        _png(np.zeros((32, 20)), tmp_path / "wide" / f"w{i}.png")
    with pytest.raises(MedvolError, match=r"w\d\.png: image of shape \(32, 20\) has another aspect"):
        make_study(tmp_path / "s", [f"g={png_fakes}"], str(tmp_path / "wide"), mode="single", images=4,
                   window="auto")
    assert not (tmp_path / "s" / "key.json").exists()


def test_sources_are_checked_before_a_checkpoint_generates(tmp_path, slice_cache, run_2d, monkeypatch):
    """Too few real images, or --planes for 2D images, are refused before any image is generated."""
    from medvol.study.reader import sources

    def no_generation(*args, **kwargs):
        pytest.fail("generated before the sources were checked")

    monkeypatch.setattr(sources, "_generated_images", no_generation)
    with pytest.raises(MedvolError, match=r"--real .*32 image\(s\) for 50 images"):
        make_study(tmp_path / "s", [f"g={run_2d}"], str(slice_cache), real_split="train", mode="single", images=100,
                   device="cpu")
    with pytest.raises(MedvolError, match="--planes: the study's sources are 2D images"):
        make_study(tmp_path / "s", [f"g={run_2d}"], str(slice_cache), pairs=2, planes="axial", device="cpu")

"""``medvol study downstream --task classify`` on a 2D image cache: PNG class folders ->
``medvol preprocess --images images --classes folders`` -> a 2D classification study, and its refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from medvol.cli import main
from downstream_data import classify_cli, load_tool

pytest.importorskip("monai")
pytest.importorskip("SimpleITK")

STUDY = ["--seeds", "1", "--iterations", "2", "--batch", "2", "--channels", "4,8"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/study/conftest.py


def _disk(rng, bright: bool, side: int) -> np.ndarray:
    """A dark noisy image in [-1, 1], with a bright disk for the positive class."""
    y, x = np.mgrid[:side, :side]
    image = rng.uniform(-1.0, -0.6, (side, side))
    if bright:
        image[(y - side / 2) ** 2 + (x - side / 2) ** 2 < (side / 4) ** 2] = 0.8
    return image


def _pngs(folder: Path, per_class: int, colour: str = "L") -> Path:
    from PIL import Image

    rng = np.random.default_rng(1)
    for label, name in enumerate(("normal", "tb")):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            grey = np.round((_disk(rng, bool(label), 32) + 1) * 127.5).astype(np.uint8)
            Image.fromarray(grey).convert(colour).save(folder / name / f"{name}{i}.png")
    return folder


def _preprocess(src: Path, dst: Path, *extra: str) -> Path:
    assert main(["preprocess", "--src", str(src), "--dst", str(dst), "--images", "images", "--size", "16",
                 "--classes", "folders", "--val-fraction", "0.34", *extra]) == 0  # a later --size wins
    return dst


def _synthetic(folder: Path) -> Path:
    """2 images per class, 8² (a side dividing the cache's 16), marked synthetic as medvol writes them."""
    from medvol.sample.images import write_image2d

    rng = np.random.default_rng(2)
    for label, sub in enumerate(("negative", "positive")):
        (folder / sub).mkdir(parents=True)
        for i in range(2):
            write_image2d(_disk(rng, bool(label), 8).astype(np.float32), (1.0, 1.0), folder / sub / f"s{i}.nii.gz",
                          {"model": "disks", "index": i})
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("classify2d")
    return {"cache": _preprocess(_pngs(root / "pngs", 6), root / "cache"), "synthetic": _synthetic(root / "syn"),
            "root": root}


def test_a_2d_image_cache_runs_a_classification_study(data, tmp_path, capsys):
    """The real items are the cache's images pooled to the synthetic side, classed by their folder."""
    manifest = json.loads((data["cache"] / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["dims"] == 2 and manifest["classes"] == ["normal", "tb"]
    val = [e for e in manifest["volumes"] if e["split"] == "val"]
    train = [e for e in manifest["volumes"] if e["split"] == "train"]
    assert len(val) >= 2 and {e["label"] for e in train} == {0, 1}
    out = tmp_path / "study"
    code, err = classify_cli(capsys, "--real", data["cache"], "--classify-by", "label", "--positive", "tb",
                       "--synthetic", f"disks={data['synthetic']}", *STUDY, "--out", out)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["config"]["dims"] == 2 and results["config"]["side"] == 8
    assert results["config"]["positive"] == ["1"] and results["config"]["negative"] == ["0"]
    run = json.loads((out / "runs" / "real__seed0.json").read_text(encoding="utf-8"))
    assert run["truth"] == [e["label"] for e in val]
    assert run["val_items"] == [f"cache:{e['name']}" for e in val]
    assert results["setups"][0]["seeds"]["0"]["train_items"] == len(train)
    assert results["setups"][3]["seeds"]["0"]["train_items"] == len(train) + 4
    assert results["sources"]["disks"]["fid"]["n_real"] == len(val)


def test_real_images_are_the_cache_arrays_pooled(data):
    from medvol.study.downstream import classdata as C
    from medvol.study.downstream.data import pooled_images

    rule = C.class_rule(str(data["cache"]), "label", None)
    assert rule == ("label", ["1"], ["0"])
    images = C.open_real_classes(str(data["cache"]), "val", rule)
    pooled = pooled_images(images, 8)
    manifest = json.loads((data["cache"] / "manifest.json").read_text(encoding="utf-8"))
    first = next(e for e in manifest["volumes"] if e["split"] == "val")
    array = np.load(data["cache"] / first["file"])
    image, label = pooled.load(0)
    np.testing.assert_allclose(image, array[0].reshape(8, 2, 8, 2).mean(axis=(1, 3)), rtol=1e-6)
    assert label == first["label"] and images.dims == 2


def test_refusals_on_a_2d_cache(data, tmp_path, capsys):
    """A phantom factor, an RGB cache, an unknown class: exit 2, one line, no output folder."""
    rgb = _preprocess(_pngs(tmp_path / "rgbpngs", 3, "RGB"), tmp_path / "rgbcache", "--colour", "rgb")
    synthetic = f"disks={data['synthetic']}"
    big = _preprocess(data["root"] / "pngs", tmp_path / "cache32", "--size", "32")
    volumes = load_tool("classify_demo").write_class_source(tmp_path / "volumes", 1, 32, seed=3)
    code, err = classify_cli(capsys, "--real", big, "--classify-by", "label", "--synthetic", f"v={volumes}", *STUDY,
                       "--out", tmp_path / "out3d")
    assert code == 2 and len(err) == 1 and "a 2D image cache; the synthetic sources are volumes" in err[0], err
    assert not (tmp_path / "out3d").exists()
    cases = [(data["cache"], ["--classify-by", "asymmetry"], "--classify-by asymmetry: .* is a 2D image cache"),
             (rgb, ["--classify-by", "label"], "3-channel \\(RGB\\) images; the classifier reads grey"),
             (data["cache"], ["--classify-by", "label", "--positive", "cough"], "--positive cough: no volume")]
    for number, (cache, extra, message) in enumerate(cases):
        out = tmp_path / f"out{number}"
        code, err = classify_cli(capsys, "--real", cache, *extra, "--synthetic", synthetic, *STUDY, "--out", out)
        assert code == 2 and len(err) == 1, (extra, err)
        assert re.search(message, err[0]), (message, err[0])
        assert not out.exists()

"""``medvol study downstream --task segment`` on a 2D image cache with masks: ``medvol data phantom`` ->
``medvol preprocess --images slices`` (masks beside the scans) -> a 2D segmentation study; its refusals,
and Dice / IoU of 2D held-out images against a closed form."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from medvol.cli import main

pytest.importorskip("monai")
pytest.importorskip("SimpleITK")

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/study/conftest.py

LABELS = ["lungs", "nodules"]
#: Enough training for the real set-up to find the lungs of 8² slices, yet a few seconds a network.
STUDY = ["--labels", "lungs", "--seeds", "1", "--iterations", "60", "--batch", "4", "--lr", "1e-2",
         "--unet-channels", "4,8"]


def _cli(capsys, *args) -> tuple[int, list[str]]:
    code = main(["study", "downstream", "--task", "segment", *map(str, args)])
    err = capsys.readouterr().err.strip().splitlines()
    return code, [line for line in err if line.startswith("medvol")]


def _synthetic_slices(phantoms: Path, folder: Path) -> Path:
    """Axial slices of a phantom (HU) pooled to 8² with their masks, written as a 2D model's
    ``medvol generate`` writes them (marked synthetic, ``mask_labels`` recorded)."""
    from medvol.data.io import read_volume
    from medvol.sample.images import write_image2d

    volume = read_volume(phantoms / "phantom_0000.nii.gz").array.astype(np.float32)
    mask = read_volume(phantoms / "phantom_0000_mask.nii.gz").array.astype(np.uint8)
    folder.mkdir(parents=True)
    for i, k in enumerate(range(4, 12, 2)):
        record = {"model": "phantom-slices", "index": i, "mask_labels": LABELS}
        image = volume[k].reshape(8, 2, 8, 2).mean(axis=(1, 3))
        labels = mask[k].reshape(8, 2, 8, 2).max(axis=(1, 3))
        write_image2d(image, (4.0, 4.0), folder / f"sample_{i:04d}.nii.gz", record)
        write_image2d(labels, (4.0, 4.0), folder / f"sample_{i:04d}_mask.nii.gz", dict(record, kind="mask"))
    return folder


def _synthetic_volumes(phantoms: Path, folder: Path) -> Path:
    """The phantom volume (16³) with its mask, written as a 3D model's ``medvol generate`` writes them."""
    from medvol.data.io import read_volume
    from medvol.data.provenance import write_synthetic

    folder.mkdir(parents=True)
    record = {"model": "phantom", "index": 0, "mask_labels": LABELS}
    write_synthetic(read_volume(phantoms / "phantom_0000.nii.gz"), folder / "sample_0000.nii.gz", record)
    write_synthetic(read_volume(phantoms / "phantom_0000_mask.nii.gz"), folder / "sample_0000_mask.nii.gz", record,
                    dtype=np.uint8)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 16² slice cache of three 16³ phantoms with masks (one phantom held out), the same without
    masks, a 2D synthetic source (8²) and a 3D one (16³)."""
    root = tmp_path_factory.mktemp("segment2d")
    assert main(["data", "phantom", "--n", "3", "--size", "16", "--out", str(root / "scans")]) == 0
    assert main(["data", "phantom", "--n", "1", "--size", "16", "--seed", "9", "--out", str(root / "other")]) == 0
    common = ["--src", str(root / "scans"), "--images", "slices", "--size", "16", "--val-fraction", "0.34"]
    assert main(["preprocess", *common, "--dst", str(root / "cache"), "--mask-labels", ",".join(LABELS)]) == 0
    assert main(["preprocess", *common, "--dst", str(root / "bare"), "--no-labels"]) == 0
    return {"cache": root / "cache", "bare": root / "bare", "slices": _synthetic_slices(root / "other", root / "syn"),
            "volumes": _synthetic_volumes(root / "other", root / "vol")}


def _val_truth(cache: Path, side: int) -> tuple[list[str], list[np.ndarray]]:
    """The names and lung masks of the held-out images, read from the cache's files and max-pooled to ``side``."""
    manifest = json.loads((cache / "manifest.json").read_text(encoding="utf-8"))
    val = [e for e in manifest["volumes"] if e["split"] == "val"]
    masks = [np.load(cache / e["labels"]) for e in val]
    factor = masks[0].shape[-1] // side
    return [e["name"] for e in val], [(m == 1).reshape(side, factor, side, factor).max(axis=(1, 3)) for m in masks]


def test_a_2d_image_cache_runs_a_segmentation_study(data, tmp_path, capsys):
    """Every set-up trains a 2D U-Net on 8² images and is scored per held-out image; the real set-up
    beats the trivial predictions (all background: Dice 0; all lungs: 2|T| / (|T| + N))."""
    out = tmp_path / "study"
    code, err = _cli(capsys, "--real", data["cache"], "--synthetic", f"slices={data['slices']}", *STUDY, "--out", out)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["config"]["dims"] == 2 and results["config"]["side"] == 8
    names, truth = _val_truth(data["cache"], 8)
    assert len(truth) == 16  # one phantom of 16 slices held out
    assert results["held_out"]["volumes"] == [f"cache:{name}" for name in names]
    shown = [t for t in truth if t.any()]
    all_lungs = np.mean([2 * t.sum() / (t.sum() + t.size) for t in shown])
    run = json.loads((out / "runs" / "real__seed0.json").read_text(encoding="utf-8"))
    dice = [row[0] for row in run["dice"]]
    assert len(dice) == len(truth)
    assert [d is None for d in dice] == [not t.any() for t in truth]  # no score where the truth has no lungs
    real = results["setups"][0]
    assert real["setup"] == "real" and real["dice"]["lungs"]["mean"] > all_lungs + 0.1 > 0.1, (real, all_lungs)
    for row in run["dice"], run["iou"]:
        assert len(row) == len(truth)
    for d, i in zip(dice, [row[0] for row in run["iou"]]):
        assert (d is None and i is None) or abs(i - d / (2 - d)) < 1e-6
    assert [row["setup"] for row in results["setups"]] == ["real", "real+aug", "synthetic", "real+synthetic"]
    assert results["setups"][3]["seeds"]["0"]["train_items"] == 32 + 4
    assert results["sources"]["slices"]["fid"]["n_real"] == 16
    assert "held-out real images" in (out / "results.md").read_text(encoding="utf-8")


def _rgb_cache(folder: Path) -> Path:
    """A 2D cache of RGB PNG images (16²) with their masks (``X_mask.png``)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "png").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / "png" / f"x{i}.png")
        Image.fromarray((rng.random((16, 16)) < 0.3).astype(np.uint8)).save(folder / "png" / f"x{i}_mask.png")
    assert main(["preprocess", "--src", str(folder / "png"), "--dst", str(folder / "cache"), "--images", "images",
                 "--colour", "rgb", "--size", "16", "--val-fraction", "0.5", "--mask-labels", "lungs"]) == 0
    return folder / "cache"


def test_refusals_of_2d_caches(data, tmp_path, capsys):
    """A 2D cache without masks, an RGB cache, a 2D cache with volumes as sources, sources mixing 2D
    and 3D: exit 2, one line, no output folder."""
    cases = [([data["bare"], "--synthetic", f"s={data['slices']}"], "image '.*' has no mask"),
             ([_rgb_cache(tmp_path / "rgb"), "--synthetic", f"s={data['slices']}"],
              "3-channel \\(RGB\\) images; the U-Net reads grey"),
             ([data["cache"], "--synthetic", f"v={data['volumes']}"],
              "a 2D image cache; the synthetic sources are volumes"),
             ([data["cache"], "--synthetic", f"s={data['slices']}", "--synthetic", f"v={data['volumes']}"],
              "the sources mix 2D slices and 3D volumes")]
    for number, (args, message) in enumerate(cases):
        out = tmp_path / f"out{number}"
        code, err = _cli(capsys, "--real", *args, *STUDY, "--out", out)
        assert code == 2 and len(err) == 1, (message, err)
        assert re.search(message, err[0]), (message, err[0])
        assert not out.exists()


class _Fixed(torch.nn.Module):
    """A "network" whose argmax is a given label map whatever the input."""

    def __init__(self, labels: np.ndarray):
        super().__init__()
        self.logits = torch.nn.functional.one_hot(torch.from_numpy(labels).long(), 2).permute(2, 0, 1).float()

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1, -1, -1)


def test_dice_and_iou_of_2d_images_against_a_closed_form():
    """A 4x4 square against the same square shifted by one column: overlap 12 of 16 pixels each,
    Dice 2*12 / 32 = 0.75, IoU 12 / 20 = 0.6; an image without the class has no score."""
    from medvol.study.downstream.data import LabelledSet
    from medvol.study.downstream.segment import dice_per_class, evaluate, iou_per_class

    truth = np.zeros((8, 8), np.uint8)
    truth[2:6, 2:6] = 1
    shifted = np.roll(truth, 1, axis=1)
    assert dice_per_class(shifted, truth, 1)[0] == pytest.approx(0.75)
    assert iou_per_class(shifted, truth, 1)[0] == pytest.approx(0.6)
    images = [(np.zeros((8, 8), np.float32), truth), (np.zeros((8, 8), np.float32), np.zeros((8, 8), np.uint8))]
    val = LabelledSet("real-val", 2, ["a", "b"], lambda i: images[i])
    dice, iou = evaluate(_Fixed(shifted), val, 1, dims=2, side=8)
    assert dice.shape == iou.shape == (2, 1)
    assert dice[0, 0] == pytest.approx(0.75) and iou[0, 0] == pytest.approx(0.6)
    assert np.isnan(dice[1, 0]) and np.isnan(iou[1, 0])


@pytest.mark.slow
def test_a_2d_checkpoint_with_masks_is_sampled_as_a_source(data, tmp_path, capsys):
    """A dcgan trained with model.mask_channels 2 on a 32² slice cache: the study generates its
    images with their label maps through medvol generate (the Sampler) and trains on them."""
    from medvol.config import load_config
    from medvol.train.trainer import train

    cache = tmp_path / "cache32"
    assert main(["preprocess", "--src", str(data["cache"].parent / "scans"), "--images", "slices", "--size", "32",
                 "--val-fraction", "0.34", "--mask-labels", ",".join(LABELS), "--dst", str(cache)]) == 0
    train(load_config(None, [
        "--model.name", "dcgan", "--model.size", "32", "--model.base_width", "4", "--model.latent_dim", "8",
        "--model.mask_channels", "2", "--data.source", str(cache), "--data.workers", "0", "--data.batch", "4",
        "--train.iterations", "2", "--train.mode", "reference", "--train.device", "cpu", "--train.ckpt_every", "2",
        "--train.sample_every", "1000", "--train.progress", "false", "--train.out", str(tmp_path / "run")]))
    out = tmp_path / "study"
    code, err = _cli(capsys, "--real", cache, "--synthetic", f"dc={tmp_path / 'run'}", "--n-synthetic", "4",
                     "--labels", "lungs", "--seeds", "1", "--iterations", "2", "--unet-channels", "4,8", "--out", out)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    source = results["sources"]["dc"]
    assert source["kind"] == "checkpoint" and source["n"] == 4 and source["dims"] == 2
    assert source["mask_labels"] == LABELS and source["models"] == ["dcgan@32"]
    assert results["config"]["dims"] == 2 and results["config"]["side"] == 32
    assert sorted(p.name for p in (out / "synthetic" / "dc").glob("*_mask.nii.gz")) == \
        [f"sample_{i:04d}_mask.nii.gz" for i in range(4)]
    assert results["setups"][2]["seeds"]["0"]["train_items"] == 4

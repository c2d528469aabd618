"""``medvol study downstream`` end to end on 32³ phantoms with tiny U-Nets, and its parts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from medvol.errors import MedvolError

pytest.importorskip("monai")
pytest.importorskip("SimpleITK")

SIZE = 32
#: Tiny and fast: 4-8-16 widths, a high learning rate, few iterations.
FAST = dict(channels=(4, 8, 16), iterations=20, batch=2, lr=1e-2, feature_iters=3, log=lambda message: None)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/study/conftest.py


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A labelled cache of 5 phantoms (2 held out), an ideal and a noise source."""
    from tests.study.downstream_data import build_cache, write_generated, write_scans  # here: no tests package on a bare machine

    root = tmp_path_factory.mktemp("downstream")
    scans = write_scans(root / "scans", 5, SIZE, seed=0)
    return {
        "root": root,
        "cache": build_cache(scans, root / "cache", SIZE),
        "good": write_generated(root / "good", 4, SIZE, seed=7),
        "noise": write_generated(root / "noise", 4, SIZE, seed=9, noise=True),
    }


def test_dice_against_numpy_on_a_fixed_pair():
    from medvol.study.downstream.segment import dice_per_class

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, (6, 7, 8))
    prediction = np.where(rng.random(truth.shape) < 0.7, truth, rng.integers(0, 3, truth.shape))
    expected = [2 * ((prediction == c) & (truth == c)).sum() / ((prediction == c).sum() + (truth == c).sum())
                for c in (1, 2)]
    np.testing.assert_allclose(dice_per_class(prediction, truth, 2), expected, rtol=1e-6)
    # A class absent from the truth has no score (not 0, not 1), even where the prediction has it.
    scores = dice_per_class(prediction, np.where(truth == 2, 0, truth), 2)
    assert (prediction == 2).any() and np.isfinite(scores[0]) and np.isnan(scores[1])
    # Swapped classes: 0.
    assert dice_per_class((truth == 1) * 2, (truth == 1) * 1, 2)[0] == 0.0


def test_iou_against_numpy_and_dice():
    """IoU per class against hand counts |P∩T| / |P∪T|, and the identity IoU = Dice / (2 - Dice)."""
    from medvol.study.downstream.segment import dice_per_class, iou_per_class

    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, (5, 6, 7))
    prediction = np.where(rng.random(truth.shape) < 0.6, truth, rng.integers(0, 3, truth.shape))
    expected = [((prediction == c) & (truth == c)).sum() / ((prediction == c) | (truth == c)).sum() for c in (1, 2)]
    iou = iou_per_class(prediction, truth, 2)
    np.testing.assert_allclose(iou, expected, rtol=1e-6)
    dice = dice_per_class(prediction, truth, 2)
    np.testing.assert_allclose(iou, dice / (2 - dice), rtol=1e-6)
    assert 0 < iou[0] < dice[0] < 1
    # a class absent from the truth has no score; a perfect prediction scores 1
    assert np.isnan(iou_per_class(prediction, np.where(truth == 2, 0, truth), 2)[1])
    np.testing.assert_array_equal(iou_per_class(truth, truth, 2), [1.0, 1.0])


def test_augmentation_moves_labels_with_the_image():
    """After flips, 90° turns, rotations and shifts the labels still sit on the image's structure."""
    import torch
    from monai.utils import convert_to_tensor

    from medvol.study.downstream.segment import augmentation

    image = -torch.ones(1, 16, 16, 16)
    image[:, 3:9, 2:7, 5:14] = 1.0
    label = (image > 0).float()
    transform = augmentation(3, 16, seed=0)
    changed = 0
    for _ in range(8):
        out = transform({"image": image.clone(), "label": label.clone()})
        x, y = convert_to_tensor(out["image"], track_meta=False), convert_to_tensor(out["label"], track_meta=False)
        changed += not torch.equal(y, label)
        assert set(torch.unique(y).tolist()) <= {0.0, 1.0}
        bright, labelled = x > 0, y > 0.5
        assert (bright & labelled).sum() / max(int(labelled.sum()), 1) > 0.9
    assert changed >= 4


def test_augmentation_rotates_in_the_axial_plane():
    """The small random rotation turns the axial (y, x) plane: a volume that is constant along z
    stays constant along z through every transform (flips, 90° turns, rotation, shift)."""
    import torch
    from monai.utils import convert_to_tensor

    from medvol.study.downstream.segment import augmentation

    plane = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (16, 16)).astype(np.float32))
    image = plane.expand(16, 16, 16)[None].clone()
    label = (image > 0).float()
    transform = augmentation(3, 16, seed=0)
    for _ in range(8):
        out = transform({"image": image.clone(), "label": label.clone()})
        x = convert_to_tensor(out["image"], track_meta=False)
        assert torch.allclose(x, x[:, :1].expand_as(x), atol=1e-5)


def _run(data, out, synthetic, **options):
    from medvol.study.downstream.study import run_downstream

    return run_downstream(str(data["cache"]), synthetic, out, seeds=options.pop("seeds", 1), **{**FAST, **options})


def _mean(results, setup, source=None):
    return next(r for r in results["setups"] if r["setup"] == setup and r["source"] == source)["mean_dice"]["mean"]


def test_end_to_end_fast(data, tmp_path):
    """One seed, lungs only: every set-up appears, Dice in [0, 1], noise-trained below real-trained."""
    out = tmp_path / "study"
    results = _run(data, out, [f"noise={data['noise']}"], labels=["lungs"], iterations=25)
    setups = [(r["setup"], r["source"]) for r in results["setups"]]
    assert setups == [("real", None), ("real+aug", None), ("synthetic", "noise"), ("real+synthetic", "noise")]
    for row in results["setups"]:
        value = row["dice"]["lungs"]["mean"]
        assert 0.0 <= value <= 1.0 and row["seeds"]["0"]["train_items"] > 0
        iou = row["iou"]["lungs"]["mean"]
        assert iou == pytest.approx(value / (2 - value), rel=1e-6) if value in (0.0, 1.0) else 0.0 <= iou < value
        per_volume = np.array(row["seeds"]["0"]["per_volume"], float)
        np.testing.assert_allclose(np.array(row["seeds"]["0"]["per_volume_iou"], float),
                                   per_volume / (2 - per_volume), rtol=1e-5)
    assert _mean(results, "synthetic", "noise") < _mean(results, "real") - 0.2
    assert results["sources"]["noise"]["fid"]["fid"] > 0
    for name in ("results.json", "results.md", "dice_vs_fid.png", "study.json"):
        assert (out / name).is_file()
    table = (out / "results.md").read_text(encoding="utf-8")
    assert "| synthetic only | noise |" in table and "Dice lungs" in table and "IoU lungs" in table


@pytest.mark.slow
def test_end_to_end_two_sources_resume_and_add(data, tmp_path):
    """Both classes, two seeds, two sources added one after the other; an interrupted run resumes."""
    from tests.study.downstream_data import LABELS

    out = tmp_path / "study"
    first = _run(data, out, [f"noise={data['noise']}"], seeds=2, iterations=40)
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert len(runs) == 8
    # Interrupted: a run file is missing; only it is trained again, the others are kept as they are.
    kept = (out / "runs" / "real__seed0.json").read_text(encoding="utf-8")
    (out / "runs" / "real__seed1.json").unlink()
    messages = []
    second = _run(data, out, [f"good={data['good']}"], seeds=2, iterations=40, log=messages.append)
    trained = [m for m in messages if " seed " in m and "Dice" in m]
    assert len(trained) == 1 + 4 and trained[0].startswith("real seed 1")
    assert (out / "runs" / "real__seed0.json").read_text(encoding="utf-8") == kept
    assert [r["source"] for r in second["setups"]] == [None, None, "noise", "noise", "good", "good"]
    assert set(second["sources"]) == {"noise", "good"}
    for row in second["setups"]:
        for c in LABELS:
            mean = row["dice"][c]["mean"]
            assert mean is None or 0.0 <= mean <= 1.0
        assert row["mean_dice"]["std"] is not None  # two seeds
    assert _mean(second, "synthetic", "noise") < _mean(second, "real") - 0.1
    assert _mean(second, "synthetic", "good") > _mean(second, "synthetic", "noise") + 0.1
    assert second["sources"]["good"]["fid"]["fid"] < second["sources"]["noise"]["fid"]["fid"]
    assert _mean(first, "real") == pytest.approx(_mean(second, "real"))


def test_refuses_another_configuration_and_a_reused_name(data, tmp_path):
    out = tmp_path / "study"
    _run(data, out, [f"noise={data['noise']}"], labels=["lungs"], iterations=2)
    with pytest.raises(MedvolError, match="another configuration .*iterations 2 -> 3"):
        _run(data, out, [f"noise={data['noise']}"], labels=["lungs"], iterations=3)
    with pytest.raises(MedvolError, match="already has a source 'noise' made from other data"):
        _run(data, out, [f"noise={data['good']}"], labels=["lungs"], iterations=2)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(MedvolError, match="not empty and holds no study.json"):
        _run(data, tmp_path / "used", [f"noise={data['noise']}"], iterations=2)
    assert sorted(p.name for p in (tmp_path / "used").iterdir()) == ["notes.txt"]  # not even a lock file left


def test_a_second_run_into_a_busy_folder_is_refused(data, tmp_path):
    """Two studies never write one folder at once: the second is refused while the first holds it."""
    from medvol.study.downstream.study import LOCK_NAME
    from medvol.train.runfolder import RunFolderLock

    out = tmp_path / "busy"
    holder = RunFolderLock(out, lock_name=LOCK_NAME, holder="medvol study downstream")
    try:
        with pytest.raises(MedvolError, match="in use by another medvol study downstream"):
            _run(data, out, [f"noise={data['noise']}"], labels=["lungs"], iterations=2)
        assert not (out / "study.json").exists()
    finally:
        holder.release()
    refused = tmp_path / "refused"  # a first run refused for its arguments leaves no folder behind
    with pytest.raises(MedvolError, match="--seeds"):
        _run(data, refused, [f"noise={data['noise']}"], labels=["lungs"], iterations=2, seeds=0)
    assert not refused.exists()


def test_bad_inputs_are_named(data, tmp_path):
    from medvol.data.cache import build_cache as build
    from medvol.data.preprocess import PreprocessParams
    from tests.study.downstream_data import write_generated

    root = data["root"]
    no_masks = write_generated(tmp_path / "nomasks", 2, SIZE, seed=3, masks=False)
    with pytest.raises(MedvolError, match="sample_0000.nii.gz has no mask beside it"):
        _run(data, tmp_path / "a", [f"x={no_masks}"])
    unmarked = write_generated(tmp_path / "unmarked", 2, SIZE, seed=3, mark=False)
    with pytest.raises(MedvolError, match="is not marked synthetic"):
        _run(data, tmp_path / "b", [f"x={unmarked}"])
    lungs_only = write_generated(tmp_path / "lungsonly", 2, SIZE, seed=3, names=["lungs"])
    with pytest.raises(MedvolError, match="has no label 'nodules' \\(its labels: lungs\\)"):
        _run(data, tmp_path / "c", [f"x={lungs_only}"])
    with pytest.raises(MedvolError, match="has no label 'spleen' \\(its labels: lungs, nodules\\)"):
        _run(data, tmp_path / "d", [f"x={data['good']}"], labels=["spleen"])
    bare = tmp_path / "bare_cache"
    build(root / "scans", bare, PreprocessParams(size=SIZE), val_fraction=0.34, labels=False)
    with pytest.raises(MedvolError, match="bare_cache: train volume '.*' has no label map"):
        _run({"cache": bare}, tmp_path / "e", [f"x={data['good']}"])
    big = write_generated(tmp_path / "big", 1, 64, seed=3)
    with pytest.raises(MedvolError, match=r"shape \(64, 64, 64\); the real volumes are \(32, 32, 32\)"):
        _run(data, tmp_path / "f", [f"x={big}"], iterations=1)
    with pytest.raises(MedvolError, match="NAME must start with a letter"):
        _run(data, tmp_path / "g", [f"real={data['good']}"])


def _write_slices(data, folder):
    """Four synthetic 2D slices (16², pooled from the cache's 32³ grid) with masks, marked."""
    from medvol.data.datasets import CachedVolumeDataset
    from medvol.data.preprocess import PreprocessParams, to_intensity
    from medvol.study.downstream.data import pool_slice
    from medvol.sample.images import write_image2d

    folder.mkdir()
    ds = CachedVolumeDataset(data["cache"], "train")
    params = PreprocessParams(size=SIZE)
    for i, k in enumerate((12, 14, 16, 18)):
        image, labels = pool_slice(*(a[k] for a in ds.volume_and_labels(i % len(ds))), 16)
        record = {"model": "slices", "index": i, "mask_labels": list(ds.mask_labels)}
        write_image2d(to_intensity(image, params).astype(np.float32), (1.0, 1.0), folder / f"sample_{i:04d}.nii.gz",
                      record)
        write_image2d(labels, (1.0, 1.0), folder / f"sample_{i:04d}_mask.nii.gz", record)
    return ds


def test_two_d_data_and_unet(data, tmp_path):
    """Slices make a 2D set; real volumes give pooled slices; a 2D U-Net is scored per volume."""
    from medvol.study.downstream.data import open_real, open_synthetic, real_slices
    from medvol.study.downstream.segment import run_setup

    _write_slices(data, tmp_path / "slices")
    train, classes = open_real(str(data["cache"]), "train", ["lungs"])
    val, _ = open_real(str(data["cache"]), "val", classes)
    synthetic = open_synthetic("s", tmp_path / "slices", size=SIZE, window=(-1024.0, 600.0), classes=classes, n=None)
    assert synthetic.dims == 2 and synthetic.load(0)[0].shape == (16, 16)
    slices = real_slices(train, 16)
    image, labels = slices.load(0)
    assert image.shape == labels.shape == (16, 16) and len(slices) > len(train)
    result = run_setup([slices, synthetic], val, 1, dims=2, side=16, iterations=2, batch=2, lr=1e-2, seed=0,
                       augment=True, channels=(4, 8), device=__import__("torch").device("cpu"))
    assert len(result["dice"]) == len(val) and all(0.0 <= row[0] <= 1.0 for row in result["dice"])


@pytest.mark.slow
def test_two_d_slices_train_a_two_d_unet(data, tmp_path):
    """Synthetic 2D slices make the whole study 2D (FID with Inception on slices)."""
    folder = tmp_path / "slices"
    ds = _write_slices(data, folder)
    out = tmp_path / "study"
    results = _run(data, out, [f"slices={folder}"], labels=["lungs"], iterations=5)
    assert results["config"]["dims"] == 2 and results["config"]["side"] == 16
    run = json.loads((out / "runs" / "real__seed0.json").read_text(encoding="utf-8"))
    assert run["train_items"] > len(ds)  # slices, not volumes
    assert all(0.0 <= v[0] <= 1.0 for v in run["dice"])
    assert results["sources"]["slices"]["fid"]["extractor"]["extractor"] == "inception"


def test_cli(data, tmp_path, capsys):
    from medvol.cli import main

    out = tmp_path / "cli"
    code = main(["study", "downstream", "--real", str(data["cache"]), "--synthetic", f"noise={data['noise']}",
                 "--seeds", "1", "--iterations", "2", "--unet-channels", "4,8", "--feature-iters", "2",
                 "--labels", "lungs", "--out", str(out)])
    assert code == 0
    assert "synthetic only (noise): mean Dice" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text(encoding="utf-8"))["config"]["classes"] == ["lungs"]
    shutil.rmtree(out)
    assert main(["study", "downstream", "--real", str(data["cache"]), "--synthetic", str(tmp_path / "missing"),
                 "--out", str(out)]) == 2


@pytest.mark.slow
def test_checkpoint_source_generates_images_and_masks(data, tmp_path):
    """A checkpoint of a model with mask channels: N images with masks are generated into
    DIR/synthetic/NAME/ and trained on; a second run reuses them. Needs paired generation
    (configs/demo_masks.yaml); skipped where it is not there."""
    from pathlib import Path

    from medvol.cli import main

    config = Path(__file__).resolve().parents[2] / "configs" / "demo_masks.yaml"
    if not config.is_file():
        pytest.skip("paired image + mask generation (configs/demo_masks.yaml) is not in this tree")
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--train.iterations", "2", "--train.ckpt_every", "2",
                 "--train.amp", "none", "--train.mode", "reference", "--train.device", "cpu",
                 "--train.out", str(run)]) == 0
    out = tmp_path / "study"
    results = _run(data, out, [f"gan={run}"], n_synthetic=2, iterations=2, labels=["lungs"])
    folder = out / "synthetic" / "gan"
    assert sorted(p.name for p in folder.glob("*_mask.nii.gz")) == ["sample_0000_mask.nii.gz", "sample_0001_mask.nii.gz"]
    source = results["sources"]["gan"]
    assert source["kind"] == "checkpoint" and source["n"] == 2 and len(source["checkpoint_sha256"]) == 1
    stamp = (folder / "sample_0000.nii.gz").stat().st_mtime_ns
    _run(data, out, [f"gan={run}"], n_synthetic=2, iterations=2, labels=["lungs"])
    assert (folder / "sample_0000.nii.gz").stat().st_mtime_ns == stamp


def test_a_cache_with_one_held_out_volume_is_refused_before_training(data, tmp_path, monkeypatch):
    """Issue 22: FID needs two held-out volumes; that is said before any U-Net trains, not after all."""
    import json as _json

    from medvol.data.cache import build_cache as build
    from medvol.data.preprocess import PreprocessParams
    from medvol.study.downstream import study as S
    from tests.study.downstream_data import LABELS

    cache = build(data["root"] / "scans", tmp_path / "cache", PreprocessParams(size=SIZE), val_fraction=0.2,
                  mask_labels=LABELS)
    manifest = _json.loads((tmp_path / "cache" / "manifest.json").read_text(encoding="utf-8"))
    assert [v["split"] for v in manifest["volumes"]].count("val") == 1

    def no_training(*args, **kwargs):
        raise AssertionError("a U-Net was trained before the FID sizes were checked")

    monkeypatch.setattr(S, "run_setup", no_training)
    with pytest.raises(MedvolError, match="val split gives 1 held-out volumes; the FID of --synthetic good"):
        _run({"cache": tmp_path / "cache"}, tmp_path / "study", [f"good={data['good']}"])
    assert not list((tmp_path / "study").rglob("*__seed*.json"))


def test_sources_of_two_shapes_are_refused_by_both_tasks():
    """One study trains one kind of network: sources that mix 2D and 3D, or sizes, are refused."""
    from medvol.study.downstream.data import LabelledSet
    from medvol.study.downstream.study import one_shape

    def source(dims, side):
        return LabelledSet("s", dims, ["a"], lambda i: (np.zeros((side,) * dims, np.float32), np.zeros(1)))

    assert one_shape([source(2, 16), source(2, 16)], "slice", "U-Net") == (2, 16)
    for mixed in ([source(2, 16), source(3, 16)], [source(2, 16), source(2, 8)]):
        with pytest.raises(MedvolError, match=r"mix 2D slices and 3D volumes \(or slice sizes\); one study trains "
                                              r"one kind of U-Net"):
            one_shape(mixed, "slice", "U-Net")
        with pytest.raises(MedvolError, match=r"mix 2D images and 3D volumes \(or image sizes\); one study trains "
                                              r"one kind of classifier"):
            one_shape(mixed, "image", "classifier")

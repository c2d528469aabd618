"""``medvol study downstream --task classify`` on 32³ phantoms with tiny classifiers, its metrics
against scikit-learn, its refusals and output rules."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from medvol.errors import MedvolError
from downstream_data import classify_cli, load_tool

pytest.importorskip("monai")
pytest.importorskip("SimpleITK")

SIZE = 32
FAST = dict(channels=(4, 8), iterations=4, batch=2, lr=1e-2, feature_iters=2, log=lambda message: None)

demo = load_tool("classify_demo")

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/study/conftest.py


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A cache of 8 phantoms with factors (3 held out), an ideal and a noise source of 2 per class."""
    from medvol.data.cache import build_cache
    from medvol.data.preprocess import PreprocessParams

    root = tmp_path_factory.mktemp("classify")
    demo.write_scans(root / "scans", 8, SIZE)
    build_cache(root / "scans", root / "cache", PreprocessParams(size=SIZE), val_fraction=0.34)
    return {"root": root, "cache": root / "cache",
            "ideal": demo.write_class_source(root / "ideal", 2, SIZE, seed=7),
            "noise": demo.write_class_source(root / "noise", 2, SIZE, seed=9, kind="noise")}


def _run(data, out, synthetic, **options):
    from medvol.study.downstream.classify_study import run_classify

    return run_classify(str(data["cache"]), synthetic, out, seeds=options.pop("seeds", 1), **{**FAST, **options})


# ------------------------------------------------------------------------------------- metrics


def test_confusion_against_sklearn():
    from sklearn.metrics import confusion_matrix

    from medvol.study.downstream.classify import confusion

    rng = np.random.default_rng(0)
    for n in (1, 7, 50):
        truth, prediction = rng.integers(0, 2, n), rng.integers(0, 2, n)
        tn, fp, fn, tp = confusion_matrix(truth, prediction, labels=[0, 1]).ravel()
        got = confusion(truth, prediction)
        assert (got["tp"], got["fp"], got["tn"], got["fn"]) == (tp, fp, tn, fn)
        assert got["accuracy"] == pytest.approx((tp + tn) / n)
        assert got["sensitivity"] == (pytest.approx(tp / (tp + fn)) if tp + fn else None)
        assert got["specificity"] == (pytest.approx(tn / (tn + fp)) if tn + fp else None)
    # by hand: 3 positives (2 found), 2 negatives (1 called positive)
    got = confusion([1, 1, 1, 0, 0], [1, 0, 1, 1, 0])
    assert (got["tp"], got["fn"], got["fp"], got["tn"]) == (2, 1, 1, 1)
    assert got["sensitivity"] == pytest.approx(2 / 3) and got["specificity"] == pytest.approx(0.5)
    with pytest.raises(MedvolError, match="0 \\(negative\\) and 1 \\(positive\\) only"):
        confusion([0, 2], [0, 1])
    with pytest.raises(MedvolError, match="two equal 1D arrays"):
        confusion([0, 1], [0])


def test_augmentation_turns_the_axial_plane_only():
    """Flip left-right, ±36° rotation and ±10 % zoom: an image constant along z stays constant
    along z (the rotation is in the axial plane), the draws are seeded, and they change the image."""
    import torch
    from monai.utils import convert_to_tensor

    from medvol.study.downstream.classify import augmentation

    rng = np.random.default_rng(0)
    plane = torch.from_numpy(rng.uniform(-1, 1, (16, 16)).astype(np.float32))
    volume = plane.expand(12, 16, 16)[None].clone()
    outputs = []
    for seed in (0, 0, 1):
        transform = augmentation(3, seed)
        outputs.append([convert_to_tensor(transform(volume.clone()), track_meta=False) for _ in range(6)])
    for out in outputs[0]:
        assert out.shape == volume.shape
        assert torch.allclose(out, out[:, :1].expand_as(out), atol=1e-5)  # still constant along z
    assert all(torch.equal(a, b) for a, b in zip(outputs[0], outputs[1]))
    assert sum(not torch.allclose(o, volume) for o in outputs[0]) >= 3
    assert any(not torch.equal(a, b) for a, b in zip(outputs[0], outputs[2]))


# ---------------------------------------------------------------------------------- end to end


def _classes_from_manifest(cache: Path, split: str) -> list[int]:
    manifest = json.loads((cache / "manifest.json").read_text(encoding="utf-8"))
    entries = sorted((v for v in manifest["volumes"] if v["split"] == split), key=lambda v: v["name"])
    return [int(v["phantom_factors"]["asymmetry"] != "none") for v in entries]


def test_end_to_end(data, tmp_path):
    from sklearn.metrics import confusion_matrix

    out = tmp_path / "study"
    results = _run(data, out, [f"ideal={data['ideal']}", f"noise={data['noise']}"])
    assert [(r["setup"], r["source"]) for r in results["setups"]] == [
        ("real", None), ("real+aug", None), ("synthetic", "ideal"), ("real+synthetic", "ideal"),
        ("synthetic", "noise"), ("real+synthetic", "noise")]
    truth = _classes_from_manifest(data["cache"], "val")
    assert 0 < sum(truth) < len(truth)  # both classes held out
    for row in results["setups"]:
        run = json.loads((out / "runs" / (f"{row['setup']}__{row['source']}__seed0.json" if row["source"]
                                          else f"{row['setup']}__seed0.json")).read_text(encoding="utf-8"))
        assert run["truth"] == truth
        tn, fp, fn, tp = confusion_matrix(run["truth"], run["predictions"], labels=[0, 1]).ravel()
        assert (run["tp"], run["fp"], run["tn"], run["fn"]) == (tp, fp, tn, fn)
        assert row["accuracy"]["mean"] == pytest.approx((tp + tn) / len(truth))
        assert row["fp"]["mean"] == fp and row["fn"]["mean"] == fn
    expected_train = 8 - len(truth)
    assert results["setups"][0]["seeds"]["0"]["train_items"] == expected_train
    assert results["setups"][3]["seeds"]["0"]["train_items"] == expected_train + 4
    assert results["sources"]["ideal"]["fid"]["fid"] < results["sources"]["noise"]["fid"]["fid"]
    assert results["config"]["positive"] == sorted({"left_small", "right_small"} & set(results["config"]["positive"]))
    table = (out / "results.md").read_text(encoding="utf-8")
    assert "| synthetic only | noise |" in table
    assert "| set-up | source | seed | accuracy | TP | FP | TN | FN |" in table
    assert (out / "accuracy_vs_fid.png").is_file()
    # resumed: nothing trained again, the same results
    messages = []
    again = _run(data, out, [f"ideal={data['ideal']}", f"noise={data['noise']}"], log=messages.append)
    assert not [m for m in messages if " seed " in m] and again["setups"] == results["setups"]


def _write_slices(folder: Path, per_class: int = 2) -> Path:
    """2D synthetic images (16², the central axial slice of phantoms pooled 2×2) per class, marked."""
    from medvol.data.phantom import draw_factors, make_phantom
    from medvol.data.preprocess import PreprocessParams, preprocess_with_info, to_intensity
    from medvol.sample.images import write_image2d

    params = PreprocessParams(size=SIZE)
    counts = [0, 0]
    for i in range(60):
        label = int(draw_factors((3, i))["asymmetry"] != "none")
        if counts[label] < per_class:
            array, _ = preprocess_with_info(make_phantom(SIZE, (3, i))[0], params)
            image = array[SIZE // 2].reshape(16, 2, 16, 2).mean(axis=(1, 3))
            (folder / demo.CLASSES[label]).mkdir(parents=True, exist_ok=True)
            write_image2d(to_intensity(image, params).astype(np.float32), (1.0, 1.0),
                          folder / demo.CLASSES[label] / f"s{i}.nii.gz", {"model": "slices", "index": i})
            counts[label] += 1
    return folder


def test_two_d_images_make_a_two_d_study(data, tmp_path):
    """2D synthetic images: the real items are the central axial slices, pooled to their side."""
    import torch

    from medvol.study.downstream import classdata as C
    from medvol.study.downstream.classify import run_setup

    source = C.open_synthetic_classes("s", _write_slices(tmp_path / "slices"), size=SIZE, window=(-1024.0, 600.0),
                                      n=None)
    assert source.dims == 2 and [source.load(i)[1] for i in range(4)] == [0, 0, 1, 1]
    rule = C.class_rule(str(data["cache"]), "asymmetry", None)
    volumes = C.open_real_classes(str(data["cache"]), "val", rule)
    val = C.central_slices(volumes, 16)
    image, label = val.load(0)
    expected = volumes.load(0)[0][SIZE // 2].reshape(16, 2, 16, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(image, expected, rtol=1e-6)
    assert label == volumes.load(0)[1]
    result = run_setup([source], val, net="classifier", dims=2, side=16, iterations=3, batch=2, lr=1e-2, seed=0,
                       augment=True, channels=(4, 8), weights=None, device=torch.device("cpu"))
    assert result["n"] == len(val) and result["tp"] + result["fp"] + result["tn"] + result["fn"] == len(val)


@pytest.mark.slow
def test_two_d_study_end_to_end(data, tmp_path):
    """The whole 2D study: a 2D classifier, FID with Inception on the central slices."""
    out = tmp_path / "study"
    results = _run(data, out, [f"slices={_write_slices(tmp_path / 'slices')}"])
    assert results["config"]["dims"] == 2 and results["config"]["side"] == 16
    assert results["sources"]["slices"]["fid"]["extractor"]["extractor"] == "inception"
    assert results["setups"][0]["seeds"]["0"]["n"] == len(_classes_from_manifest(data["cache"], "val"))


def test_weights_from_a_file(data, tmp_path):
    """Every network starts from the file (its sha256 recorded); a head of another shape keeps its
    initialisation and is listed; a wrong hash, a missing file or another network are refused."""
    import torch

    from medvol.study.downstream.classify import build_classifier, read_weights, train_classifier
    from medvol.study.downstream.classdata import class_rule, open_real_classes

    torch.manual_seed(11)
    state = build_classifier("classifier", 3, SIZE, (4, 8)).state_dict()
    path = tmp_path / "init.pt"
    torch.save(state, path)
    out = tmp_path / "study"
    results = _run(data, out, [f"ideal={data['ideal']}"], weights=str(path), iterations=1)
    assert results["config"]["weights"]["sha256"] == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    rule = class_rule(str(data["cache"]), "asymmetry", None)
    train = open_real_classes(str(data["cache"]), "train", rule)
    # one iteration at lr ~0 from the file: the weights are the file's, not a fresh initialisation
    net, _, kept = train_classifier([train], net="classifier", dims=3, side=SIZE, iterations=1, batch=1, lr=1e-12,
                                    seed=0, augment=False, channels=(4, 8), weights=read_weights(str(path)))
    assert kept == [] and all(torch.allclose(net.state_dict()[k], v, atol=1e-6) for k, v in state.items())
    head = {k: (torch.zeros(3, *v.shape[1:]) if v.shape[:1] == (2,) else v) for k, v in state.items()}
    torch.save(head, tmp_path / "head.pt")
    _, _, kept = train_classifier([train], net="classifier", dims=3, side=SIZE, iterations=1, batch=1, lr=1e-3,
                                  seed=0, augment=False, channels=(4, 8),
                                  weights=read_weights(str(tmp_path / "head.pt")))
    assert kept and all(state[k].shape[:1] == (2,) for k in kept)
    with pytest.raises(MedvolError, match="SHA-256 .* differs from"):
        read_weights(f"{path}:{'0' * 64}")
    with pytest.raises(MedvolError, match="no such file .*downloads no weights"):
        read_weights(str(tmp_path / "missing.pt"))
    torch.save(build_classifier("classifier", 3, SIZE, (4, 8, 16)).state_dict(), tmp_path / "wider.pt")
    with pytest.raises(MedvolError, match="does not fit the network"):
        _run(data, tmp_path / "other", [f"ideal={data['ideal']}"], weights=str(tmp_path / "wider.pt"), iterations=1)


# -------------------------------------------------------------------------- refusals and outputs


def test_bad_input_is_one_line_and_exit_2(data, tmp_path, capsys):
    """Every refusal: exit 2, one line naming the culprit, and no output folder left behind."""
    root = data["root"]
    unmarked = demo.write_class_source(tmp_path / "unmarked", 1, SIZE, seed=3, mark=False)
    one_class = tmp_path / "oneclass"
    shutil.copytree(data["ideal"] / "negative", one_class / "negative")
    (tmp_path / "ckpt.pt").write_bytes(b"x")
    ideal = f"ideal={data['ideal']}"
    cases = [
        (ideal, ["--labels", "lungs"], "--labels: an option of --task segment"),
        (ideal, ["--positive", "tall"], "--positive tall: no volume of"),
        (ideal, ["--classify-by", "lung_ml"], "--classify-by lung_ml: a continuous factor"),
        (ideal, ["--classify-by", "habitus"], "--classify-by habitus: give --positive"),
        (f"x={one_class}", [], "has no positive/ folder"),
        (f"x={unmarked}", [], "is not marked synthetic"),
        (f"x={tmp_path / 'ckpt.pt'}", [], "a file; a classification source is a folder"),
        (ideal, ["--weights", str(tmp_path / "none.pt")], "--weights .*none.pt: no such file"),
        (ideal, ["--iterations", "0"], "--iterations 0: expected an integer >= 1"),
    ]
    for number, (synthetic, extra, message) in enumerate(cases):
        out = tmp_path / f"out{number}"
        options = {"--seeds": "1", "--iterations": "1", "--channels": "4,8", "--feature-iters": "1",
                   **dict(zip(extra[::2], extra[1::2]))}
        code, err = classify_cli(capsys, "--real", data["cache"], "--synthetic", synthetic,
                         *[a for pair in options.items() for a in pair], "--out", out)
        assert code == 2 and len(err) == 1, (extra, err)
        assert re.search(message, err[0]), (message, err[0])
        assert not out.exists(), message
    assert (root / "cache" / "manifest.json").is_file()


def test_output_rules(data, tmp_path, capsys):
    """A folder holding a user's files, or a segmentation study, is refused and left as it was."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine", encoding="utf-8")
    code, err = classify_cli(capsys, "--real", data["cache"], "--synthetic", f"ideal={data['ideal']}", "--seeds", "1",
                     "--iterations", "1", "--channels", "4,8", "--out", mine)
    assert code == 2 and "not empty and holds no study.json" in err[0]
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    segment = tmp_path / "segment"
    segment.mkdir()
    (segment / "study.json").write_text(json.dumps({"config": {"classes": ["lungs"], "seeds": 1}, "sources": {},
                                                    "fid": {}}), encoding="utf-8")
    before = (segment / "study.json").read_bytes()
    code, err = classify_cli(capsys, "--real", data["cache"], "--synthetic", f"ideal={data['ideal']}", "--seeds", "1",
                     "--iterations", "1", "--channels", "4,8", "--out", segment)
    assert code == 2 and "another configuration (task None -> 'classify'" in err[0]
    assert (segment / "study.json").read_bytes() == before
    assert sorted(p.name for p in segment.iterdir()) == [".medvol-study.lock", "study.json"]  # a study's own lock

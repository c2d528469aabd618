"""The Inception Score: its maths against closed forms, scipy, a torch oracle (torch-fidelity's split
rule) and torch-fidelity itself where installed; the class-logits extractors; and ``medvol evaluate
--metrics is`` on 2D images and 2.5D slices."""

from __future__ import annotations

import json

import numpy as np
import re

import pytest
import torch

from medvol.cli import main
from medvol.errors import MedvolError
from medvol.eval.features import get_extractor
from medvol.eval.metrics import inception_score
from test_evaluate_2d import png_sets, phantom_slices, write_pngs  # noqa: F401  (fixture)

SIZE = 32


class TinyClassifier(torch.nn.Module):
    """A stand-in with a classifier's interface: (N, 3, 299, 299) -> (N, 7) logits."""

    def __init__(self, classes: int = 7):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 7, stride=6)
        self.fc = torch.nn.Linear(4 * 9, classes)

    def forward(self, x):
        x = torch.tanh(self.conv(x))
        return 4.0 * self.fc(torch.nn.functional.adaptive_avg_pool2d(x, 3).flatten(1))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("w") / "tiny_classifier.pt"
    with pytest.warns(FutureWarning):
        torch.jit.save(torch.jit.script(TinyClassifier()), str(path))
    return path


# ------------------------------------------------------------------------------------ maths


def test_uniform_predictions_score_one():
    got = inception_score(np.zeros((40, 1008)), splits=10)
    assert got["mean"] == pytest.approx(1.0, abs=1e-12) and got["std"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("k", [2, 5, 17])
def test_one_hot_over_k_equally_used_classes_scores_k(k):
    # 4 rows per class in every split: each split's marginal is uniform over k classes.
    logits = np.full((4 * k * 3, 50), -1e4)
    logits[np.arange(len(logits)), np.arange(len(logits)) % k] = 0.0
    got = inception_score(logits, splits=3, seed=None)
    assert got["mean"] == pytest.approx(k, rel=1e-9) and got["std"] == pytest.approx(0.0, abs=1e-9)
    assert (got["n"], got["splits"], got["classes"]) == (len(logits), 3, 50)


def test_one_class_for_every_sample_scores_one():
    logits = np.zeros((30, 10))
    logits[:, 4] = 1e4
    assert inception_score(logits, splits=5)["mean"] == pytest.approx(1.0, abs=1e-12)


def _torch_is(logits: np.ndarray, splits: int) -> tuple[float, float]:
    """The oracle: torch's log_softmax, splits at i * N // splits (torch-fidelity's rule), KL per row."""
    t = torch.from_numpy(logits).double()
    log_p, n = t.log_softmax(dim=1), len(t)
    scores = []
    for i in range(splits):
        chunk = log_p[i * n // splits:(i + 1) * n // splits]
        log_q = chunk.exp().mean(dim=0).log()
        scores.append(float((chunk.exp() * (chunk - log_q)).sum(dim=1).mean().exp()))
    return float(np.mean(scores)), float(np.std(scores))


def test_matches_an_independent_torch_oracle(seeded_rng):
    logits = seeded_rng.normal(0.0, 3.0, (200, 1008))
    ours = inception_score(logits, splits=10, seed=None)
    mean, std = _torch_is(logits, 10)
    assert ours["mean"] == pytest.approx(mean, rel=1e-10) and ours["std"] == pytest.approx(std, rel=1e-8)
    # Shuffled: the same maths on the rows in our seeded order.
    shuffled = inception_score(logits, splits=10, seed=7)
    order = np.random.default_rng(7).permutation(len(logits))
    assert shuffled["mean"] == pytest.approx(_torch_is(logits[order], 10)[0], rel=1e-10)
    assert shuffled["mean"] != pytest.approx(ours["mean"], rel=1e-12)


def test_matches_torch_fidelity_where_installed(seeded_rng):
    # Not in the dev extra: torch-fidelity 0.4.0's wheel installs a top-level ``tests`` package
    # that shadows this repository's (``from tests.train.conftest import ...`` then fails).
    tf_isc = pytest.importorskip("torch_fidelity.metric_isc")
    logits = seeded_rng.normal(0.0, 3.0, (200, 1008))
    ours = inception_score(logits, splits=10, seed=None)
    ref = tf_isc.isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=False)
    assert ours["mean"] == pytest.approx(ref["inception_score_mean"], rel=1e-10)
    assert ours["std"] == pytest.approx(ref["inception_score_std"], rel=1e-8)


def test_uneven_splits_match_scipy_entropy(seeded_rng):
    from scipy.special import softmax
    from scipy.stats import entropy

    logits = seeded_rng.normal(0.0, 2.0, (53, 9))
    p = softmax(logits, axis=1)
    parts = [p[:11], p[11:22], p[22:33], p[33:43], p[43:]]  # numpy's array_split of 53 into 5
    want = [np.exp(np.mean([entropy(row, part.mean(axis=0)) for row in part])) for part in parts]
    got = inception_score(logits, splits=5, seed=None)
    assert got["mean"] == pytest.approx(np.mean(want), rel=1e-10)
    assert got["std"] == pytest.approx(np.std(want), rel=1e-8)


@pytest.mark.parametrize("logits, splits, culprit", [
    (np.full((10, 5), np.nan), 2, "NaN"),
    (np.zeros((10, 1)), 2, "2 classes"),
    (np.zeros((10, 5)), 11, "splits"),
    (np.zeros((10, 5)), 0, "splits"),
    (np.zeros(10), 2, "[N, D]"),
])
def test_bad_logits_are_refused(logits, splits, culprit):
    with pytest.raises(MedvolError, match=culprit.replace("[", r"\[").replace("]", r"\]")):
        inception_score(logits, splits=splits)


# ------------------------------------------------------------------------------- extractors


def test_the_shipped_fid_file_has_no_logits_and_is_not_used():
    with pytest.raises(MedvolError, match="no class logits"):
        get_extractor("inception-logits")


def test_torchvision_state_dict_loads(tmp_path):
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    net = inception_v3(weights=None, num_classes=10, aux_logits=False, init_weights=False).eval()
    path = tmp_path / "tv_inception.pth"
    torch.save(net.state_dict(), path)
    ext = get_extractor(f"inception-logits:{path}")
    images = [("a", np.linspace(-1, 1, SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE)),
              ("b", np.zeros((SIZE, SIZE), np.float32))]
    fs = ext.extract(images)
    assert fs.features["image"].shape == (2, 10)
    from medvol.eval.features import inception_input

    with torch.no_grad():
        want = net(inception_input(np.stack([x for _, x in images]))).double().numpy()
    np.testing.assert_allclose(fs.features["image"], want, rtol=1e-5, atol=1e-5)
    assert ext.info()["output"] == "logits" and len(ext.info()["weights_sha256"]) == 64


def test_a_file_that_is_no_classifier_is_one_line(tmp_path):
    bad = tmp_path / "junk.pt"
    bad.write_bytes(b"not a network")
    with pytest.raises(MedvolError, match="junk.pt: neither TorchScript nor a state dict"):
        get_extractor(f"inception-logits:{bad}")
    sd = tmp_path / "sd.pt"
    torch.save({"conv.weight": torch.zeros(1)}, sd)
    with pytest.raises(MedvolError, match="no fc.weight"):
        get_extractor(f"inception-logits:{sd}")


# ----------------------------------------------------------------------------------- command


def run_eval(capsys, *args):
    code = main(["evaluate", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_evaluate_is_on_2d_images(tmp_path, classifier, png_sets, capsys):  # noqa: F811
    code, out, err = run_eval(capsys, "--real", "phantom:0", "--fake", png_sets["phantom"], "--out",
                              tmp_path / "o", "--metrics", "is", "--features", f"inception-logits:{classifier}",
                              "--n", 12, "--is-splits", 3, "--seed", 5)
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "scores.json").read_text(encoding="utf-8"))
    ext = report["extractors"][0]
    score = ext["scores"]["image/is"]
    assert set(ext["scores"]) == {"image/is"}
    assert ext["info"]["extractor"] == "inception-logits" and len(ext["info"]["weights_sha256"]) == 64
    assert (score["n"], score["splits"], score["seed"], score["classes"]) == (12, 3, 5, 7)
    # The value is the metric of the extractor's logits of the same images.
    logits = get_extractor(f"inception-logits:{classifier}").extract(
        (p.name, (np.asarray(__import__("PIL.Image").Image.open(p), np.float32) / 127.5 - 1.0))
        for p in sorted(png_sets["phantom"].glob("*.png"))).features["image"]
    want = inception_score(logits, splits=3, seed=5)
    assert score["value"] == pytest.approx(want["mean"], rel=1e-6)
    assert score["std"] == pytest.approx(want["std"], rel=1e-5, abs=1e-9)
    assert 1.0 <= score["real"]["value"] and score["real"]["n"] == 12
    assert "image/is" in out and "std over splits" in (tmp_path / "o" / "scores.md").read_text(encoding="utf-8")


def test_evaluate_is_on_25d_slices(tmp_path, classifier, capsys):
    code, _, err = run_eval(capsys, "--real", "phantom:0", "--fake", "phantom:1", "--size", SIZE, "--n", 3,
                            "--out", tmp_path / "o", "--metrics", "fid,is", "--slices-per-volume", 4,
                            "--features", f"inception-logits2.5d:{classifier}", "--bootstrap", 0)
    assert code == 0, err
    scores = json.loads((tmp_path / "o" / "scores.json").read_text(encoding="utf-8"))["extractors"][0]["scores"]
    assert set(scores) == {"axial/is", "coronal/is", "sagittal/is", "mean/is"}
    assert scores["axial/is"]["n"] == 12 and scores["axial/is"]["splits"] == 10
    assert scores["mean/is"]["value"] == pytest.approx(
        np.mean([scores[f"{p}/is"]["value"] for p in ("axial", "coronal", "sagittal")]))


@pytest.mark.parametrize("args, culprit", [
    (["--metrics", "is"], "needs class logits"),
    (["--metrics", "fid", "--features", "inception-logits:{w}"], "add is to --metrics"),
    (["--metrics", "is", "--features", "inception-logits:{w}", "--is-splits", "0"], "--is-splits 0"),
    (["--metrics", "is", "--features", "inception-logits:{w}", "--is-splits", "13"], "splits must be"),
])
def test_is_refusals_are_one_line(tmp_path, classifier, png_sets, capsys, args, culprit):  # noqa: F811
    args = [a.format(w=classifier) for a in args]
    code, _, err = run_eval(capsys, "--real", "phantom:0", "--fake", png_sets["phantom"], "--n", 12,
                            "--out", tmp_path / "o", *args)
    assert code == 2 and culprit in err and "Traceback" not in err
    # One error line, after the non-tty progress lines of phases that finished (medvol.progress).
    lines = [line for line in err.strip().splitlines() if not re.match(r"^[^:]+: [0-9/]+ \S+ in [0-9.]+ s$", line)]
    assert len(lines) == 1 and lines[0].startswith("medvol evaluate: error:")
    assert not (tmp_path / "o" / "scores.json").exists()

"""Issue 22 ("Trust") for ``medvol evaluate`` and ``medvol compare``: outputs checked before the
work and written together, one-line errors, real sets that are generated or unlike, short sets.

Fast: 32^3 phantoms through the untrained domain autoencoder (no weights needed)."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from medvol.cli import main
from medvol.eval import domain as D
from medvol.eval.features import Extractor

SIZE = 32


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    return D.save_untrained(tmp_path_factory.mktemp("dom") / "domain.pt", size=SIZE, seed=1)


PROGRESS = re.compile(r"^[^:]+: [0-9/]+ \S+ in [0-9.]+ s$")


@pytest.fixture
def fast(domain):
    return ["--features", f"domain:{domain}", "--size", SIZE, "--bootstrap", 0, "--metrics", "fid"]


def run_eval(capsys, *args):
    code = main(["evaluate", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> str:
    """The one error line, past the non-tty progress lines of finished phases (medvol.progress)."""
    lines = [line for line in err.strip().splitlines() if not PROGRESS.match(line)]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def no_features(monkeypatch):
    """Any feature extraction fails loudly: a refusal must come before the work."""
    def extract(self, volumes, progress=None):
        raise AssertionError("features were computed before the output was checked")

    monkeypatch.setattr(Extractor, "extract", extract)


def _write_volumes(folder: Path, count: int, seed: int, marked: bool = False) -> Path:
    from medvol.data.io import Volume, write_volume
    from medvol.data.provenance import write_synthetic

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        volume = Volume(array=rng.uniform(-1000, 500, (SIZE,) * 3).astype(np.float32), spacing=(1.0, 1.0, 1.0))
        path = folder / f"vol_{i}.nii.gz"
        if marked:
            write_synthetic(volume, path, {"model": "test", "seed": seed, "index": i})
        else:
            write_volume(volume, path)
    return folder


def test_a_users_scores_md_or_figure_is_never_replaced_and_refused_first(tmp_path, fast, capsys, no_features):
    out = tmp_path / "e"
    out.mkdir()
    (out / "scores.md").write_text("my notes", encoding="utf-8")
    argv = ["--real", "phantom:0", "--fake", "phantom:1", "--n", 2, "--out", out, *fast]
    code, _, err = run_eval(capsys, *argv)
    assert code == 2 and "scores.md" in one_line(err) and "--overwrite" in err
    code, _, err = run_eval(capsys, *argv, "--overwrite")
    assert code == 2 and "scores.md: exists and was not written by medvol" in one_line(err)
    assert sorted(os.listdir(out)) == ["scores.md"] and (out / "scores.md").read_text(encoding="utf-8") == "my notes"
    (out / "scores.md").unlink()
    (out / "features_pca.png").write_bytes(b"my figure")
    code, _, err = run_eval(capsys, *argv, "--overwrite")
    assert code == 2 and "features_pca.png: exists and was not written by medvol" in one_line(err)
    assert (out / "features_pca.png").read_bytes() == b"my figure"


def test_an_out_that_is_a_file_is_refused_before_any_feature(tmp_path, fast, capsys, no_features):
    (tmp_path / "scores").write_text("a file", encoding="utf-8")
    code, _, err = run_eval(capsys, "--real", "phantom:0", "--fake", "phantom:1", "--n", 2,
                            "--out", tmp_path / "scores", *fast)
    assert code == 2 and "exists and is not a folder" in one_line(err)


def test_overwrite_replaces_only_what_evaluate_wrote(tmp_path, fast, capsys):
    out = tmp_path / "e"
    argv = ["--real", "phantom:0", "--fake", "phantom:1", "--out", out, *fast]
    assert run_eval(capsys, *argv, "--n", 2)[0] == 0
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    code, _, err = run_eval(capsys, *argv, "--n", 3, "--overwrite")
    assert code == 0, err
    assert json.loads((out / "scores.json").read_text(encoding="utf-8"))["real"]["n_volumes"] == 3
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_is_one_line(tmp_path, fast, capsys):
    code, _, err = run_eval(capsys, "--real", "phantom:0", "--fake", "phantom:1", "--n", 2,
                            "--out", tmp_path / "e", *fast, "--device", "cuda")
    assert code == 2 and one_line(err).startswith("medvol evaluate: error: --device cuda: ")
    assert not (tmp_path / "e").exists()


def _fsync_fails_for(monkeypatch, stem: str):
    """``os.fsync`` reports a full disk for the temporary of ``stem`` (``.stem.tmp-XXXX...``)."""
    real_fsync = os.fsync

    def fsync(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{stem}.tmp-"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_a_full_disk_at_the_scores_leaves_no_figure_behind(tmp_path, fast, capsys, monkeypatch):
    _fsync_fails_for(monkeypatch, "scores")
    out = tmp_path / "e"
    code, stdout, err = run_eval(capsys, "--real", "phantom:0", "--fake", "phantom:1", "--n", 3, "--out", out, *fast)
    assert code == 2 and stdout == ""
    assert "cannot write evaluation output" in one_line(err) and "no space left on device" in err
    assert not out.exists()  # no features_pca.png without its scores, no temporary, no folder


def test_a_full_disk_at_the_figure_is_one_line(tmp_path, domain, medvol_with_file_limit):
    out = tmp_path / "e"
    # 12 kB per file: the marker fits, the 500 x 450 PCA figure does not.
    done = medvol_with_file_limit(["evaluate", "--real", "phantom:0", "--fake", "phantom:1", "--n", 3, "--size", SIZE,
                                   "--features", f"domain:{domain}", "--bootstrap", 0, "--metrics", "fid",
                                   "--out", out], limit=12_000)
    assert done.returncode == 2, done.stderr
    assert one_line(done.stderr).startswith(f"medvol evaluate: error: cannot write evaluation output {out}/")
    assert not out.exists()


def test_compare_refuses_a_scores_json_without_extractors(tmp_path, capsys):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "scores.json").write_text(json.dumps({"real": {"source": "x", "n_volumes": 2}}),
                                                     encoding="utf-8")
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    line = one_line(capsys.readouterr().err)
    assert str(tmp_path / "a" / "scores.json") in line and "no extractors" in line


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A phantom cache with 2 train and 2 val volumes."""
    root = tmp_path_factory.mktemp("cache")
    assert main(["data", "phantom", "--n", "4", "--size", str(SIZE), "--out", str(root / "src")]) == 0
    assert main(["preprocess", "--src", str(root / "src"), "--dst", str(root / "cache"), "--size", str(SIZE),
                 "--val-fraction", "0.5", "--workers", "1"]) == 0
    return root / "cache"


def test_compare_refuses_the_val_and_the_train_split_of_one_cache(tmp_path, fast, cache, capsys):
    for split in ("val", "train"):
        code, _, err = run_eval(capsys, "--real", cache, "--split", split, "--fake", "phantom:1", "--n", 2,
                                "--out", tmp_path / split, *fast)
        assert code == 0, err
    reports = {s: json.loads((tmp_path / s / "scores.json").read_text(encoding="utf-8")) for s in ("val", "train")}
    assert reports["val"]["real"]["source"] == reports["train"]["real"]["source"]
    assert reports["val"]["real"]["set_sha256"] != reports["train"]["real"]["set_sha256"]
    assert main(["compare", str(tmp_path / "val"), str(tmp_path / "train")]) == 2
    assert "real_set_sha256" in one_line(capsys.readouterr().err)
    # The checksum is of the volumes, not of the order they came in: the same split again compares.
    code, _, err = run_eval(capsys, "--real", cache, "--split", "val", "--fake", "phantom:2", "--n", 2,
                            "--out", tmp_path / "val2", *fast)
    assert code == 0, err
    assert main(["compare", str(tmp_path / "val"), str(tmp_path / "val2")]) == 0


def test_generated_volumes_as_the_real_set_need_allow_synthetic_real(tmp_path, fast, capsys, no_features):
    marked = _write_volumes(tmp_path / "generated", 3, seed=4, marked=True)
    code, _, err = run_eval(capsys, "--real", marked, "--fake", "phantom:1", "--out", tmp_path / "e", *fast)
    line = one_line(err)
    assert code == 2 and "3 of its 3 volumes are marked synthetic" in line and "--allow-synthetic-real" in line
    assert not (tmp_path / "e").exists()


def test_allowed_synthetic_real_is_recorded(tmp_path, fast, capsys):
    marked = _write_volumes(tmp_path / "generated", 3, seed=4, marked=True)
    out = tmp_path / "e"
    code, _, err = run_eval(capsys, "--real", marked, "--fake", "phantom:1", "--out", out, *fast,
                            "--allow-synthetic-real")
    assert code == 0, err
    report = json.loads((out / "scores.json").read_text(encoding="utf-8"))
    assert report["allow_synthetic_real"] is True and report["real"]["synthetic"]["count"] == 3
    assert "marked synthetic" in (out / "scores.md").read_text(encoding="utf-8")
    # Real volumes pass without the flag, and say so.
    real = _write_volumes(tmp_path / "scans", 3, seed=5)
    code, _, err = run_eval(capsys, "--real", real, "--fake", "phantom:1", "--out", tmp_path / "r", *fast)
    assert code == 0, err
    report = json.loads((tmp_path / "r" / "scores.json").read_text(encoding="utf-8"))
    assert report["allow_synthetic_real"] is False and "synthetic" not in report["real"]


def test_a_cache_of_generated_volumes_as_the_real_set_is_refused(tmp_path, fast, capsys, no_features):
    marked = _write_volumes(tmp_path / "generated", 3, seed=4, marked=True)
    assert main(["preprocess", "--src", str(marked), "--dst", str(tmp_path / "cache"), "--size", str(SIZE),
                 "--val-fraction", "0.34", "--workers", "1", "--allow-synthetic"]) == 0
    capsys.readouterr()
    code, _, err = run_eval(capsys, "--real", tmp_path / "cache", "--split", "all", "--fake", "phantom:1",
                            "--out", tmp_path / "e", *fast)
    assert code == 2 and "--allow-synthetic-real" in one_line(err)


def test_n_beyond_a_set_warns_or_is_refused_under_strict(tmp_path, fast, capsys, caplog):
    real = _write_volumes(tmp_path / "real", 3, seed=1)
    fake = _write_volumes(tmp_path / "fake", 2, seed=2)
    argv = ["--real", real, "--fake", fake, "--n", 5, *fast]
    code, _, err = run_eval(capsys, *argv, "--out", tmp_path / "e")
    assert code == 0, err
    said = "--n 5: the real set has 3 volumes and the fake set 2; scoring 3 against 2"
    assert any(said in record.getMessage() for record in caplog.records)
    report = json.loads((tmp_path / "e" / "scores.json").read_text(encoding="utf-8"))
    assert report["warnings"][0].startswith(said) and said in (tmp_path / "e" / "scores.md").read_text(encoding="utf-8")
    code, _, err = run_eval(capsys, *argv, "--out", tmp_path / "s", "--strict")
    assert code == 2 and said in one_line(err) and "--strict" in err
    assert not (tmp_path / "s").exists()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny CRF-GAN run with checkpoints at iterations 2 and 4."""
    out = tmp_path_factory.mktemp("run") / "run"
    config = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
    assert main(["train", "--config", str(config), "--out", str(out), "--model.size", str(SIZE),
                 "--model.base_width", "2", "--model.latent_dim", "8", "--data.phantom_n", "4",
                 "--data.workers", "0", "--train.iterations", "4", "--train.mode", "reference",
                 "--train.device", "cpu", "--train.amp", "none", "--train.ckpt_every", "2",
                 "--train.keep_checkpoints", "5", "--train.sample_every", "1000", "--train.progress", "false"]) == 0
    return out


@pytest.mark.parametrize("users", ["curve.png", "iter_0000004/scores.md"])
def test_run_curves_never_replace_a_users_file_and_refuse_first(tmp_path, fast, run, capsys, no_features, users):
    out = tmp_path / "curve"
    (out / users).parent.mkdir(parents=True)
    (out / users).write_text("mine", encoding="utf-8")
    argv = ["--real", "phantom:0", "--run", run, "--every", 2, "--n", 2, "--out", out, *fast]
    for extra in ([], ["--overwrite"]):
        code, _, err = run_eval(capsys, *argv, *extra)
        assert code == 2 and users.split("/")[-1] in one_line(err), err
    assert (out / users).read_text(encoding="utf-8") == "mine"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [users]


def test_run_curves_overwrite_only_their_own_outputs(tmp_path, fast, run, capsys):
    out = tmp_path / "curve"
    argv = ["--real", "phantom:0", "--run", run, "--every", 2, "--n", 2, "--out", out, *fast]
    code, _, err = run_eval(capsys, *argv)
    assert code == 0, err
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert written == ["best.json", "curve.csv", "curve.png",
                       *[f"iter_000000{i}/{name}" for i in (2, 4) for name in ("features_pca.png", "scores.json",
                                                                                 "scores.md")]]
    code, _, err = run_eval(capsys, *argv)
    assert code == 2 and "--overwrite" in one_line(err)
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    code, _, err = run_eval(capsys, *argv[:-len(fast) - 2], "--every", 4, "--out", out, *fast, "--overwrite")
    assert code == 0, err
    assert not (out / "iter_0000002").exists() and (out / "iter_0000004" / "scores.json").is_file()
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_compare_out_never_replaces_a_users_file(tmp_path, fast, capsys):
    for name, seed in (("a", 1), ("b", 2)):
        code, _, err = run_eval(capsys, "--real", "phantom:0", "--fake", f"phantom:{seed}", "--n", 2,
                                "--out", tmp_path / name, *fast)
        assert code == 0, err
    folders = [str(tmp_path / "a"), str(tmp_path / "b")]
    table = tmp_path / "table.md"
    table.write_text("my notes", encoding="utf-8")
    for extra in ([], ["--overwrite"]):
        assert main(["compare", *folders, "--out", str(table), *extra]) == 2
        assert "not a table medvol compare wrote" in one_line(capsys.readouterr().err)
    assert table.read_text(encoding="utf-8") == "my notes"
    table.unlink()
    assert main(["compare", *folders, "--out", str(table)]) == 0
    written = table.read_text(encoding="utf-8")
    assert written.startswith("| extractor | score |") and "| volume/fid |" in written
    assert main(["compare", *folders, "--out", str(table)]) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(["compare", *folders, "--out", str(table), "--overwrite"]) == 0

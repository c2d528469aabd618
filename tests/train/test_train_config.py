"""Config loading: defaults, YAML, CLI overrides, errors that name the key, round trip."""

from __future__ import annotations

import pytest
import yaml

from pathlib import Path

from medvol.config import load_config, parse_overrides, save_config
from medvol.errors import MedvolError

ROOT = Path(__file__).resolve().parents[2]

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_every_shipped_config_loads():
    names = {p.stem for p in CONFIGS}
    expected = {f"{m}_{s}" for m in ("crfgan", "hagan") for s in (64, 128, 256, 512)} | {"demo"}
    assert expected <= names
    for path in CONFIGS:
        cfg = load_config(path)
        if path.stem.split("_")[0] in ("crfgan", "hagan"):  # the 2D configs: tests/models2d
            m, s = path.stem.split("_")
            assert (cfg.model.name, cfg.model.size) == (m, int(s))
            assert (cfg.model.base_width, cfg.model.latent_dim) == (32, 1024)
            assert cfg.train.lr["G"] == 1e-4 and cfg.train.lr["D"] == 4e-4 and cfg.train.lr["E"] == 1e-4


def test_overrides_parse_and_apply(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: hagan, size: 128}\ntrain: {iterations: 5, lr: {G: 1.0e-4}}\n", encoding="utf-8")
    cfg = load_config(path, ["--train.iterations", "10", "--data.batch=4", "--train.lr.D", "2e-4",
                             "--train.compile", "--model.size", "64", "--train.amp", "fp16"])
    assert cfg.model.name == "hagan" and cfg.model.size == 64
    assert cfg.train.iterations == 10 and cfg.data.batch == 4
    assert cfg.train.lr == {"G": 1e-4, "D": 2e-4}
    assert cfg.train.compile is True and cfg.train.amp == "fp16"
    assert parse_overrides(["train.seed=3"]) == [("train.seed", 3)]


@pytest.mark.parametrize("overrides, culprit", [
    (["--train.iterationz", "3"], "train.iterationz"),
    (["--bogus.key", "1"], "bogus"),
    (["--model.size.x", "1"], "model.size.x"),
    (["--train.iterations", "ten"], "train.iterations"),
    (["--train.iterations", "-1"], "train.iterations"),
    (["--train.mode", "fast"], "train.mode"),
    (["--model.size", "100"], "model.size"),
    (["--model.size", "64.0"], "model.size"),
    (["--data.batch", "0"], "data.batch"),
    (["--train.lr.G", "-1e-4"], "train.lr.G"),
    (["--train.compile", "maybe"], "train.compile"),
    (["iterations"], "iterations"),
])
def test_bad_override_names_the_key(overrides, culprit):
    with pytest.raises(MedvolError, match=culprit.replace(".", r"\.")):
        load_config(None, overrides)


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: crfgan}\ndata: {batchsize: 2}\n", encoding="utf-8")
    with pytest.raises(MedvolError, match=r"data\.batchsize"):
        load_config(path)
    with pytest.raises(MedvolError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n", encoding="utf-8")
    with pytest.raises(MedvolError, match="invalid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_save_config_round_trip(tmp_path):
    cfg = load_config(ROOT / "configs" / "crfgan_128.yaml", ["--train.lr.G", "3e-4", "--data.workers", "0"])
    path = save_config(cfg, tmp_path / "config.yaml")
    assert load_config(path) == cfg
    assert yaml.safe_load(path.read_text(encoding="utf-8"))["train"]["lr"]["G"] == 3e-4

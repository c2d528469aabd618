"""The shipped grid ``configs/sweeps/empirical_study.yaml`` is the empirical study's Table 1, row by
row; the extended grid keeps every row and value of it; a VGG row is refused without VGG weights."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import yaml

from medvol.errors import MedvolError
from medvol.sweep.grid import Grid, read_yaml

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = ROOT / "configs" / "sweeps"

#: Table 1 of the empirical study as shared/DESIGN.md records it ("2D models", seed 004): the
#: table's row -> (its values, the loss it is limited to or None). Written from the design notes,
#: independently of the grid file.
TABLE_1 = {
    "loss": (["DCGAN", "LSGAN", "WGAN", "WGAN-GP", "hinge"], None),
    "normalisation of D": (["Batch", "Instance"], None),
    "normalisation of G": (["Batch", "Instance"], None),
    "filters of D": ([16, 32, 64, 128], None),
    "filters of G": ([16, 32, 64, 128], None),
    "init": (["Normal", "Xavier", "Xavier Uniform", "Kaiming"], None),
    "init gain": ([0.01, 0.02, 0.1, 1.0], None),
    "GP weight": ([0, 0.1, 1, 10], "WGAN-GP"),
    "clipping": ([0, 0.01, 0.1], "WGAN"),
    "VGG loss weight": ([0, 1, 10], None),
    "lr": ([4e-5, 5e-5, 1e-4, 2e-4, 1e-3], None),
    "data augmentation": (["TRUE", "FALSE"], None),
}
#: How a row and its values are spelled in medvol's grid.
ROW_KEY = {
    "loss": "model.loss", "normalisation of D": "model.d_norm", "normalisation of G": "model.g_norm",
    "filters of D": "model.d_base_width", "filters of G": "model.g_base_width", "init": "model.init",
    "init gain": "model.init_gain", "GP weight": "model.gp_weight", "clipping": "model.clip",
    "VGG loss weight": "model.vgg_weight", "lr": "train.lr.G,train.lr.D", "data augmentation": "model.augment",
}
WORDS = {"DCGAN": "bce", "LSGAN": "lsgan", "WGAN": "wgan", "WGAN-GP": "wgan-gp", "hinge": "hinge",
         "Batch": "batch", "Instance": "instance", "Normal": "normal", "Xavier": "xavier",
         "Xavier Uniform": "xavier_uniform", "Kaiming": "kaiming", "TRUE": True, "FALSE": False}


def _medvol(value):
    return WORDS[value] if isinstance(value, str) else value


def _grid_file(name):
    return yaml.safe_load((SWEEPS / name).read_text(encoding="utf-8"))


def test_published_grid_is_table_1_row_by_row():
    data = _grid_file("empirical_study.yaml")
    grid, when = data["grid"], data.get("when") or {}
    assert list(grid) == [ROW_KEY[row] for row in TABLE_1]  # no row more, none less, in order
    for row, (values, only) in TABLE_1.items():
        key = ROW_KEY[row]
        got = grid[key]
        assert got == [_medvol(v) for v in values], row
        # 1 == True in Python: the switches must be YAML booleans, the numbers must not be.
        assert [isinstance(g, bool) for g in got] == [isinstance(_medvol(v), bool) for v in values], row
        assert when.get(key) == ({"model.loss": [_medvol(only)]} if only else None), row
    assert set(when) == {ROW_KEY[r] for r, (_, only) in TABLE_1.items() if only}


def test_extended_grid_holds_the_whole_table():
    extended = _grid_file("empirical_study_extended.yaml")
    for row, (values, only) in TABLE_1.items():
        key = ROW_KEY[row]
        assert set(_medvol(v) for v in values) <= set(extended["grid"][key]), row
        if only:
            assert extended["when"][key] == {"model.loss": [_medvol(only)]}
    extras = set(extended["grid"]) - set(ROW_KEY.values())
    assert extras == {"model.diffaugment", "model.g_activation", "model.d_activation", "model.spectral_norm_d",
                      "model.spectral_norm_g", "model.fm_weight", "model.label_smoothing"}


@pytest.fixture
def vgg_file(tmp_path):
    state = {"features.0.weight": torch.randn(4, 3, 3, 3), "features.0.bias": torch.zeros(4)}
    path = tmp_path / "vgg.pt"
    torch.save(state, path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["empirical_study.yaml", "empirical_study_extended.yaml"])
def test_grids_load_and_draw_conditional_rows(name, vgg_file):
    base = read_yaml(ROOT / "configs" / "dcgan_64.yaml", "config")
    base["model"].update(vgg_weights=str(vgg_file[0]), vgg_sha256=vgg_file[1])
    grid = Grid(SWEEPS / name, base)
    draws = grid.draw(60, seed=0)
    assert {d["model.loss"] for d in draws} == {"bce", "lsgan", "wgan", "wgan-gp", "hinge"}
    assert all(("model.clip" in d) == (d["model.loss"] == "wgan") for d in draws)
    assert all(("model.gp_weight" in d) == (d["model.loss"] == "wgan-gp") for d in draws)
    assert {d["model.augment"] for d in draws} == {True, False}
    with pytest.raises(MedvolError, match="too many to enumerate"):
        grid.ordered(10, seed=0)


def test_vgg_row_needs_weights_before_anything_trains(tmp_path, vgg_file):
    base = read_yaml(ROOT / "configs" / "dcgan_64.yaml", "config")
    with pytest.raises(MedvolError, match="model.vgg_weight = 1.0 needs model.vgg_weights") as info:
        Grid(SWEEPS / "empirical_study.yaml", base)
    assert "\n" not in str(info.value)
    base["model"].update(vgg_weights=str(vgg_file[0]), vgg_sha256="0" * 64)
    with pytest.raises(MedvolError, match="does not match"):
        Grid(SWEEPS / "empirical_study.yaml", base)
    base["model"].update(vgg_weights=str(tmp_path / "nowhere.pt"), vgg_sha256=vgg_file[1])
    with pytest.raises(MedvolError, match="does not exist"):
        Grid(SWEEPS / "empirical_study.yaml", base)


def _run(i, loss, score, status="evaluated", **values):
    return {"id": f"run_{i:03d}", "status": status, "values": {"model.loss": loss, **values},
            "score": {"name": "image/fid", "value": score, "direction": "lower"}}


def test_fig4_series_takes_d_filters_from_the_draw_then_the_base():
    from medvol.sweep.report import d_filters_series

    state = {"runs": [_run(0, "bce", 50.0, **{"model.d_base_width": 64, "model.g_base_width": 16}),
                      _run(1, "bce", 40.0, **{"model.d_base_width": 16, "model.g_base_width": 64}),
                      _run(2, "wgan", 30.0, **{"model.base_width": 32}),
                      _run(3, "wgan", 20.0),                       # neither drawn: the base's 128
                      _run(4, "hinge", 10.0, status="failed", **{"model.d_base_width": 16})]}
    series = d_filters_series(state, {"base_width": 8, "d_base_width": 128}, "all")
    assert series == {"bce": [(16, 40.0), (64, 50.0)], "wgan": [(32, 30.0), (128, 20.0)]}
    # The base's tied width when it sets no d_base_width; one filter count: no figure.
    assert d_filters_series({"runs": state["runs"][3:4]}, {"base_width": 8}, "all") == {}


def test_fig4_figure_is_in_the_report(tmp_path):
    pytest.importorskip("matplotlib")
    from medvol.sweep.report import d_filters_plot, markdown, summarize

    runs = [_run(i, loss, 10.0 + i, **{"model.d_base_width": w})
            for i, (loss, w) in enumerate([("bce", 16), ("bce", 128), ("lsgan", 32), ("lsgan", 64)])]
    state = {"runs": runs, "config": "c.yaml", "grid": "g.yaml"}
    from medvol.sweep.report import d_filters_series

    series = d_filters_series(state, {"base_width": 64}, "all")
    assert d_filters_plot(tmp_path / "d_filters.png", series, "image/fid", "lower")
    assert (tmp_path / "d_filters.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = markdown(state, summarize(state, "all"), ["model.loss", "model.d_base_width"], "fid", False, (), True)
    assert "## image/fid against D's filters (the study's Fig. 4)" in text and "(d_filters.png)" in text

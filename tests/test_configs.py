"""Shipped configs (issue 24, item 5): package data addressable by name from any folder, listed by
``medvol configs``, installed from the one copy in ``configs/``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medvol import cli
from medvol.config import describe_config, load_config, resolve_config, shipped_config_names
from medvol.errors import MedvolError

ROOT = Path(__file__).resolve().parents[1]
SOURCE = sorted(p.relative_to(ROOT / "configs").with_suffix("").as_posix()
                for p in (ROOT / "configs").rglob("*.yaml"))


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A cwd outside the checkout holding a decoy configs/demo.yaml that must not be picked by name."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "demo.yaml").write_text("model: {name: hagan, size: 64}\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_source_config_has_a_name():
    assert shipped_config_names() == SOURCE and {"demo", "crfgan_256", "sweeps/tiny"} <= set(SOURCE)


@pytest.mark.parametrize("name", ["demo", "crfgan_256", "sweeps/tiny", "demo.yaml", "configs/dcgan_tiny.yaml"])
def test_names_resolve_from_the_package_not_the_cwd(elsewhere, name):
    path = resolve_config(name)
    stem = name.removeprefix("configs/").removesuffix(".yaml")
    assert path.resolve() == (ROOT / "configs" / f"{stem}.yaml").resolve()


def test_load_by_name_and_an_existing_file_wins(elsewhere):
    assert load_config("demo").model.name == "crfgan"
    # A path to a file that exists is that file, even where a shipped config has the same name.
    assert load_config("configs/demo.yaml").model.name == "hagan"


def test_a_mistyped_name_is_one_line_with_close_names(elsewhere):
    with pytest.raises(MedvolError) as info:
        load_config("crfgan_265")
    message = str(info.value)
    assert "\n" not in message and "does not exist" in message
    assert "did you mean crfgan_256" in message and "medvol configs" in message


def test_train_command_accepts_a_name_in_a_fresh_process(tmp_path):
    # A subprocess started in an empty folder: nothing of the checkout is in its cwd.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = ("from medvol.config import load_config, resolve_config; cfg = load_config('demo_hagan'); "
            "print(cfg.model.name, resolve_config('sweeps/tiny'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    name, grid = out.stdout.split()
    assert name == "hagan" and Path(grid).resolve() == (ROOT / "configs" / "sweeps" / "tiny.yaml").resolve()


def test_setup_installs_every_config_as_package_data(tmp_path):
    # build_py lays out what an install copies (no compile, nothing installed); the built package
    # then finds its configs inside itself, from a cwd with none.
    build = tmp_path / "build"
    env = {**os.environ, "MEDVOL_NO_CUDA": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(build)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    built = build / "medvol" / "configs"
    assert sorted(p.relative_to(built).with_suffix("").as_posix() for p in built.rglob("*.yaml")) == SOURCE
    for name in SOURCE:
        assert (built / f"{name}.yaml").read_bytes() == (ROOT / "configs" / f"{name}.yaml").read_bytes()
    probe = subprocess.run([sys.executable, "-c", "from medvol.config import resolve_config; print(resolve_config('demo'))"],
                           cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(build)}, capture_output=True,
                           text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert Path(probe.stdout.strip()) == built / "demo.yaml"


def test_medvol_configs_lists_name_model_size_description(capsys):
    assert cli.main(["configs", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == SOURCE
    for row in rows:
        data = yaml.safe_load((ROOT / "configs" / f"{row['name']}.yaml").read_text(encoding="utf-8"))
        if row["name"].startswith("sweeps/"):
            assert row["model"] is None and "grid" in data
        elif "recipe" in data:  # a study recipe (configs/studies/, medvol study recipe)
            assert row["model"] is None and row["name"].startswith("studies/") and data["steps"]
        else:
            assert (row["model"], row["size"]) == (data["model"]["name"], data["model"]["size"])
        assert row["description"], row["name"]
    demo = next(r for r in rows if r["name"] == "demo")
    assert demo["description"].startswith("The README demo: a narrow CRF-GAN at 32^3")
    assert cli.main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(SOURCE) and lines[0].split()[:3] == ["crfgan_128", "crfgan", "128"]


def test_description_is_the_first_sentence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("# SPADE at 64x64 (Park et al. 2019). More words.\n# Train: x\nmodel: {}\n", encoding="utf-8")
    assert describe_config(path) == "SPADE at 64x64 (Park et al. 2019)"
    path.write_text("model: {}\n", encoding="utf-8")
    assert describe_config(path) == ""

"""``medvol study recipe``: the shipped recipes end to end on phantom data, resuming, refusals, and
``medvol study recursive`` on a 2D image cache (the recursive note's recipe)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medvol.errors import MedvolError

STUDIES = Path(__file__).resolve().parents[2] / "configs" / "studies"
RECIPES = ["recursive_note", "liver_tumour_thesis", "ct_xray_thesis", "empirical_study", "crfgan_clinical"]


def run_recipe(*args, **kwargs):
    """:func:`medvol.study.recipe.run_recipe` with medvol's parser, as ``medvol study recipe`` calls it."""
    from medvol.commands import build_parser
    from medvol.study.recipe import run_recipe as run

    return run(*args, parser=build_parser(), **kwargs)


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def note(tmp_path_factory):
    """The recursive note's recipe in phantom mode: first its cache step alone, then all of it, then
    the same command again."""

    out = tmp_path_factory.mktemp("recipe") / "note"
    first = run_recipe("recursive_note", out, phantom=True, only=["cache"])
    cache_record = (out / "steps" / "cache.json").stat().st_mtime_ns
    full = run_recipe("recursive_note", out, phantom=True)
    before = _mtimes(out)
    again = run_recipe("recursive_note", out, phantom=True)
    return {"out": out, "first": first, "full": full, "again": again, "before": before,
            "cache_record": cache_record}


def test_the_recursive_note_recipe_runs_every_step_on_phantom_files(note):
    out, summary = note["out"], note["full"]
    assert [s["name"] for s in summary["steps"]] == ["cache", "half", "recursive", "recursive_half"]
    assert all(s["finished"] for s in summary["steps"])
    # The phantom data are PNG files in the recipe's layout, read by medvol preprocess as a user's.
    pngs = sorted((out / "data" / "images").glob("*.png"))
    assert len(pngs) == 64 and len(list((out / "data" / "masks").glob("*.png"))) == 64
    manifest = json.loads((out / "cache" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["dims"] == 2 and len(manifest["volumes"]) == 64
    assert {Path(e["source"]).name for e in manifest["volumes"]} == {p.name for p in pngs}
    half = json.loads((out / "half" / "manifest.json").read_text(encoding="utf-8"))
    assert 0 < len(half["volumes"]) < 64  # --fraction 0.5
    rec = json.loads((out / "recursive" / "summary.json").read_text(encoding="utf-8"))
    assert rec["study"]["real_images"] is True and rec["study"]["real_cache"] == str(out / "cache")
    by_name = {s["name"]: s for s in summary["steps"]}
    assert by_name["cache"]["scores"] == {"entries": 64, "train": manifest["split"]["train"],
                                          "val": manifest["split"]["val"], "dims": 2}
    assert by_name["recursive"]["result"] == "summary.json"
    assert any(k.startswith("gen 1 real 0.5 ") for k in by_name["recursive"]["scores"])
    text = (out / "summary.md").read_text(encoding="utf-8")
    assert "| recursive_half | study recursive | `recursive_half/` | `recursive_half/summary.json` |" in text


def test_a_finished_step_is_not_run_again(note):
    out = note["out"]
    assert note["first"]["steps"][0]["finished"] and not note["first"]["steps"][1]["finished"]
    assert (out / "steps" / "cache.json").stat().st_mtime_ns == note["cache_record"]
    changed = {k for k, v in _mtimes(out).items() if note["before"].get(k) != v}
    assert changed <= {"summary.json", "summary.md", ".medvol-output.json", "recipe.json"}


def test_a_generation_on_an_image_cache_trains_on_the_generated_and_the_kept_real_images(note):
    """Generation 1 at real fraction 0.5: an image cache of the 8 generated images (marked
    synthetic) and half the real train images, whose values are the real cache's."""
    from medvol.data.image_datasets import CachedImageDataset

    out = note["out"] / "recursive"
    gen1 = out / "seed_000" / "real_050" / "gen_001"
    scores = json.loads((gen1 / "scores.json").read_text(encoding="utf-8"))
    real = CachedImageDataset(note["out"] / "cache", split="train", content_only=True)
    kept = round(0.5 * len(real))
    assert scores["training_data"]["synthetic"] == 8 and scores["training_data"]["real"] == kept
    manifest = json.loads((gen1 / "cache" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["dims"] == 2 and all(e["split"] == "train" for e in manifest["volumes"])
    assert sum(e.get("synthetic") is True for e in manifest["volumes"]) == 8
    gen = CachedImageDataset(gen1 / "cache", split="train", allow_synthetic=True)
    originals = {name: real[i]["image"].numpy() for i, name in enumerate(real.names)}
    compared = 0
    for i, entry in enumerate(gen.entries):
        if entry.get("synthetic") is not True:
            name = entry["name"].removeprefix("real_")
            np.testing.assert_allclose(gen[i]["image"].numpy(), originals[name], atol=1e-5)
            compared += 1
    assert compared == kept
    # Generation 0 and 1 scored on images: no phantom slice factors, pooled-pixel scores present.
    assert "factor_w1" not in scores["scores"] and "recall" in scores["scores"]
    assert json.loads((gen1 / "scores.json").read_text(encoding="utf-8"))["training_data"]["synthetic_slices"] == 8


# Each runs training, Inception scoring and studies at tiny sizes (40-110 s each on a loaded 2-core
# CPU): in the default suite, so that every recipe runs end to end on phantom data in CI (issue #26).
@pytest.mark.parametrize("name", RECIPES[1:])
def test_every_other_recipe_runs_end_to_end_on_phantom_data(tmp_path, name):

    summary = run_recipe(name, tmp_path / "out", phantom=True)
    assert all(s["finished"] for s in summary["steps"]), [s["name"] for s in summary["steps"] if not s["finished"]]
    for step in summary["steps"]:
        assert (tmp_path / "out" / step["folder"]).is_dir()
        if step["command"] != "train":
            assert step["result"] is not None, step["name"]
    assert (tmp_path / "out" / "summary.md").is_file()
    if name == "empirical_study":  # the visual Turing test: 2D ACDC-like slices against StyleGAN2's images
        folder = next(s["folder"] for s in summary["steps"] if s["name"] == "turing")
        key = json.loads((tmp_path / "out" / folder / "key.json").read_text(encoding="utf-8"))
        assert key["dims"] == 2 and set(key["sources"]) == {"real", "stylegan2"}
        _check_empirical_segmentation(tmp_path / "out", summary)
    if name == "ct_xray_thesis":
        _check_ct_xray_cyclegans(tmp_path / "out", summary)


def _check_ct_xray_cyclegans(out: Path, summary: dict) -> None:
    """Three CycleGANs (PatchGAN 10 / 22 / 46) between the normal (A) and TB (B) training X-rays;
    each translates every normal X-ray to B, scored with FID against the TB X-rays."""
    import yaml

    by_name = {s["name"]: s for s in summary["steps"]}
    normal = json.loads((out / "xray_normal" / "manifest.json").read_text(encoding="utf-8"))["volumes"]
    tb = json.loads((out / "xray_tb" / "manifest.json").read_text(encoding="utf-8"))["volumes"]
    assert normal and tb and all("/train/normal/" in e["source"] for e in normal)
    assert all("/train/tb/" in e["source"] for e in tb)
    for patch in (10, 22, 46):
        config = yaml.safe_load((out / f"cyclegan_p{patch}" / "config.yaml").read_text(encoding="utf-8"))
        assert config["model"]["name"] == "cyclegan" and config["model"]["options"]["patch"] == patch
        assert Path(config["data"]["source"]) == out / "xray_normal" and Path(config["data"]["cache_b"]) == out / "xray_tb"
        generated = json.loads((out / f"translate_p{patch}" / "generated.json").read_text(encoding="utf-8"))["files"]
        samples = {k: v for k, v in generated.items() if k.endswith(".nii.gz")}
        assert len(samples) == len(normal) == by_name[f"translate_p{patch}"]["scores"]["samples"]
        assert all(v["translation"] == "AB" and Path(v["input"]) == out / "xray_normal" for v in samples.values())
        scores = json.loads((out / f"fid_cyclegan_p{patch}" / "scores.json").read_text(encoding="utf-8"))
        assert Path(scores["real"]["source"]) == out / "xray_tb"
        assert Path(scores["fake"]["source"]) == out / f"translate_p{patch}"
        assert by_name[f"fid_cyclegan_p{patch}"]["scores"]["image/fid (inception)"] > 0


def _check_empirical_segmentation(out: Path, summary: dict) -> None:
    """Table 2's Dice: a 2D U-Net on the ACDC slices, the synthetic slices from a StyleGAN2 trained
    on image + mask."""
    import yaml

    config = yaml.safe_load((out / "stylegan2_masks" / "config.yaml").read_text(encoding="utf-8"))
    assert config["model"]["name"] == "stylegan2" and config["model"]["mask_channels"] == 1
    assert Path(config["data"]["source"]) == out / "acdc"
    result = json.loads((out / "unet_dice" / "results.json").read_text(encoding="utf-8"))
    assert Path(result["config"]["real"]) == out / "acdc" and result["config"]["dims"] == 2
    source = result["sources"]["stylegan2"]
    assert Path(source["spec"]) == out / "stylegan2_masks" and source["dims"] == 2 and source["mask_labels"]
    scores = next(s for s in summary["steps"] if s["name"] == "unet_dice")["scores"]
    assert {"real mean_dice", "real+aug mean_dice"} <= set(scores) and any(
        k.startswith("synthetic") and k.endswith("mean_dice") for k in scores), scores
    assert json.loads((out / "sliver07" / "manifest.json").read_text(encoding="utf-8"))["dims"] == 2


# ------------------------------------------------------------------------------ refusals

MINI = """recipe: 1
name: mini
title: one preprocess step
data: {layout: "images/<name>.png", expects: [images]}
steps:
  - name: cache
    command: preprocess
    args: {images: images, src: "{data}", size: 16, workers: 1}
phantom:
  data: {kind: slices_png, n: 2, size: 16, slices: 2}
"""


def _recipe(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("change, match", [
    (("command: preprocess", "command: preprocessing"), "step 'cache': unknown command 'preprocessing'"),
    (("size: 16, workers: 1}", "size: 16, workers: 1, colours: rgb}"), "step cache: .*unrecognized arguments: --colours"),
    (("    args: {images", "    args: {dst: x, images"), "the runner sets --dst"),
    (('src: "{data}"', 'src: "{step.later}"'), r"\{step.later\} names no earlier step"),
    (("name: cache", "name: data"), "is not a step name"),
    (("kind: slices_png", "kind: jpegs"), "'jpegs' is not one of"),
    (("recipe: 1", "recipe: 2"), "expected 1 \\(the recipe format\\)"),
])
def test_a_broken_recipe_is_one_line_and_exit_2_with_nothing_written(tmp_path, capsys, change, match):
    import re

    from medvol.cli import main

    path = _recipe(tmp_path, MINI.replace(*change))
    assert MINI.replace(*change) != MINI
    assert main(["study", "recipe", str(path), "--phantom", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and re.search(match, err), err
    assert not (tmp_path / "out").exists()


def test_an_unknown_model_is_refused_before_any_step(tmp_path, capsys):
    from medvol.cli import main

    text = MINI + ""
    text = text.replace("phantom:", """  - name: gan
    command: train
    args: {config: dcgan_tiny, model.name: nogan, data.source: "{step.cache}"}
phantom:""")
    path = _recipe(tmp_path, text)
    assert main(["study", "recipe", str(path), "--phantom", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "step gan" in err and "nogan" in err, err
    assert not (tmp_path / "out").exists()


def test_missing_data_is_refused_naming_the_layout(tmp_path, capsys):
    from medvol.cli import main

    path = _recipe(tmp_path, MINI)
    (tmp_path / "mydata").mkdir()
    assert main(["study", "recipe", str(path), "--data", str(tmp_path / "mydata"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "images is missing" in err and "images/<name>.png" in err, err
    assert main(["study", "recipe", "ct_xray_thesis", "--data", str(tmp_path / "mydata"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "xray/train is missing" in capsys.readouterr().err
    assert main(["study", "recipe", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "--data DIR is required" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    (tmp_path / "mydata" / "images").mkdir()
    assert main(["study", "recipe", str(path), "--data", str(tmp_path / "mydata"), "--out",
                 str(tmp_path / "mydata" / "out")]) == 2
    assert "overlaps --data" in capsys.readouterr().err
    assert not (tmp_path / "mydata" / "out").exists()


def test_a_user_folder_and_another_recipe_are_refused_and_overwrite_removes_only_medvols_files(tmp_path, capsys):
    from medvol.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(MedvolError, match="notes.txt"):
        run_recipe(_recipe(tmp_path, MINI), out, phantom=True)
    (out / "notes.txt").unlink()
    run_recipe(_recipe(tmp_path, MINI), out, phantom=True)
    assert (out / "cache" / "manifest.json").is_file()
    other = _recipe(tmp_path, MINI.replace("size: 16, workers", "size: 32, workers"), "other.yaml")
    capsys.readouterr()
    assert main(["study", "recipe", str(other), "--phantom", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "another medvol study recipe" in err, err
    assert json.loads((out / "cache" / "manifest.json").read_text(encoding="utf-8"))["params"]["size"] == 16
    (out / "cache" / "mine.txt").write_text("kept")
    with pytest.raises(MedvolError, match="cache: exists and was not made by medvol"):  # it holds a user file
        run_recipe(other, out, phantom=True, overwrite=True)
    assert (out / "cache" / "mine.txt").read_text(encoding="utf-8") == "kept"
    (out / "cache" / "mine.txt").unlink()
    run_recipe(other, out, phantom=True, overwrite=True)
    assert json.loads((out / "cache" / "manifest.json").read_text(encoding="utf-8"))["params"]["size"] == 32


def test_every_shipped_recipe_loads_and_names_existing_configs():
    from medvol.study.recipe.recipe import load_recipe
    from medvol.commands import build_parser
    from medvol.study.recipe.recipe import step_argv
    from medvol.study.recipe.run import _parser, check_step

    parser = _parser(build_parser())
    for name in RECIPES:
        for phantom in (False, True):
            recipe = load_recipe(name, phantom=phantom)
            folders = {s.name: Path("/o") / s.folder for s in recipe.steps}
            folders[""] = Path("/o")
            for step in recipe.steps:
                check_step(parser, recipe, step_argv(step, data=Path("/d"), here=folders[step.name],
                                                     folders=folders), step)


def test_a_users_data_folder_is_read_in_place_and_recorded(tmp_path):
    from medvol.study.recipe.phantom_data import write_phantom_data

    data = tmp_path / "acdc"
    write_phantom_data("slices_png", data, n=3, size=16, slices=2)
    before = _mtimes(data)
    summary = run_recipe(_recipe(tmp_path, MINI), tmp_path / "out", data=data)
    assert summary["identity"] == {"recipe": "mini", "sha256": summary["identity"]["sha256"], "phantom": False,
                                   "data": str(data.resolve())}
    manifest = json.loads((tmp_path / "out" / "cache" / "manifest.json").read_text(encoding="utf-8"))
    assert len(manifest["volumes"]) == 6 and all(Path(e["source"]).parent.parent == data.resolve()
                                                  for e in manifest["volumes"])
    assert not (tmp_path / "out" / "data").exists() and _mtimes(data) == before
    record = json.loads((tmp_path / "out" / "steps" / "cache.json").read_text(encoding="utf-8"))
    assert record["argv"][:3] == ["preprocess", "--images=images", f"--src={data.resolve()}"]
    assert record["argv"][-1] == f"--dst={(tmp_path / 'out' / 'cache').resolve()}"


def test_ctrl_c_in_a_step_says_the_recipe_continues_and_keeps_finished_steps(tmp_path, monkeypatch, capsys):
    import medvol.commands.train as train_command
    from medvol.cli import main

    text = MINI.replace("phantom:", """  - name: gan
    command: train
    args: {config: dcgan_tiny, data.source: "{step.cache}"}
phantom:""")
    path = _recipe(tmp_path, text)

    def stopped(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_command, "run", stopped)
    assert main(["study", "recipe", str(path), "--phantom", "--out", str(tmp_path / "out")]) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("medvol study: step gan: interrupted (Ctrl-C); run the same medvol study recipe"), err
    assert (tmp_path / "out" / "steps" / "cache.json").is_file()
    assert not (tmp_path / "out" / "steps" / "gan.json").exists()

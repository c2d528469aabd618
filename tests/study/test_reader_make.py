"""``medvol study reader make`` on phantoms: the key stays out of the page, determinism per seed,
both modes, a cache and a checkpoint as sources, and bad input."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from medvol import cli
from medvol.errors import MedvolError
from medvol.study.reader.make import make_study


def _page_data(study: Path) -> dict:
    html = (study / "index.html").read_text(encoding="utf-8")
    match = re.search(r'<script id="study-data" type="application/json">(.*?)</script>', html, re.S)
    return json.loads(match.group(1))


def _png_chunks(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = [], 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        chunks.append(kind)
        at += 12 + length
    return chunks


def test_the_key_never_reaches_the_page(rvf_study, phantom_sources):
    key = json.loads((rvf_study / "key.json").read_text(encoding="utf-8"))
    files = [p for p in rvf_study.rglob("*") if p.is_file() and p.name != "key.json"]
    assert {p.relative_to(rvf_study).as_posix() for p in files} == (
        {"index.html"} | {f"images/{p['pair']}_{side}.png" for p in key["pairs"] for side in ("left", "right")})
    secrets = ["alphaGAN", "betaGAN", "phantom_000"] + [p.name for p in phantom_sources.values()]
    secrets += [str(p) for p in phantom_sources.values()]
    for path in files:
        data = path.read_bytes().lower()
        for secret in secrets:
            assert secret.lower().encode() not in data, f"{secret} in {path}"
    # Images carry pixels only: no text chunks, no names.
    for path in (rvf_study / "images").iterdir():
        assert set(_png_chunks(path)) <= {b"IHDR", b"IDAT", b"IEND"}, path
    # The page's data per pair: the id, the plane and the two image names, nothing else.
    page = _page_data(rvf_study)
    assert [p["pair"] for p in page["pairs"]] == [p["pair"] for p in key["pairs"]]
    for item in page["pairs"]:
        assert set(item) == {"pair", "plane", "left", "right"}
        assert item["left"] == f"images/{item['pair']}_left.png" and item["right"] == f"images/{item['pair']}_right.png"


def test_key_format_and_balance(rvf_study):
    key = json.loads((rvf_study / "key.json").read_text(encoding="utf-8"))
    assert key["mode"] == "real-vs-fake" and len(key["pairs"]) == 6
    sides = [(p["left"], p["right"]) for p in key["pairs"]]
    assert all("real" in pair and set(pair) - {"real"} <= {"alphaGAN", "betaGAN"} for pair in sides)
    assert sum(p["left"] == "real" for p in key["pairs"]) == 3  # left/right balanced
    assert sorted(sum(1 for p in key["pairs"] if "alphaGAN" in (p["left"], p["right"])) for _ in [0]) == [3]
    assert {p["plane"] for p in key["pairs"]} == {"axial", "coronal", "sagittal"}
    for pair in key["pairs"]:
        axis = ("axial", "coronal", "sagittal").index(pair["plane"])
        assert 0.3 <= pair["position"] <= 0.7 and pair["slice"] == round(pair["position"] * (pair["shape"][axis] - 1))
    assert len({p["pair"] for p in key["pairs"]}) == 6


def test_pair_images_are_the_same_slice_of_each_volume(rvf_study, phantom_sources):
    """Rebuild one pair's images from the volumes the key names."""
    from PIL import Image

    from medvol.data.datasets import take_slice
    from medvol.data.io import read_volume
    from medvol.study.reader.images import to_uint8

    key = json.loads((rvf_study / "key.json").read_text(encoding="utf-8"))
    pair = key["pairs"][0]
    for side in ("left", "right"):
        volume = read_volume(pair[f"{side}_volume"])
        expected = to_uint8(np.array(take_slice(volume.array, pair["plane"], pair["slice"])), pair["window"])
        shown = np.asarray(Image.open(rvf_study / "images" / f"{pair['pair']}_{side}.png"))
        np.testing.assert_array_equal(shown, expected)
    assert tuple(pair["window"]) == (-1350.0, 150.0)  # the lung preset of medvol.viewer


def test_same_seed_same_study_other_seed_other_study(tmp_path, phantom_sources):
    fakes = [f"alphaGAN={phantom_sources['fakeA']}"]
    runs = {name: make_study(tmp_path / name, fakes, str(phantom_sources["real"]), pairs=4, seed=seed)
            for name, seed in (("a", 7), ("b", 7), ("c", 8))}

    def files(folder):
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    assert files(runs["a"]) == files(runs["b"])
    key_a, key_c = (json.loads((runs[n] / "key.json").read_text(encoding="utf-8")) for n in ("a", "c"))
    assert [p["pair"] for p in key_a["pairs"]] != [p["pair"] for p in key_c["pairs"]]
    assert not list(tmp_path.glob(".*"))  # no scratch or temporary folder left behind


def test_model_vs_model(mvm_study):
    key = json.loads((mvm_study / "key.json").read_text(encoding="utf-8"))
    assert key["mode"] == "model-vs-model" and "real" not in key["sources"]
    assert all({p["left"], p["right"]} == {"alphaGAN", "betaGAN"} for p in key["pairs"])
    assert {p["plane"] for p in key["pairs"]} == {"axial", "coronal"}
    assert "more realistic" in _page_data(mvm_study)["question"]


def test_real_cache_is_resized_to_the_generated_size(tmp_path, phantom_cache):
    from medvol.data.io import Volume, write_volume
    from medvol.data.phantom import make_phantom

    # "Generated" 16³ cubes at an isotropic spacing, as a model trained on a cache writes them.
    for i in range(2):
        volume, _ = make_phantom(16, seed=(4, i))
        write_volume(Volume(array=volume.array, spacing=(23.75,) * 3), tmp_path / "small" / f"g{i}.nii.gz")
    study = make_study(tmp_path / "s", [f"g={tmp_path / 'small'}"], str(phantom_cache), pairs=2,
                       real_split="val", window="auto")
    key = json.loads((study / "key.json").read_text(encoding="utf-8"))
    assert all(p["shape"] == [16, 16, 16] for p in key["pairs"])
    reals = [p[f"{s}_volume"] for p in key["pairs"] for s in ("left", "right") if p[s] == "real"]
    assert all(v.startswith("cache:") for v in reals)
    from PIL import Image

    assert Image.open(study / "images" / f"{key['pairs'][0]['pair']}_left.png").size == (16, 16)


def test_checkpoint_fake_generates_seeded_volumes(tmp_path, phantom_cache):
    from medvol.train.trainer import train
    from tests.train.conftest import tiny_config

    run = train(tiny_config(tmp_path / "run", source=str(phantom_cache), iterations=2))
    studies = [make_study(tmp_path / f"s{i}", [f"crf={run}"], str(phantom_cache), pairs=2, seed=5,
                          device="cpu") for i in range(2)]
    keys = [json.loads((s / "key.json").read_text(encoding="utf-8")) for s in studies]
    fakes = [p[f"{s}_volume"] for p in keys[0]["pairs"] for s in ("left", "right") if p[s] == "crf"]
    assert sorted(fakes) == [f"{run} seed 5 #0", f"{run} seed 5 #1"]  # one generated volume per pair
    images = [sorted((s / "images").iterdir()) for s in studies]
    assert [p.read_bytes() for p in images[0]] == [p.read_bytes() for p in images[1]]
    assert not list(tmp_path.glob(".s*"))  # generated volumes removed


def test_a_real_volume_of_another_aspect_is_refused(tmp_path, phantom_sources):
    from medvol.data.io import Volume, write_volume

    write_volume(Volume(array=np.zeros((16, 32, 32), np.float32)), tmp_path / "flat" / "flat.nii.gz")
    with pytest.raises(MedvolError, match=r"flat\.nii\.gz: shape \(16, 32, 32\).*medvol preprocess --size 32"):
        make_study(tmp_path / "s", [f"g={phantom_sources['fakeA']}"], str(tmp_path / "flat"), pairs=1)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("kwargs,message", [
    (dict(real=None), "needs --real"),
    (dict(mode="model-vs-model", real=None, fakes=["a=A"]), "at least two --fake"),
    (dict(mode="model-vs-model"), "--real is not used"),
    (dict(fakes=["a=A", "a=B"]), "names must differ"),
    (dict(fakes=["real=A"]), "not be 'real'"),
    (dict(fakes=["noequals"]), "NAME=DIR_OR_CKPT"),
    (dict(fakes=["g=/nowhere/at/all"]), "/nowhere/at/all: no such file"),
    (dict(planes="axial,oblique"), "--planes"),
    (dict(window="brain"), "--window 'brain'"),
    (dict(positions="0.8,0.2"), "--positions"),
    (dict(pairs=0), "--pairs 0"),
])
def test_bad_options(tmp_path, phantom_sources, kwargs, message):
    args = dict(fakes=[f"a={phantom_sources['fakeA']}", f"b={phantom_sources['fakeB']}"],
                real=str(phantom_sources["real"]), pairs=2)
    args.update(kwargs)
    with pytest.raises(MedvolError, match=re.escape(message)):
        make_study(tmp_path / "s", args.pop("fakes"), args.pop("real"), **args)
    assert not (tmp_path / "s").exists()


def test_cli_make_refuses_a_non_empty_out_in_one_line(tmp_path, phantom_sources, capsys):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "keep.txt").write_text("mine", encoding="utf-8")
    argv = ["study", "reader", "make", "--real", str(phantom_sources["real"]), "--fake",
            f"g={phantom_sources['fakeA']}", "--pairs", "2", "--out", str(tmp_path / "s")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists and is not empty" in err[0]
    assert (tmp_path / "s" / "keep.txt").read_text(encoding="utf-8") == "mine"
    assert cli.main(argv + ["--overwrite"]) == 0
    assert (tmp_path / "s" / "key.json").is_file() and not (tmp_path / "s" / "keep.txt").exists()


def test_cli_make_threads_recorded_in_the_key(tmp_path, phantom_sources):
    import torch

    before = torch.get_num_threads()
    try:
        argv = ["study", "reader", "make", "--real", str(phantom_sources["real"]), "--fake",
                f"g={phantom_sources['fakeA']}", "--pairs", "2", "--threads", "1", "--out", str(tmp_path / "s")]
        assert cli.main(argv) == 0
        assert json.loads((tmp_path / "s" / "key.json").read_text(encoding="utf-8"))["threads"] == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)

"""``medvol study reader make`` on phantoms: the key stays out of the page folder, the design
follows the seed, both modes, a cache and a checkpoint as sources, outputs, and bad input.
(Blinding itself is attacked in test_reader_blind.py.)"""

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
    html = (study / "page" / "index.html").read_text(encoding="utf-8")
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
    # STUDY/ holds the page folder, the key beside it, and medvol's output marker; nothing else.
    assert {p.name for p in rvf_study.iterdir()} == {"page", "key.json", ".medvol-output.json"}
    page_dir = rvf_study / "page"
    files = [p for p in page_dir.rglob("*") if p.is_file()]
    assert {p.relative_to(page_dir).as_posix() for p in files} == (
        {"index.html"} | {f"images/{p[f'{side}_image']}" for p in key["pairs"] for side in ("left", "right")})
    secrets = ["alphaGAN", "betaGAN", "phantom_000"] + [p.name for p in phantom_sources.values()]
    secrets += [str(p) for p in phantom_sources.values()]
    for path in files:
        data = path.read_bytes().lower()
        for secret in secrets:
            assert secret.lower().encode() not in data, f"{secret} in {path}"
    # Images carry pixels only: no text chunks, no names.
    for path in (page_dir / "images").iterdir():
        assert set(_png_chunks(path)) <= {b"IHDR", b"IDAT", b"IEND"}, path
    # The page's data per pair: the id, the plane and the two image names, nothing else.
    page = _page_data(rvf_study)
    assert [p["pair"] for p in page["pairs"]] == [p["pair"] for p in key["pairs"]]
    for item in page["pairs"]:
        assert set(item) == {"pair", "plane", "left", "right"}
    for item, pair in zip(page["pairs"], key["pairs"]):
        assert item["left"] == f"images/{pair['left_image']}" and item["right"] == f"images/{pair['right_image']}"


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
        shown = np.asarray(Image.open(rvf_study / "page" / "images" / pair[f"{side}_image"]))
        np.testing.assert_array_equal(shown, expected)
    assert tuple(pair["window"]) == (-1350.0, 150.0)  # the lung preset of medvol.viewer


def _design(key: dict) -> list:
    """What the seed decides, in an order that does not depend on the page: per pair the two
    volumes (first source first), the plane and the slice."""
    return sorted((tuple(sorted((p["left_volume"], p["right_volume"]))), p["plane"], p["slice"]) for p in key["pairs"])


def test_same_seed_same_design_but_fresh_sides_ids_and_names(tmp_path, phantom_sources):
    fakes = [f"alphaGAN={phantom_sources['fakeA']}"]
    runs = {name: make_study(tmp_path / name, fakes, str(phantom_sources["real"]), pairs=4, seed=seed)
            for name, seed in (("a", 7), ("b", 7), ("c", 8))}
    keys = {n: json.loads((runs[n] / "key.json").read_text(encoding="utf-8")) for n in runs}
    assert _design(keys["a"]) == _design(keys["b"]) != _design(keys["c"])
    # The presentation is drawn afresh each time, whatever the seed: ids, image names, study id.
    ids = [{p["pair"] for p in keys[n]["pairs"]} for n in ("a", "b")]
    images = [{p[f"{s}_image"] for p in keys[n]["pairs"] for s in ("left", "right")} for n in ("a", "b")]
    assert not ids[0] & ids[1] and not images[0] & images[1] and keys["a"]["study"] != keys["b"]["study"]
    # The same pixels all the same: the images of a and b are one multiset.
    assert (sorted(p.read_bytes() for p in (runs["a"] / "page" / "images").iterdir())
            == sorted(p.read_bytes() for p in (runs["b"] / "page" / "images").iterdir()))
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

    assert Image.open(study / "page" / "images" / key["pairs"][0]["left_image"]).size == (16, 16)


def test_checkpoint_fake_generates_seeded_volumes(tmp_path, phantom_cache):
    from medvol.train.trainer import train
    from tests.train.conftest import tiny_config

    run = train(tiny_config(tmp_path / "run", source=str(phantom_cache), iterations=2))
    studies = [make_study(tmp_path / f"s{i}", [f"crf={run}"], str(phantom_cache), pairs=2, seed=5,
                          device="cpu") for i in range(2)]
    keys = [json.loads((s / "key.json").read_text(encoding="utf-8")) for s in studies]
    fakes = [p[f"{s}_volume"] for p in keys[0]["pairs"] for s in ("left", "right") if p[s] == "crf"]
    assert sorted(fakes) == [f"{run} seed 5 #0", f"{run} seed 5 #1"]  # one generated volume per pair
    images = [sorted(p.read_bytes() for p in (s / "page" / "images").iterdir()) for s in studies]
    assert images[0] == images[1]
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


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_cli_make_refuses_a_non_empty_out_in_one_line(tmp_path, phantom_sources, capsys):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "keep.txt").write_text("mine", encoding="utf-8")
    argv = ["study", "reader", "make", "--real", str(phantom_sources["real"]), "--fake",
            f"g={phantom_sources['fakeA']}", "--pairs", "2", "--out", str(tmp_path / "s")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds files medvol did not write" in err[0] and "keep.txt" in err[0]
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["keep.txt"]  # refused before any work
    # --overwrite keeps what medvol did not write.
    assert cli.main(argv + ["--overwrite"]) == 0
    assert (tmp_path / "s" / "key.json").is_file() and (tmp_path / "s" / "keep.txt").read_text(encoding="utf-8") == "mine"


def test_overwrite_removes_only_a_study_medvol_made(tmp_path, phantom_sources, capsys):
    """The hostile case: --out X --overwrite where X holds the inputs themselves and a user's file."""
    from medvol.data.phantom import write_phantoms

    out = tmp_path / "X"
    write_phantoms(6, 32, out, seed=2)
    (out / "notes.txt").write_text("my notes", encoding="utf-8")
    before = _tree(out)
    before.pop(".medvol-output.json")  # the phantoms' marker: the study's replaces it (they are kept)
    assert len(before) >= 7
    argv = ["study", "reader", "make", "--real", str(out / "phantom_*.nii.gz"), "--fake",
            f"g={phantom_sources['fakeA']}", "--pairs", "2", "--out", str(out), "--overwrite"]
    assert cli.main(argv) == 0
    first = json.loads((out / "key.json").read_text(encoding="utf-8"))
    after = _tree(out)
    assert {k: after[k] for k in before} == before  # every input and the user's file, byte for byte
    # A second study into X: refused without --overwrite (the first would be lost) ...
    assert cli.main(argv[:-1]) == 2
    assert "holds files medvol did not write" in capsys.readouterr().err
    assert json.loads((out / "key.json").read_text(encoding="utf-8")) == first
    # ... and with it, the first study's files go, nothing else.
    assert cli.main(argv) == 0
    second = json.loads((out / "key.json").read_text(encoding="utf-8"))
    assert second["study"] != first["study"]
    old_images = {p[f"{s}_image"] for p in first["pairs"] for s in ("left", "right")}
    assert not old_images & {p.name for p in (out / "page" / "images").iterdir()}
    final = _tree(out)
    assert {k: final[k] for k in before} == before


def test_overwrite_never_replaces_a_key_or_page_medvol_did_not_write(tmp_path, phantom_sources):
    out = tmp_path / "X"
    (out / "page").mkdir(parents=True)
    (out / "page" / "index.html").write_text("my page", encoding="utf-8")
    with pytest.raises(MedvolError, match=r"page/index\.html was not written by medvol"):
        make_study(out, [f"g={phantom_sources['fakeA']}"], str(phantom_sources["real"]), pairs=2, overwrite=True)
    assert _tree(out) == {"page/index.html": b"my page"}


def test_a_fake_with_fewer_volumes_than_its_pairs_is_refused(tmp_path, phantom_sources):
    """One generated volume for 6 pairs would be shown in every pair: refused, naming the source."""
    from medvol.data.phantom import write_phantoms

    write_phantoms(1, 32, tmp_path / "one", seed=4)
    with pytest.raises(MedvolError, match=r"--fake g=.*one: 1 volume\(s\) for 6 pairs would show a volume in more"):
        make_study(tmp_path / "s", [f"g={tmp_path / 'one'}"], str(phantom_sources["real"]), pairs=6)
    with pytest.raises(MedvolError, match=r"--real .*real_scans: 6 volume\(s\) for 7 pairs"):
        make_study(tmp_path / "s", [f"g={phantom_sources['fakeA']}", f"h={phantom_sources['fakeB']}"],
                   str(phantom_sources["real"]), pairs=7)
    assert not (tmp_path / "s").exists()


def test_synthetic_real_volumes_are_refused_unless_allowed(tmp_path, phantom_sources, capsys):
    from medvol.data.io import read_volume
    from medvol.data.provenance import write_synthetic

    real = tmp_path / "real"
    real.mkdir()
    for path in sorted(phantom_sources["real"].glob("phantom_*.nii.gz"))[:2]:
        (real / path.name).write_bytes(path.read_bytes())
    volume = read_volume(sorted(phantom_sources["fakeA"].glob("phantom_*.nii.gz"))[0])
    write_synthetic(volume, real / "generated_0000.nii.gz", {"model": "crfgan", "seed": 0, "index": 0})
    argv = ["study", "reader", "make", "--real", str(real), "--fake", f"g={phantom_sources['fakeA']}",
            "--pairs", "2", "--out", str(tmp_path / "s")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "generated_0000.nii.gz is marked synthetic" in err[0] and "--allow-synthetic-real" in err[0]
    assert not (tmp_path / "s").exists()
    assert cli.main(argv + ["--allow-synthetic-real"]) == 0
    key = json.loads((tmp_path / "s" / "key.json").read_text(encoding="utf-8"))
    assert key["allow_synthetic_real"] is True and key["synthetic_real"] == [str(real / "generated_0000.nii.gz")]
    # A plain study records that nothing was allowed.
    plain = make_study(tmp_path / "p", [f"g={phantom_sources['fakeA']}"], str(phantom_sources["real"]), pairs=2)
    key = json.loads((plain / "key.json").read_text(encoding="utf-8"))
    assert key["allow_synthetic_real"] is False and key["synthetic_real"] == []


def test_a_synthetic_cache_entry_is_refused_as_real(tmp_path, phantom_sources):
    """A cache built (with --allow-synthetic) from generated volumes is not a real set either."""
    from medvol.data.cache import build_cache
    from medvol.data.io import read_volume
    from medvol.data.preprocess import PreprocessParams
    from medvol.data.provenance import write_synthetic

    src = tmp_path / "src"
    for i, path in enumerate(sorted(phantom_sources["fakeA"].glob("phantom_*.nii.gz"))[:2]):
        write_synthetic(read_volume(path), src / f"gen_{i}.nii.gz", {"model": "crfgan", "seed": 0, "index": i})
    cache = tmp_path / "cache"
    build_cache(src, cache, PreprocessParams(size=32), allow_synthetic=True)
    with pytest.raises(MedvolError, match=r"cache:gen_0 and 1 more is marked synthetic"):
        make_study(tmp_path / "s", [f"g={phantom_sources['fakeA']}"], str(cache), pairs=2)


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

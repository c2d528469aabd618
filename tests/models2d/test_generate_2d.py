"""`medvol generate` for 2D models: NIfTI slices in HU with the training pixel spacing, mask label
files, PNG grids windowed for viewing, --volume stacking, provenance, determinism per seed, the
mask-conditional interface (--masks DIR and phantom masks) and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from medvol import cli
from medvol.config import load_config
from medvol.data.datasets import PhantomVolumeDataset, SliceDataset, take_slice
from medvol.errors import MedvolError
from medvol.models.gan2d import GANSystem2D
from medvol.train import checkpoint as ckpt
from medvol.sample import sampler as generate_module
from medvol.sample.generate import generate, generate_volumes
from medvol.sample.records import PROVENANCE
from medvol.sample.images import (GRID_GAP, centred_origin_2d, phantom_masks, stack_slices, to_grey,
                                 volume_spacing)

sitk = pytest.importorskip("SimpleITK")
nib = pytest.importorskip("nibabel")

WINDOW = (-1024.0, 600.0)


def _config(out, *overrides):
    return load_config(None, [
        "--model.name", "dcgan", "--model.size", "32", "--model.base_width", "4", "--model.latent_dim", "8",
        "--data.source", "phantom", "--data.phantom_n", "2", "--data.workers", "0", "--data.batch", "4",
        "--train.iterations", "2", "--train.mode", "reference", "--train.device", "cpu",
        "--train.ckpt_every", "2", "--train.log_every", "1", "--train.sample_every", "1000",
        "--train.progress", "false", "--train.out", str(out), *overrides])


@pytest.fixture(scope="module")
def run2d(tmp_path_factory):
    from medvol.train.trainer import train

    return train(_config(tmp_path_factory.mktemp("gen2d") / "run"))


@pytest.fixture(scope="module")
def run2d_masks(tmp_path_factory):
    """dcgan trained on image + nodule mask channels (channels = 2)."""
    from medvol.train.trainer import train

    return train(_config(tmp_path_factory.mktemp("gen2d_masks") / "run", "--model.channels", "2",
                         "--data.masks", "true", "--data.phantom_nodules", "true"))


def _read2d(path):
    image = sitk.ReadImage(str(path))
    return image, sitk.GetArrayFromImage(image)


def _latents(system, seed, n):
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([system.sample_latent(1, generator=generator, device="cpu") for _ in range(n)])


def test_slices_are_hu_nifti_with_training_geometry_and_provenance(run2d, tmp_path):
    paths = generate(run2d, 3, tmp_path / "a", seed=5)
    assert [p.name for p in paths] == [f"sample_{i:04d}.nii.gz" for i in range(3)]
    system, cfg, state = ckpt.load_checkpoint(run2d)
    spacing = SliceDataset(PhantomVolumeDataset(32, 2)).spacing  # (row, column) mm of the slices
    assert state["data"]["spacing"] == list(spacing)
    # Each file is G(z_i) of the i-th latent of the seed, mapped back to HU.
    expected = system.generate(_latents(system, 5, 3))[:, 0].numpy()
    expected = WINDOW[0] + (expected + 1) / 2 * (WINDOW[1] - WINDOW[0])
    for i, path in enumerate(paths):
        image, array = _read2d(path)
        assert image.GetDimension() == 2 and array.shape == (32, 32)
        np.testing.assert_allclose(array, expected[i], atol=1e-3)
        assert array.min() >= WINDOW[0] - 0.5 and array.max() <= WINDOW[1] + 0.5
        np.testing.assert_allclose(image.GetSpacing(), spacing[::-1], rtol=1e-6)
        # The centre of the image sits at (0, 0) mm.
        centre = np.asarray(image.GetOrigin()) + (np.asarray(image.GetSize()) - 1) / 2 * np.asarray(image.GetSpacing())
        np.testing.assert_allclose(centre, 0.0, atol=1e-6)
        header = nib.load(str(path)).header
        assert header["descrip"].item().decode().startswith(f"synthetic medvol dcgan@32 seed 5 #{i} ckpt ")
        assert header["aux_file"].item().decode() == "medvol synthetic"
        sidecar = json.loads(path.with_name(f"sample_{i:04d}.json").read_text(encoding="utf-8"))
        assert sidecar["synthetic"] is True and sidecar["index"] == i and sidecar["file"] == path.name
    files = json.loads((tmp_path / "a" / PROVENANCE).read_text(encoding="utf-8"))["files"]
    record = files["sample_0001.nii.gz"]
    ckpt_path = ckpt.resolve_checkpoint(run2d)
    assert record["checkpoint_sha256"] == ckpt.checksum_path(ckpt_path).read_text(encoding="utf-8").split()[0]
    assert (record["iteration"], record["seed"], record["index"], record["model"]) == (2, 5, 1, "dcgan@32")
    assert (record["intensity"], record["plane"], record["kind"]) == ("HU", "axial", "image")
    assert files["grid_0000.png"]["indices"] == [0, 2]
    assert not [p for p in (tmp_path / "a").iterdir() if ".tmp-" in p.name]


def test_png_grid_is_windowed_and_tiled(run2d, tmp_path):
    paths = generate(run2d, 5, tmp_path / "g", seed=1)
    _, grid = _read2d(tmp_path / "g" / "grid_0000.png")
    step = 32 + GRID_GAP
    assert grid.shape == (2 * 32 + GRID_GAP, 3 * 32 + 2 * GRID_GAP) and grid.dtype == np.uint8  # 5 -> 2 x 3
    for i, path in enumerate(paths):
        r, c = divmod(i, 3)
        np.testing.assert_array_equal(grid[r * step: r * step + 32, c * step: c * step + 32],
                                      to_grey(_read2d(path)[1], WINDOW))
    assert (grid[32:32 + GRID_GAP] == 255).all()
    # A narrower display window (soft tissue) saturates more pixels; HU -160 maps to black.
    (soft_image,) = generate(run2d, 1, tmp_path / "w", seed=1, display_window=(-160.0, 240.0))
    _, soft = _read2d(tmp_path / "w" / "grid_0000.png")
    np.testing.assert_array_equal(soft, to_grey(_read2d(soft_image)[1], (-160.0, 240.0)))
    assert (soft == 0).mean() > (grid[:32, :32] == 0).mean()
    assert to_grey(np.array([-2000.0, -1024.0, 600.0, 5000.0]), WINDOW).tolist() == [0, 0, 255, 255]
    assert to_grey(np.array([-212.0]), WINDOW).tolist() == [128]


def test_deterministic_per_seed(run2d, tmp_path):
    a = [_read2d(p)[1] for p in generate(run2d, 3, tmp_path / "a", seed=7)]
    b = [_read2d(p)[1] for p in generate(run2d, 3, tmp_path / "b", seed=7)]
    c = [_read2d(p)[1] for p in generate(run2d, 1, tmp_path / "c", seed=8)]
    prefix = [_read2d(p)[1] for p in generate(run2d, 2, tmp_path / "d", seed=7, batch=1)]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], a[1]) and not np.array_equal(a[0], c[0])
    for x, y in zip(a, prefix):  # n=2 (one at a time) gives the first two of n=3
        np.testing.assert_allclose(x, y, atol=1e-2)


def test_volume_stacks_the_slices_of_the_same_seed(run2d, tmp_path):
    from medvol.data.io import read_volume

    (path,) = generate(run2d, 1, tmp_path / "v", seed=2, volume=True)
    volume = read_volume(path)
    slices = np.stack([_read2d(p)[1] for p in generate(run2d, 32, tmp_path / "s", seed=2)])
    assert volume.array.shape == (32, 32, 32)
    np.testing.assert_allclose(volume.array, slices, atol=1e-2)  # axial plane: slice k is z = k
    meta = ckpt.read_checkpoint(run2d)["data"]
    assert meta["plane"] == "axial" and meta["volume_spacing"] == list(PhantomVolumeDataset(32, 2).spacing)
    np.testing.assert_allclose(volume.spacing, meta["volume_spacing"], rtol=1e-6)
    centre_index = (np.asarray(volume.shape[::-1]) - 1) / 2.0
    centre = np.asarray(volume.origin) + np.asarray(volume.direction).reshape(3, 3) @ (
        centre_index * np.asarray(volume.spacing[::-1]))
    np.testing.assert_allclose(centre, 0.0, atol=1e-4)
    record = json.loads((tmp_path / "v" / PROVENANCE).read_text(encoding="utf-8"))["files"][path.name]
    assert record["kind"] == "stacked volume" and record["slices"] == [0, 31] and record["spacing_normal_measured"]
    _, views = _read2d(tmp_path / "v" / "sample_0000_views.png")
    assert views.shape == (32, 3 * 32 + 2 * GRID_GAP)
    np.testing.assert_array_equal(views[:, 32 + GRID_GAP: 64 + GRID_GAP],
                                  to_grey(take_slice(volume.array, "coronal", 16), WINDOW))
    # generate_volumes on a 2D checkpoint means stacked volumes too.
    (again,) = generate_volumes(run2d, 1, tmp_path / "v2", seed=2)
    np.testing.assert_array_equal(read_volume(again).array, volume.array)


def test_volume_carries_the_recorded_volume_geometry(run2d, tmp_path):
    from medvol.data.io import read_volume

    state = ckpt.read_checkpoint(run2d)
    direction = (-1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0)
    state["data"] = dict(state["data"], volume_spacing=[3.0, 2.0, 1.0], direction=list(direction), plane="coronal")
    path = tmp_path / "ckpt" / ckpt.checkpoint_name(state["iteration"])
    path.parent.mkdir()
    ckpt.save_checkpoint(path, {k: v for k, v in state.items() if k not in ("path", "format", "version")})
    (written,) = generate(path, 1, tmp_path / "v", seed=2, volume=True)
    volume = read_volume(written)
    np.testing.assert_allclose(volume.spacing, (3.0, 2.0, 1.0), rtol=1e-6)
    np.testing.assert_allclose(volume.direction, direction, atol=1e-6)
    centre = np.asarray(volume.origin) + np.asarray(direction).reshape(3, 3) @ (
        (np.asarray(volume.shape[::-1]) - 1) / 2.0 * np.asarray(volume.spacing[::-1]))
    np.testing.assert_allclose(centre, 0.0, atol=1e-4)
    # Coronal: image j of the seed is the coronal slice y = j.
    first = _read2d(generate(path, 2, tmp_path / "s", seed=2)[1])[1]
    np.testing.assert_allclose(take_slice(volume.array, "coronal", 1), first, atol=1e-2)


def test_training_records_the_slice_geometry(ramp):
    from medvol.train.data import data_meta

    cfg = load_config(None, ["--model.name", "dcgan", "--model.size", "32"])
    slices = SliceDataset(ramp(64), plane="coronal", size=32)  # volumes spacing (1, 2, 3), pooled x2
    meta = data_meta(slices, cfg.data)
    assert meta["spacing"] == [2.0, 6.0] and meta["volume_spacing"] == [2.0, 4.0, 6.0]
    assert meta["plane"] == "coronal" and meta["window"] == [-1024.0, 600.0]


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_stacking_inverts_the_slicing(plane):
    volume = np.random.default_rng(0).random((5, 5, 5))
    slices = np.stack([take_slice(volume, plane, k) for k in range(5)])
    np.testing.assert_array_equal(stack_slices(slices, plane), volume)


def test_volume_spacing_of_older_checkpoints():
    assert volume_spacing({"volume_spacing": [3.0, 2.0, 1.0], "spacing": [2.0, 1.0]}, "axial") == ((3.0, 2.0, 1.0), True)
    # Only the (row, column) spacing known: the normal gets their mean, placed by the plane.
    assert volume_spacing({"spacing": [2.0, 1.0]}, "axial") == ((1.5, 2.0, 1.0), False)
    assert volume_spacing({"spacing": [2.0, 1.0]}, "coronal") == ((2.0, 1.5, 1.0), False)
    assert volume_spacing({"spacing": [2.0, 1.0]}, "sagittal") == ((2.0, 1.0, 1.5), False)
    assert centred_origin_2d((3, 5), (2.0, 1.0)) == (-2.0, -2.0)


def test_mask_channel_becomes_label_files(run2d_masks, tmp_path):
    from medvol.data.discover import discover
    from medvol.data.io import read_volume

    (path,) = generate(run2d_masks, 1, tmp_path / "m", seed=3)
    system, _, _ = ckpt.load_checkpoint(run2d_masks)
    x = system.generate(_latents(system, 3, 1))[0]
    _, mask = _read2d(tmp_path / "m" / "sample_0000_mask.nii.gz")
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, (x[1] > 0).numpy().astype(np.uint8))
    _, grid = _read2d(tmp_path / "m" / "grid_0000.png")
    assert grid.shape == (32, 64)  # image | mask
    np.testing.assert_array_equal(grid[:, 32:], mask * 255)
    files = json.loads((tmp_path / "m" / PROVENANCE).read_text(encoding="utf-8"))["files"]
    assert files["sample_0000_mask.nii.gz"]["kind"] == "mask"
    (vol,) = generate(run2d_masks, 1, tmp_path / "mv", seed=3, volume=True)
    mask_volume = read_volume(tmp_path / "mv" / "sample_0000_mask.nii.gz").array
    assert set(np.unique(mask_volume)) <= {0.0, 1.0}
    assert discover(tmp_path / "mv") == [vol]  # medvol evaluate --fake DIR sees the image only


class TinyConditional(GANSystem2D):
    """A small mask-conditional system (SPADE's interface): G sees the mask and a noise map."""

    name = "tinycond"
    conditional = True

    def __init__(self, size: int = 32):
        super().__init__(size, base_width=4, latent_dim=8, num_classes=0, channels=2)
        self.G = nn.Sequential(nn.Conv2d(1 + 8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1), nn.Tanh())
        self.D = nn.Sequential(nn.Conv2d(2, 4, 4, 2, 1), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(4 * 16 * 16, 1))
        torch.manual_seed(0)
        for module in self.G:
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.5)

    def generate(self, z, labels=None, tile_depth=None, masks=None):
        if masks is None:
            raise MedvolError("masks: tinycond draws images of given masks")
        with self._eval():
            noise = z[:, :, None, None].expand(-1, -1, self.size, self.size)
            image = self.G(torch.cat([masks, noise], dim=1))
            return torch.cat([image, masks], dim=1)


@pytest.fixture
def conditional(run2d_masks, monkeypatch):
    """``medvol generate`` sees TinyConditional with the masked run's config and checkpoint."""
    _, cfg, state = ckpt.load_checkpoint(run2d_masks)
    system = TinyConditional()
    monkeypatch.setattr(generate_module, "load_checkpoint", lambda path: (system, cfg, state))
    return system, cfg


def _write_masks(folder):
    folder.mkdir()
    square = np.zeros((64, 64), dtype=np.uint8)
    square[16:48, 8:40] = 255
    sitk.WriteImage(sitk.GetImageFromArray(square), str(folder / "a.png"))  # 64^2: resized to 32^2
    disc = (np.hypot(*np.mgrid[-16:16, -16:16]) < 9).astype(np.float32) * 3
    sitk.WriteImage(sitk.GetImageFromArray(disc), str(folder / "b.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((1, 32, 32), np.int16)), str(folder / "c.nii"))
    (folder / "notes.txt").write_text("not a mask", encoding="utf-8")
    return [square[::2, ::2] > 0, disc > 0, np.zeros((32, 32), bool)]


def test_conditional_model_draws_one_image_per_mask_file(conditional, run2d_masks, tmp_path):
    system, _ = conditional
    expected = _write_masks(tmp_path / "masks")
    paths = generate(run2d_masks, None, tmp_path / "o", seed=4, masks=tmp_path / "masks")
    assert len(paths) == 3
    images = []
    for i, want in enumerate(expected):
        np.testing.assert_array_equal(_read2d(tmp_path / "o" / f"sample_{i:04d}_mask.nii.gz")[1], want)
        images.append(_read2d(paths[i])[1])
    # The image is the network's answer to that mask and that latent.
    given = torch.from_numpy(np.stack(expected).astype(np.float32))[:, None] * 2 - 1
    direct = system.generate(_latents(system, 4, 3), masks=given)[:, 0].numpy()
    np.testing.assert_allclose(np.stack(images), WINDOW[0] + (direct + 1) / 2 * 1624.0, atol=1e-2)
    # Another mask with the same latent gives another image.
    empty = system.generate(_latents(system, 4, 3), masks=-torch.ones_like(given))[:, 0].numpy()
    assert not np.allclose(direct[:2], empty[:2], atol=1e-2)
    files = json.loads((tmp_path / "o" / PROVENANCE).read_text(encoding="utf-8"))["files"]
    assert files["sample_0001.nii.gz"]["mask_source"].endswith("b.nii.gz")
    again = generate(run2d_masks, 2, tmp_path / "o2", seed=4, masks=tmp_path / "masks")
    for a, b in zip(paths, again):
        np.testing.assert_array_equal(_read2d(a)[1], _read2d(b)[1])


def test_conditional_model_without_masks_uses_training_phantom_slices(conditional, run2d_masks, tmp_path):
    from medvol.data.io import read_volume

    _, cfg = conditional
    generate(run2d_masks, 3, tmp_path / "p", seed=0)
    slices = SliceDataset(PhantomVolumeDataset(32, 2, nodules=True), content_only=True, masks=True)
    files = json.loads((tmp_path / "p" / PROVENANCE).read_text(encoding="utf-8"))["files"]
    for i in range(3):
        want = (slices[i]["image"][1] > 0).numpy().astype(np.uint8)
        np.testing.assert_array_equal(_read2d(tmp_path / "p" / f"sample_{i:04d}_mask.nii.gz")[1], want)
        v, k, _ = slices.index[i]  # the training slices, blank ones skipped
        assert files[f"sample_{i:04d}.nii.gz"]["mask_source"] == f"phantom seed 0 #{v} axial {k}"
    # Volume mode: every slice of phantom 1 (the one with nodules) in turn, so the stacked
    # mask volume is that phantom's mask.
    generate(run2d_masks, 2, tmp_path / "pv", seed=0, volume=True)
    _, phantom_mask = PhantomVolumeDataset(32, 2, nodules=True).volume_and_mask(1)
    assert phantom_mask.any()
    np.testing.assert_array_equal(read_volume(tmp_path / "pv" / "sample_0001_mask.nii.gz").array, phantom_mask)
    # data.slice_class 1 with mask labels: only nodule slices (of phantom 1) give masks.
    cfg.data.slice_labels, cfg.data.slice_class = "mask", 1
    drawn = phantom_masks(cfg, volume=False)
    for _ in range(3):
        mask, source = next(drawn)
        assert mask.any() and source.startswith("phantom seed 0 #1 axial ")


def test_conditional_errors_are_one_line(conditional, run2d_masks, tmp_path, capsys):
    _, cfg = conditional
    _write_masks(tmp_path / "masks")
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
    (tmp_path / "wide").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((32, 40), np.uint8)), str(tmp_path / "wide" / "w.png"))
    cases = [(["--masks", str(tmp_path / "masks"), "--n", "4"], "3 mask file(s), 4 masks needed"),
             (["--masks", str(tmp_path / "masks"), "--volume"], "32 masks (1 volume(s) of 32 slices) needed"),
             (["--masks", str(tmp_path / "empty")], "no mask files"),
             (["--masks", str(tmp_path / "nope")], "no such folder"),
             (["--masks", str(tmp_path / "bad")], "x.png: cannot read it"),
             (["--masks", str(tmp_path / "wide")], "32x40 is not square")]
    for argv, message in cases:
        assert cli.main(["generate", "--ckpt", str(run2d_masks), "--out", str(tmp_path / "o"), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
    cfg.data.source = str(tmp_path)  # trained on a cache: no masks to take
    with pytest.raises(MedvolError, match="has no masks to draw from; give --masks DIR"):
        generate(run2d_masks, 1, tmp_path / "o")


def test_errors_are_one_line(run2d, tmp_path, capsys):
    masks = tmp_path / "masks"
    _write_masks(masks)
    cases = [(["--tile-depth", "2"], "--tile-depth: dcgan generates 2D images"),
             (["--masks", str(masks)], "--masks: dcgan is not mask-conditional"),
             (["--label", "1"], "--label 1: dcgan is not class-conditional"),
             (["--n", "0"], "--n: expected at least 1"),
             (["--display-window", "600,-1024"], "LOW < HIGH"),
             (["--display-window", "soft"], "expected LOW,HIGH"),
             (["--batch", "0"], "--batch: expected a positive integer")]
    for argv, message in cases:
        assert cli.main(["generate", "--ckpt", str(run2d), "--out", str(tmp_path / "o"), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
    system, _, _ = ckpt.load_checkpoint(run2d)
    with pytest.raises(MedvolError, match="not mask-conditional"):
        system.generate(system.sample_latent(1), masks=torch.ones(1, 1, 32, 32))
    assert cli.main(["generate", "--ckpt", str(run2d), "--out", str(tmp_path / "ok"), "--n", "2"]) == 0
    out = capsys.readouterr().out
    assert "sample_0001.nii.gz" in out and "2 file(s)" in out


def test_3d_model_refuses_2d_options(monkeypatch, tmp_path):
    from medvol.models import build

    cfg = load_config(None, ["--model.name", "crfgan", "--model.size", "32"])
    system = build("crfgan", 32, base_width=2, latent_dim=8)
    monkeypatch.setattr(generate_module, "load_checkpoint", lambda path: (system, cfg, {"path": "x.pt"}))
    for kwargs, flag in (({"volume": True}, "--volume"), ({"masks": tmp_path}, "--masks"),
                         ({"display_window": (0.0, 1.0)}, "--display-window")):
        with pytest.raises(MedvolError, match=f"{flag}: only for 2D models; crfgan generates volumes"):
            generate("x.pt", 1, tmp_path / "o", device="cpu", **kwargs)


def test_mask_channel_threshold_is_the_midpoint(run2d_masks, tmp_path, monkeypatch):
    """Channel 1 in [-1, 1] becomes 0 / 1 at 0, the midpoint of the -1 / 1 training encoding."""
    system, cfg, state = ckpt.load_checkpoint(run2d_masks)
    ramp = torch.linspace(-1, 1, 32 * 32).reshape(1, 1, 32, 32)
    monkeypatch.setattr(system, "generate", lambda z, **_: torch.cat([torch.zeros_like(ramp), ramp], 1))
    monkeypatch.setattr(generate_module, "load_checkpoint", lambda path: (system, cfg, state))
    generate(run2d_masks, 1, tmp_path / "t")
    mask = _read2d(tmp_path / "t" / "sample_0000_mask.nii.gz")[1]
    np.testing.assert_array_equal(mask, (ramp[0, 0] > 0).numpy().astype(np.uint8))


def test_2d_generate_refuses_another_job_and_overwrites_only_its_own_files(run2d, tmp_path):
    """Issue 22: slices, sidecars, grids and generated.json of another call are not replaced
    without --overwrite; a user's file is never replaced."""
    out = tmp_path / "g"
    generate(run2d, 2, out, seed=1)
    before = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
    assert "grid_0000.png" in before and PROVENANCE in before
    generate(run2d, 2, out, seed=1)  # the identical command continues
    with pytest.raises(MedvolError, match="another medvol generate"):
        generate(run2d, 1, out, seed=2)
    with pytest.raises(MedvolError, match="another medvol generate"):
        generate(run2d, 2, out, seed=1, display_window=(-160.0, 240.0))
    assert {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}.keys() == before.keys()
    assert (out / "sample_0001.nii.gz").read_bytes() == before["sample_0001.nii.gz"]
    (out / "grid_0001.png").write_bytes(b"mine")
    generate(run2d, 1, out, seed=2, overwrite=True)
    assert not (out / "sample_0001.nii.gz").exists() and (out / "grid_0001.png").read_bytes() == b"mine"
    listing = json.loads((out / PROVENANCE).read_text(encoding="utf-8"))
    assert sorted(listing["files"]) == ["grid_0000.png", "sample_0000.nii.gz"]
    # 65 samples need grid_0001.png, which is the user's: refused before generating anything.
    with pytest.raises(MedvolError, match="grid_0001.png: exists and was not written by medvol"):
        generate(run2d, 65, out, seed=3, overwrite=True)
    assert (out / "grid_0001.png").read_bytes() == b"mine" and (out / "sample_0000.nii.gz").exists()

"""Every kind of sample set is read through one protocol (medvol.eval.sources.Source), and
``probe`` tells from ``--fake`` whether volumes or images are scored."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medvol.config import load_config
from medvol.data.datasets import PhantomVolumeDataset, SliceDataset
from medvol.eval.sources import (GeneratedImages, ImageFiles, RealSlices, Source, VolumeSource, image_files,
                                 probe)
from medvol.models import build

sitk = pytest.importorskip("SimpleITK")
pytest.importorskip("PIL")


def _check(source, dims: int, size: int, role: str) -> None:
    assert isinstance(source, Source)
    assert source.dims == dims and source.size == size and source.role == role
    items = list(source)
    assert [name for name, _ in items] == list(source.names) and len(items) == len(source)
    for _, array in items:
        assert array.dtype == np.float32 and array.shape == (size,) * dims
        assert array.min() >= -1.0 and array.max() <= 1.0


def test_every_source_keeps_the_protocol(tmp_path):
    from PIL import Image

    _check(VolumeSource("phantom:1", "real", size=32, modality=None, window=None, split="all", n=2, seed=0,
                        device="cpu"), 3, 32, "real")
    folder = tmp_path / "png"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(folder / f"s{i}.png")
    files = image_files(str(folder))
    _check(ImageFiles(str(folder), files, None, None, role="real"), 2, 16, "real")
    _check(RealSlices(SliceDataset(PhantomVolumeDataset(32, 1)), 3, seed=0, info={"source": "test"}), 2, 32, "real")
    torch.manual_seed(0)
    system = build("dcgan", 32, base_width=4, latent_dim=8)
    (tmp_path / "ckpt.pt").write_bytes(b"stand-in")
    cfg = load_config(None, ["--model.name", "dcgan", "--model.size", "32"])
    loaded = (system, cfg, {"path": str(tmp_path / "ckpt.pt"), "iteration": 0})
    _check(GeneratedImages(loaded, 3, seed=1, batch=2, device="cpu"), 2, 32, "fake")


def test_probe_tells_volumes_from_images(tmp_path):
    from medvol.data.io import Volume, write_volume

    volumes = tmp_path / "vol"
    volumes.mkdir()
    write_volume(Volume(array=np.zeros((8, 8, 8), np.float32)), volumes / "a.nii.gz")
    assert probe(str(volumes), "cpu") == (3, None, None)
    images = tmp_path / "img"
    images.mkdir()
    image = sitk.GetImageFromArray(np.zeros((8, 8), np.float32))
    sitk.WriteImage(image, str(images / "a.nii.gz"))
    assert probe(str(images), "cpu") == (2, None, [images / "a.nii.gz"])


def test_a_medvol_image_stored_in_unit_range_is_not_read_through_an_hu_window(tmp_path):
    """A translation (or any 2D image) generated from an image cache without HU window is written
    in [-1, 1] with ``"window": null`` in its sidecar: read as stored, not mapped as HU (which
    would flatten it to one grey level); a file without that sidecar keeps the HU window."""
    import json

    values = np.linspace(-0.9, 0.9, 64, dtype=np.float32).reshape(8, 8)
    for name, meta in (("unit", {"generated_by": "medvol", "window": None}),
                       ("hu", {"generated_by": "medvol", "window": [-1024, 600]}), ("bare", None)):
        sitk.WriteImage(sitk.GetImageFromArray(values), str(tmp_path / f"{name}.nii.gz"))
        if meta is not None:
            (tmp_path / f"{name}.json").write_text(json.dumps(meta))
    files = [tmp_path / f"{name}.nii.gz" for name in ("unit", "hu", "bare")]
    source = ImageFiles(str(tmp_path), files, None, (-1024.0, 600.0))
    images = dict(source)
    np.testing.assert_allclose(images["unit.nii.gz"], values, atol=1e-6)
    hu = (np.clip(values, -1024, 600) + 1024) / 1624 * 2 - 1  # an HU window: one grey level here
    for name in ("hu.nii.gz", "bare.nii.gz"):
        np.testing.assert_allclose(images[name], hu, atol=1e-6)
    assert "1 medvol NIfTI" in source.info["intensity"]

"""Phantom stand-ins for a user's copy of a study's data, in the study's folder layout.

A recipe's phantom mode writes these files and then runs the recipe on them exactly as on real
data, so that ``medvol preprocess`` reads PNG files, NIfTI volumes, LiTS names and Decathlon
datalists as it would a user's. Every image comes from the phantom population
(:func:`medvol.data.phantom.render_phantom`, seed ``(seed, i)`` for volume i), so the files vary
like a population. The layouts (``kind``):

- ``slices_png``: ``images/<v>_z<k>.png`` with ``masks/<v>_z<k>.png`` (ACDC-like short-axis
  slices with their masks): axial slices of each phantom (lung window, 8-bit), lungs labelled 1;
- ``xray_classes``: ``train/{normal,tb}/*.png`` and ``test/{normal,tb}/*.png`` (a chest X-ray
  classification set): the mean attenuation through each phantom along y (a coronal projection),
  filed ``tb`` when a lung is small (the phantom's ``asymmetry`` factor), else ``normal``;
- ``lits``: ``volume-<i>.nii.gz`` with ``segmentation-<i>.nii.gz`` (LiTS): phantoms with nodules,
  lungs labelled 1 ("liver") and nodules 2 ("tumour");
- ``volumes``: ``<name>.nii.gz`` with ``<name>_mask.nii.gz`` (LUNA16- or SLiver07-like CT);
- ``decathlon``: ``dataset.json`` with ``imagesTr/`` and ``labelsTr/`` (a MONAI Decathlon task).

These are test data for the recipe's machinery, not a model of the studies' anatomy: a
short-axis cardiac MR slice is not a chest CT slice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medvol.errors import MedvolError

KINDS = ("slices_png", "xray_classes", "lits", "volumes", "decathlon")
#: The lung window (HU) the PNG slices are mapped to 0..255 with.
PNG_WINDOW = (-1000.0, 400.0)


def _png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    from medvol.utils import checked_write

    with checked_write(path, "phantom image") as tmp:
        Image.fromarray(np.asarray(array, dtype=np.uint8)).save(tmp, format="PNG")


def _to_8bit(hu: np.ndarray, window=PNG_WINDOW) -> np.ndarray:
    low, high = window
    return np.round(np.clip((hu - low) / (high - low), 0.0, 1.0) * 255.0).astype(np.uint8)


def _phantom(size: int, seed: int, i: int, nodules: bool = False):
    from medvol.data.phantom import phantom_labels, render_phantom

    phantom = render_phantom(size, (seed, i), nodules)
    return phantom, phantom_labels(phantom)


def write_phantom_data(kind: str, folder: str | Path, *, n: int, size: int, seed: int = 0,
                       slices: int = 4) -> dict[str, Any]:
    """Write ``n`` phantoms' worth of files of layout ``kind`` (module docstring) into ``folder``.

    Args:
        kind: one of :data:`KINDS`.
        folder: the data folder (created; its files are written atomically).
        n: phantoms drawn.
        size: their side S (16..1024).
        seed: the population seed.
        slices: ``slices_png``: axial slices kept per phantom (evenly spaced through its central
            half).

    Returns:
        ``{"kind", "n", "size", "seed", "files"}``: what was written (``files`` counts image files).
    """
    if kind not in KINDS:
        raise MedvolError(f"phantom data {kind!r}: choose one of {', '.join(KINDS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise MedvolError(f"phantom data: n {n!r}: expected an integer >= 2")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = 0
    if kind == "slices_png":
        for i in range(n):
            phantom, labels = _phantom(size, seed, i)
            for k in np.linspace(size * 0.3, size * 0.7, slices).round().astype(int):
                name = f"p{i:03d}_z{k:03d}.png"
                _png(_to_8bit(phantom.hu[k]), folder / "images" / name)
                _png(labels[k], folder / "masks" / name)
                files += 1
    elif kind == "xray_classes":
        n_test = max(2, n // 4)
        for i in range(n):
            phantom, _ = _phantom(size, seed, i)
            # Attenuation relative to water, averaged along y: bright bone, dark lungs, as a radiograph.
            mu = np.clip(phantom.hu + 1000.0, 0.0, None).mean(axis=1)[::-1]
            label = "normal" if phantom.factors.get("asymmetry", "none") == "none" else "tb"
            split = "test" if i < n_test else "train"
            _png(_to_8bit(mu, (0.0, float(mu.max()) or 1.0)), folder / split / label / f"cxr_{i:03d}.png")
            files += 1
    else:
        from medvol.data.io import Volume, write_volume

        records = []
        for i in range(n):
            phantom, labels = _phantom(size, seed, i, nodules=kind == "lits")
            volume = Volume(array=phantom.hu, spacing=phantom.spacing, origin=phantom.origin)
            mask = Volume(array=labels.astype(np.float32), spacing=phantom.spacing, origin=phantom.origin)
            if kind == "lits":
                image, seg = folder / f"volume-{i}.nii.gz", folder / f"segmentation-{i}.nii.gz"
            elif kind == "volumes":
                image, seg = folder / f"case_{i:03d}.nii.gz", folder / f"case_{i:03d}_mask.nii.gz"
            else:
                image, seg = folder / "imagesTr" / f"case_{i:03d}.nii.gz", folder / "labelsTr" / f"case_{i:03d}.nii.gz"
                image.parent.mkdir(parents=True, exist_ok=True)
                seg.parent.mkdir(parents=True, exist_ok=True)
                records.append({"image": f"./imagesTr/{image.name}", "label": f"./labelsTr/{seg.name}"})
            write_volume(volume, image, dtype=np.int16)
            write_volume(mask, seg, dtype=np.uint8)
            files += 1
        if kind == "decathlon":
            from medvol.utils import checked_write

            body = {"name": "phantom", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ"},
                    "numTraining": len(records), "training": records}
            with checked_write(folder / "dataset.json", "datalist") as tmp:
                tmp.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
    return {"kind": kind, "n": n, "size": size, "seed": seed, "files": files}

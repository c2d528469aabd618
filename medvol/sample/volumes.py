"""Volumes of a 3D model written as NIfTI with physical geometry (``medvol generate``).

Volume ``i`` of a call with ``seed`` is sample ``i`` of :meth:`medvol.sample.sampler.Sampler.stream`
(the ``i``-th latent of a CPU generator seeded with ``seed``), so output is deterministic per seed
(and ``n=3`` gives the first three of ``n=5``) whatever the device.

What a generated file holds (docs/models.md, "Generated volumes on disk"):

- Intensities: CT is mapped back to Hounsfield units with the inverse of the training window.
  MR stays in the network's [-1, 1]: each training volume was scaled by its own percentiles, so
  there is no one scanner scale to map back to.
- Geometry: the training data's voxel spacing and direction (the checkpoint records them). The
  origin puts the centre of the volume at the physical point (0, 0, 0) mm: a generated volume
  belongs to no scanner position, and a centred one lies at the same place whatever its spacing
  and direction, so samples of one or of different runs overlay each other.
- Provenance: every file is marked synthetic (:mod:`medvol.data.provenance`): the NIfTI
  ``descrip`` starts with ``synthetic`` and names model, seed, index and checkpoint, and a sidecar
  ``sample_0000.json`` beside it, like ``generated.json`` in the output folder, records the
  checkpoint (path, SHA-256, iteration), the model, seed, index, label, mode, intensity unit,
  geometry, the training data's share of synthetic volumes, medvol version and date.
- Paired image + mask models (``model.mask_channels`` K > 0): the image is G's channel 0 alone;
  beside it ``sample_0000_mask.nii.gz`` holds the uint8 label map decoded from channels 1..K
  (:func:`medvol.data.paired.labels_from_channels`), same geometry, marked synthetic the same way;
  ``mask_labels`` (the class names) goes into both sidecars and ``generated.json``.
- ``preview.png``: the central planes of the first volumes, captioned (:func:`preview_files`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from medvol.data.paired import labels_from_channels
from medvol.errors import MedvolError
from medvol.sample.records import (centred_origin, checkpoint_facts, generate_identity, intensity_facts,
                                   output_geometry, read_provenance, record_mask_labels, sample_names,
                                   write_provenance)
from medvol.sample.sampler import Sampler

log = logging.getLogger("medvol.generate")


def write_volumes(sampler: Sampler, n: int, out: str | os.PathLike, seed: int = 0, label: int | None = None,
                  tile_depth: int | None = None, overwrite: bool = False) -> list[Path]:
    """Generate ``n`` volumes of a 3D ``sampler`` and write them as ``out/sample_0000.nii.gz``, ….

    Args and errors as :func:`medvol.sample.generate.generate_volumes`.
    """
    from medvol.outputs import owned_output

    sampler.check_label(label)
    cfg, state, mode = sampler.cfg, sampler.state, sampler.mode
    meta = sampler.meta
    spacing, direction = output_geometry(meta)
    window = meta.get("window")
    size = cfg.model.size
    origin = centred_origin((size, size, size), spacing, direction)
    mask_labels = sampler.mask_labels()
    common = {
        **checkpoint_facts(state, cfg, seed, mode), "tile_depth": tile_depth, **intensity_facts(window),
        "spacing": list(spacing), "origin": list(origin), "direction": list(direction),
        "training_data": {k: meta[k] for k in ("source", "volumes", "synthetic_volumes") if k in meta},
    }
    if mask_labels is not None:
        common["mask_labels"] = mask_labels
    identity = generate_identity(state, n, seed, mode, label=label, tile_depth=tile_depth, dims=3)
    planned = sample_names(n, mask_labels is not None) + ["preview.png"]  # checked before anything is generated
    with owned_output(out, "generate", identity, overwrite=overwrite, inputs=[sampler.path],
                      outputs=planned) as owned:
        return _write_volumes(owned, sampler, n, seed, label, tile_depth, window, mask_labels, common,
                              spacing, origin, direction)


def _write_volumes(owned, sampler, n, seed, label, tile_depth, window, mask_labels, common,
                   spacing, origin, direction) -> list[Path]:
    """Generate and write the volumes of :func:`write_volumes` into the claimed folder."""
    from medvol.data.io import Volume
    from medvol.data.preprocess import to_intensity
    from medvol.data.provenance import sidecar_path, write_synthetic

    out = owned.folder
    provenance = read_provenance(out)
    if mask_labels is not None:
        record_mask_labels(provenance, mask_labels, out)
    paths = []
    for sample in sampler.stream(n, seed, label=label, tile_depth=tile_depth):
        i, x = sample.index, sample.array
        array = to_intensity(x[0], tuple(window)) if window is not None else x[0]
        path = out / f"sample_{i:04d}.nii.gz"
        volume = Volume(array=array.astype("float32"), spacing=spacing, origin=origin, direction=direction)
        record = dict(common, index=i, label=sample.label)
        mask_path, mask_written = out / f"sample_{i:04d}_mask.nii.gz", False
        for written in (path, mask_path) if mask_labels is not None else (path,):
            owned.path(written.name)
            owned.path(sidecar_path(written).name)
        try:
            if mask_labels is not None:
                # The label map first: an image written without its mask would pass for an unpaired one.
                mask = Volume(array=labels_from_channels(x[1:]), spacing=spacing, origin=origin, direction=direction)
                mask_record = dict(record, kind="mask", image=path.name,
                                   intensity=f"label map 0..{len(mask_labels)} (0 background)")
                mask_record = write_synthetic(mask, mask_path, mask_record, dtype=np.uint8)
                mask_written = True
                record = dict(record, kind="image", mask=mask_path.name)
            record = write_synthetic(volume, path, record)  # marked: header, sidecar (medvol.data.provenance)
        except MedvolError as error:
            if mask_written:  # no label map without its image
                mask_path.unlink(missing_ok=True)
                sidecar_path(mask_path).unlink(missing_ok=True)
                provenance["files"].pop(mask_path.name, None)
            # The file of an earlier call under this name, if any, is untouched and keeps its entry.
            if paths:
                with contextlib.suppress(MedvolError):
                    write_provenance(owned, provenance)
            done = f"; the {i} volume(s) before it are complete" if i else ""
            raise MedvolError(f"{error}{done}") from None
        provenance["files"][path.name] = record
        if mask_written:
            provenance["files"][mask_path.name] = mask_record
        log.info("wrote %s", path)
        paths.append(path)
    write_provenance(owned, provenance)
    preview_files(paths, owned.path("preview.png"), window)  # central planes, captioned
    return paths


def preview_files(paths: Sequence[str | os.PathLike], out: str | os.PathLike, window: Sequence[float] | None,
                  limit: int = 8) -> Path | None:
    """``out`` (e.g. ``preview.png``): the first ``limit`` volume files of ``paths``, one row each,
    captioned with the file name, displayed over ``window`` (HU for CT; None: [-1, 1], MR).

    What ``medvol generate`` calls after writing its volumes. Returns None where Pillow is
    missing or ``paths`` is empty.
    """
    from medvol.data.io import read_volume, volume_stem
    from medvol.preview import pillow_available, write_volume_preview

    if not paths or not pillow_available():
        return None
    shown = list(paths)[:limit]
    volumes = [(f"generated {volume_stem(p)}", read_volume(p).array) for p in shown]
    more = f" (first {limit} of {len(paths)})" if len(paths) > limit else ""
    title = f"central planes of generated volumes{more}"
    return write_volume_preview(volumes, out, tuple(window) if window is not None else (-1.0, 1.0), title)

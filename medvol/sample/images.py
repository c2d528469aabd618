"""Images of a 2D model written as NIfTI in HU with PNG grids, or slices stacked into volumes.

Sample ``i`` of a call with ``seed`` is sample ``i`` of :meth:`medvol.sample.sampler.Sampler.stream`
(as for 3D models), so the output is deterministic per seed whatever the device or batch, and
``--volume`` volume ``k`` is made of samples ``k*S .. k*S + S - 1``, the same images a slice call
with that seed writes as ``sample_{k*S:04d}`` on.

What is written (docs/models2d.md, "Generating from a 2D model"):

- Slices: ``sample_0000.nii.gz`` (one 2D NIfTI per sample; CT in HU by the inverse of the training
  window, MR in [-1, 1]); pixel spacing of the training slices; the image centred at (0, 0) mm;
  checkpoint, seed and index in the ``descrip`` field. With a mask channel (``channels = 2``, or a
  mask-conditional model) also ``sample_0000_mask.nii.gz`` (uint8 0 / 1); a paired image + mask
  model (``model.mask_channels`` K) writes there the label map 0..K decoded from its K channels
  (:func:`medvol.data.paired.labels_from_channels`) and records ``mask_labels``.
  ``grid_0000.png`` shows samples 0..63 windowed for viewing (each tile the image, then its mask).
- ``volume=True``: ``sample_0000.nii.gz`` of shape [S, S, S] from S consecutive samples stacked
  along the training plane's normal, written like the 3D generated volumes (the training volumes'
  spacing and direction, centred origin), a ``_mask`` volume where masks exist, and
  ``sample_0000_views.png`` with the volume's three mid-planes. The slices are independent
  samples, so their consistency from one to the next is exactly what 3D metrics on these
  volumes test.
- ``generated.json``: per file the checkpoint (path, SHA-256, iteration), model, seed, index,
  intensity, geometry and, for conditional models, which mask each sample was drawn from.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from medvol.data.paired import labels_from_channels
from medvol.errors import MedvolError
from medvol.sample.records import (centred_origin, checkpoint_facts, generate_identity, intensity_facts,
                                   read_provenance, record_mask_labels, sample_names, write_provenance)
from medvol.sample.sampler import Sampler
from medvol.utils import checked_write, optional_import

log = logging.getLogger("medvol.generate")

#: Samples per PNG grid (8 x 8).
GRID_SAMPLES = 64
#: Pixels between the tiles of a PNG grid (white: CT air is black).
GRID_GAP = 2
#: Mask files ``--masks DIR`` reads (SimpleITK reads them all; longest suffix first).
MASK_SUFFIXES = (".nii.gz", ".nii", ".png", ".mha", ".nrrd")
_PLANES = ("axial", "coronal", "sagittal")


# ---------------------------------------------------------------------------------------------
# Geometry

def stack_slices(slices: np.ndarray, plane: str) -> np.ndarray:
    """The (z, y, x) volume whose slice ``k`` in ``plane`` is ``slices[k]``.

    The inverse of :func:`medvol.data.datasets.take_slice` over all k: coronal and sagittal slices
    show superior at the top row, so their rows run down z.

    Args:
        slices: ``[S, S, S]`` array, ``slices[k]`` the k-th slice (rows, columns).
        plane: "axial", "coronal" or "sagittal".
    """
    if plane == "axial":
        return np.ascontiguousarray(slices)
    flipped = slices[:, ::-1, :]  # rows back to increasing z
    if plane == "coronal":
        return np.ascontiguousarray(flipped.transpose(1, 0, 2))  # [k, z, x] -> [z, y=k, x]
    return np.ascontiguousarray(flipped.transpose(1, 2, 0))  # [k, z, y] -> [z, y, x=k]


def volume_spacing(meta: dict[str, Any], plane: str) -> tuple[tuple[float, float, float], bool]:
    """``((z, y, x) spacing of stacked volumes, measured)`` from a checkpoint's data facts.

    Checkpoints written before the volume spacing was recorded know only the (row, column) pixel
    spacing; the spacing along the plane's normal is then taken equal to the mean in-plane one
    (``measured`` False, recorded in generated.json).
    """
    if meta.get("volume_spacing") is not None:
        return tuple(float(s) for s in meta["volume_spacing"]), True
    row, col = (float(s) for s in (meta.get("spacing") or (1.0, 1.0))[-2:])
    normal = (row + col) / 2.0
    zyx = {"axial": (normal, row, col), "coronal": (row, normal, col), "sagittal": (row, col, normal)}[plane]
    return zyx, False


def centred_origin_2d(shape: tuple[int, int], spacing: tuple[float, float]) -> tuple[float, float]:
    """The (x, y) origin that puts the centre of a (rows, columns) image at (0, 0) mm."""
    return tuple(-(n - 1) * float(s) / 2.0 + 0.0 for n, s in zip(shape[::-1], spacing[::-1]))


def write_image2d(array: np.ndarray, spacing: tuple[float, float], path: Path,
                  record: dict[str, Any]) -> dict[str, Any]:
    """Write a 2D (rows, columns) image as NIfTI, atomically, centred, identity direction, marked
    synthetic like the 3D outputs (:mod:`medvol.data.provenance`: header description and fields,
    and a sidecar JSON that takes its name only once the image is in place).

    Returns:
        The full provenance record written to the sidecar.

    Raises:
        MedvolError: naming ``path`` on a failed write (a full disk).
    """
    from medvol.data.io import _check_written_nifti
    from medvol.data.provenance import describe, header_fields, sidecar_path, synthetic_record

    sitk = optional_import("SimpleITK", "writing generated images")
    full = synthetic_record(record, array, path)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    image.SetOrigin(centred_origin_2d(array.shape, spacing))
    image.SetMetaData("ITK_FileNotes", describe(full))  # ITK's NIfTI writer puts it in descrip
    for key, value in header_fields(path).items():
        image.SetMetaData(key, value)
    with checked_write(sidecar_path(path), "provenance sidecar") as side:
        side.write_text(json.dumps(full, indent=1, sort_keys=True), encoding="utf-8")
        with checked_write(path, "image", library_errors=(RuntimeError,)) as tmp:
            sitk.WriteImage(image, str(tmp), True)
            _check_written_nifti(tmp)
    return full


# ---------------------------------------------------------------------------------------------
# Display

def display_range(given: tuple[float, float] | None, window) -> tuple[float, float]:
    """The intensity range that PNGs map to black .. white, in the output's unit.

    Default: the training window (CT: HU, e.g. [-1024, 600]); MR: [-1, 1].
    """
    if given is None:
        return (float(window[0]), float(window[1])) if window is not None else (-1.0, 1.0)
    low, high = (float(v) for v in given)
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise MedvolError(f"--display-window {low:g},{high:g}: expected LOW,HIGH with LOW < HIGH")
    return low, high


def to_grey(array: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """uint8 grey levels: ``window[0]`` and below black, ``window[1]`` and above white."""
    low, high = window
    return np.round(np.clip((array - low) / (high - low), 0.0, 1.0) * 255.0).astype(np.uint8)


def tile_grid(tiles: list[np.ndarray], gap: int = GRID_GAP) -> np.ndarray:
    """Equal-shape uint8 tiles in a near-square grid (row-major), ``gap`` white pixels apart."""
    count = len(tiles)
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    h, w = tiles[0].shape
    grid = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        grid[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = tile
    return grid


def write_png(array: np.ndarray, path: Path) -> Path:
    """Write a uint8 grey image as PNG, atomically."""
    sitk = optional_import("SimpleITK", "writing PNG images")
    with checked_write(path, "PNG image", library_errors=(RuntimeError,)) as tmp:
        sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(array)), str(tmp))
    return path


# ---------------------------------------------------------------------------------------------
# Masks for mask-conditional models

def mask_files(folder: str | os.PathLike) -> list[Path]:
    """The mask files of ``--masks DIR``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MedvolError(f"--masks {folder}: no such folder")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(MASK_SUFFIXES))
    if not files:
        raise MedvolError(f"--masks {folder}: no mask files ({', '.join(MASK_SUFFIXES)})")
    return files


def read_mask(path: Path, size: int) -> np.ndarray:
    """A 2D mask file as uint8 ``(size, size)``: nonzero is foreground; resized by nearest neighbour.

    A 3D file with one slice counts as 2D; colour PNGs are foreground where any channel is nonzero.

    Raises:
        MedvolError: unreadable, not 2D, not square, or not finite, naming the file.
    """
    sitk = optional_import("SimpleITK", "reading mask files")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        from medvol.data.io import _one_line

        raise MedvolError(f"--masks {path}: cannot read it ({_one_line(error)})") from None
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = array.any(axis=-1)
    array = np.asarray(array)
    if array.ndim == 3 and 1 in array.shape:
        array = array.squeeze(axis=array.shape.index(1))
    if array.ndim != 2:
        raise MedvolError(f"--masks {path}: shape {tuple(array.shape)} is not a 2D mask")
    if array.shape[0] != array.shape[1]:
        raise MedvolError(f"--masks {path}: {array.shape[0]}x{array.shape[1]} is not square "
                          f"(the model draws {size}x{size} images)")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise MedvolError(f"--masks {path}: contains NaN or infinite values")
    mask = torch.from_numpy((array != 0).astype(np.float32))[None, None]
    if mask.shape[-1] != size:
        mask = torch.nn.functional.interpolate(mask, size=(size, size), mode="nearest-exact")
    return mask[0, 0].numpy().astype(np.uint8)


def folder_masks(files: list[Path], size: int) -> Iterator[tuple[np.ndarray, str]]:
    """``(mask, where it came from)`` for each file, read as it is needed."""
    for path in files:
        yield read_mask(path, size), str(path)


def phantom_masks(cfg, volume: bool) -> Iterator[tuple[np.ndarray, str]]:
    """Masks of the phantom slices the model was trained on (``cfg.data``), endlessly.

    Slice mode: the kept training slices in dataset order (volume by volume, blank slices and
    other classes skipped as ``data.skip_blank`` / ``data.slice_class`` did). Volume mode: every
    slice of phantom 0, 1, …, so that the stacked mask volume is a phantom's own.
    """
    from medvol.data.datasets import PhantomVolumeDataset, take_slice

    data, size = cfg.data, cfg.model.size
    volumes = PhantomVolumeDataset(size, data.phantom_n, seed=data.phantom_seed, nodules=data.phantom_nodules)
    kept_in_pass = 0
    for v in itertools.count():
        index = v % len(volumes)
        if index == 0 and v and not kept_in_pass:
            raise MedvolError(f"--masks: no {data.plane} phantom slice of data.slice_class "
                              f"{data.slice_class} to take a mask from; give --masks DIR")
        kept_in_pass = 0 if index == 0 else kept_in_pass
        array, mask = volumes.volume_and_mask(index)
        for k in range(size):
            piece = np.ascontiguousarray(take_slice(mask, data.plane, k))
            if not volume:
                if data.skip_blank and take_slice(array, data.plane, k).max() <= -1.0:
                    continue
                label = int(piece.any()) if data.slice_labels == "mask" else volumes.label(index)
                if data.slice_class >= 0 and label != data.slice_class:
                    continue
            kept_in_pass += 1
            yield piece, f"phantom seed {data.phantom_seed} #{index} {data.plane} {k}"


# ---------------------------------------------------------------------------------------------
# Generation

def write_images(sampler: Sampler, n: int | None, out: str | os.PathLike, *, seed: int = 0,
                 label: int | None = None, tile_depth: int | None = None, volume: bool = False,
                 masks: str | os.PathLike | None = None, display_window: tuple[float, float] | None = None,
                 batch: int = 16, overwrite: bool = False, inputs: str | os.PathLike | None = None,
                 direction: str = "AB") -> list[Path]:
    """Generate from a 2D ``sampler`` and write slices (or stacked volumes) into ``out``.

    Args:
        sampler: a 2D model's :class:`~medvol.sample.sampler.Sampler` (device and mode set).
        n: images, or volumes with ``volume``; None: 1, or one per mask of ``masks``.
        out: output folder (created).
        seed: latent seed.
        label, tile_depth: refused (2D models are unconditional on class and have no depth).
        volume: stack S consecutive samples into one [S, S, S] volume along the training plane.
        masks: mask-conditional models: a folder of 2D masks (one sample per mask, in name order);
            None takes the masks of the training phantom slices.
        display_window: PNG black .. white in the output unit (CT: HU); default the training window.
        batch: samples per forward pass of G.
        overwrite: as :func:`medvol.sample.generate.generate_volumes` (one rule for ``out``).
        inputs, direction: translation models (cyclegan): the 2D image cache whose images are
            translated (:mod:`medvol.sample.translate`), "AB" or "BA"; the images are written in the
            target domain's intensity, each recording the input it was translated from.

    Returns:
        The image (or volume) paths written, in order.

    Raises:
        MedvolError: refused options, missing mask source, bad mask files, a failed write (the
            samples before it are complete and listed in generated.json).
    """
    cfg, state = sampler.cfg, sampler.state
    name, size = cfg.model.name, cfg.model.size
    if tile_depth is not None:
        raise MedvolError(f"--tile-depth: {name} generates 2D images; there is no depth to tile")
    if label is not None:
        raise MedvolError(f"--label {label}: {name} is not class-conditional")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise MedvolError(f"--batch: expected a positive integer, got {batch!r}")
    conditional = sampler.conditional
    if inputs is not None and not sampler.unpaired:
        raise MedvolError(f"--input: {name} does not translate images (only cyclegan does)")
    if direction != "AB" and not sampler.unpaired:
        raise MedvolError(f"--direction: {name} does not translate images (only cyclegan does)")
    if sampler.unpaired:
        return _write_translations(sampler, n, out, inputs, direction, volume, masks, display_window, batch,
                                   overwrite)
    if masks is not None and not conditional:
        raise MedvolError(f"--masks: {name} is not mask-conditional (it draws its images from noise alone)")
    per = size if volume else 1
    mask_stream: Iterator[tuple[np.ndarray, str]] | None = None
    if conditional:
        if masks is not None:
            files = mask_files(masks)
            if n is None:
                n = max(1, len(files) // per)
            if n < 1 or n * per > len(files):
                need = f"{n * per} masks ({n} volume(s) of {size} slices)" if volume else f"{n} masks"
                raise MedvolError(f"--masks {masks}: {len(files)} mask file(s), {need} needed")
            mask_stream = folder_masks(files, size)
        elif cfg.data.source != "phantom":
            raise MedvolError(f"--masks: {name} is mask-conditional and its training data ({cfg.data.source}) "
                              "has no masks to draw from; give --masks DIR")
        else:
            mask_stream = phantom_masks(cfg, volume)
    n = 1 if n is None else n
    if n < 1:
        raise MedvolError(f"--n: expected at least 1, got {n}")
    meta = sampler.meta
    window = meta.get("window")
    shown = display_range(display_window, window)
    mode = sampler.mode
    plane = meta.get("plane", cfg.data.plane)
    common = {**checkpoint_facts(state, cfg, seed, mode), **intensity_facts(window), "plane": plane}
    mask_labels = sampler.mask_labels()
    if mask_labels is not None:
        common["mask_labels"] = mask_labels
    from medvol.outputs import owned_output

    identity = generate_identity(state, n, seed, mode, dims=2, volume=volume, display_window=list(shown),
                                 masks=str(Path(masks).resolve()) if masks is not None else None)
    if volume:
        planned = sample_names(n, True, ("_views.png",))
    else:
        grids = [f"grid_{g:04d}.png" for g in range(math.ceil(n / GRID_SAMPLES))]
        planned = sample_names(n, True) + grids
    inputs = [sampler.path] + ([Path(masks)] if masks is not None else [])
    # The planned names are checked before anything is generated (or removed by overwrite).
    with owned_output(out, "generate", identity, overwrite=overwrite, inputs=inputs, outputs=planned) as owned:
        writer = _Writer(owned, seed, common, shown, mask_labels)
        return _write_images(writer, sampler, meta, plane, size, n, per, volume, batch, window, mask_stream)


def _write_translations(sampler: Sampler, n, out, inputs, direction, volume, masks, display_window, batch,
                        overwrite) -> list[Path]:
    """:func:`write_images` for a translation model: the images of ``inputs`` translated."""
    from medvol.outputs import owned_output
    from medvol.sample.translate import DIRECTIONS, domain_windows, input_images, open_inputs

    cfg, state, name = sampler.cfg, sampler.state, sampler.cfg.model.name
    if direction not in DIRECTIONS:
        raise MedvolError(f"--direction {direction}: choose AB or BA")
    for flag, given in (("--volume", volume), ("--masks", masks is not None)):
        if given:
            raise MedvolError(f"{flag}: {name} translates the images of --input; it takes no {flag}")
    if inputs is None:
        raise MedvolError(f"--input: {name} translates images; give the 2D image cache of domain {direction[0]}")
    if n is not None and n < 1:
        raise MedvolError(f"--n: expected at least 1, got {n}")
    meta = sampler.meta
    windows = domain_windows(meta)
    dataset, n = open_inputs(inputs, cfg.model.size, windows[direction[0]], direction, n)
    window = windows[direction[1]]
    shown = display_range(display_window, window)
    # A translation keeps its input's geometry: the input cache's pixel spacing.
    meta = dict(meta, window=window, spacing=list(dataset.spacing))
    common = {**checkpoint_facts(state, cfg, seed=0, mode=sampler.mode), **intensity_facts(window),
              "plane": cfg.data.plane, "translation": direction, "input": str(Path(inputs).resolve())}
    identity = generate_identity(state, n, 0, sampler.mode, dims=2, volume=False, display_window=list(shown),
                                 input=str(Path(inputs).resolve()), direction=direction)
    grids = [f"grid_{g:04d}.png" for g in range(math.ceil(n / GRID_SAMPLES))]
    planned = sample_names(n, False) + grids
    with owned_output(out, "generate", identity, overwrite=overwrite, inputs=[sampler.path, Path(inputs)],
                      outputs=planned) as owned:
        writer = _Writer(owned, 0, common, shown, source_key="translated_from")
        images = input_images(dataset, n)
        return _write_images(writer, sampler, meta, cfg.data.plane, cfg.model.size, n, 1, False, batch, window,
                             None, images=images, translation=direction)


def _write_images(writer: "_Writer", sampler: Sampler, meta, plane, size, n, per, volume, batch, window,
                  mask_stream, images=None, translation=None) -> list[Path]:
    """Generate and write the samples of :func:`write_images` through ``writer``."""
    from medvol.data.preprocess import to_intensity

    if volume:
        spacing, measured = volume_spacing(meta, plane)
        direction = tuple(float(d) for d in meta.get("direction") or np.eye(3).ravel())
        writer.volume_geometry(spacing, direction, centred_origin((size,) * 3, spacing, direction), measured)
    else:
        writer.pixel_spacing = tuple(float(s) for s in (meta.get("spacing") or (1.0, 1.0))[-2:])

    pending: list[tuple[np.ndarray, np.ndarray | None, str | None]] = []
    try:
        for sample in sampler.stream(n * per, writer.seed, batch=batch, masks=mask_stream, images=images,
                                     direction=translation):
            x = sample.array
            image = to_intensity(x[0], tuple(window)) if window is not None else x[0]
            # One mask channel (data.masks, conditional models): 1 where it is above 0. A
            # translation's second channel is its input, not written again.
            mask = labels_from_channels(x[1:]) if x.shape[0] > 1 and images is None else None
            pending.append((image.astype(np.float32), mask, sample.mask_source))
            while len(pending) >= per:
                group, pending = pending[:per], pending[per:]
                if volume:
                    writer.volume(group)
                else:
                    writer.slice(*group[0])
    except MedvolError as error:
        writer.abort()
        raise MedvolError(f"{error}{writer.done_note()}") from None
    writer.finish()
    return writer.paths


class _Writer:
    """Writes samples as they come, keeps generated.json and the PNG grids in step."""

    def __init__(self, owned, seed: int, common: dict[str, Any], shown: tuple[float, float],
                 mask_labels: list[str] | None = None, source_key: str = "mask_source"):
        self.owned, self.out = owned, owned.folder
        #: The record key of where a sample came from (a mask's source; a translation's input).
        self.source_key = source_key
        self.seed, self.common, self.shown = seed, common, shown
        self.provenance = read_provenance(self.out)
        if mask_labels is not None:
            record_mask_labels(self.provenance, mask_labels, self.out)
        # Masks are shown with their top label white; a label map's classes as grey levels.
        self.classes = len(mask_labels) if mask_labels is not None else 1
        self.mask_intensity = f"label map 0..{self.classes} (0 background)" if mask_labels is not None else "label 0/1"
        self.paths: list[Path] = []
        self.tiles: list[np.ndarray] = []
        self.grid_first = 0
        self.pixel_spacing: tuple[float, float] = (1.0, 1.0)
        self.geometry: dict[str, Any] = {}

    def volume_geometry(self, spacing, direction, origin, measured: bool) -> None:
        self.geometry = {"spacing": tuple(spacing), "direction": tuple(direction), "origin": tuple(origin),
                         "spacing_normal_measured": measured}

    def _record(self, path: Path, **facts) -> None:
        self.provenance["files"][path.name] = dict(self.common, **facts)

    def _tile(self, image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        grey = to_grey(image, self.shown)
        return grey if mask is None else np.concatenate([grey, self._mask_grey(mask)], axis=1)

    def _mask_grey(self, mask: np.ndarray) -> np.ndarray:
        return (mask.astype(np.uint16) * 255 // self.classes).astype(np.uint8)

    def _claim(self, name: str, sidecar: bool = True) -> Path:
        """``out/name`` recorded as this job's output (with its provenance sidecar)."""
        from medvol.data.provenance import sidecar_path

        path = self.owned.path(name)
        if sidecar:
            self.owned.path(sidecar_path(path).name)
        return path

    def slice(self, image: np.ndarray, mask: np.ndarray | None, source: str | None) -> None:
        i = len(self.paths)
        path = self._claim(f"sample_{i:04d}.nii.gz")
        origin = centred_origin_2d(image.shape, self.pixel_spacing)
        geometry = {"spacing": list(self.pixel_spacing), "origin": list(origin), "direction": [1.0, 0.0, 0.0, 1.0]}
        facts = dict(self.common, index=i, kind="image", **{self.source_key: source}, **geometry)
        self.provenance["files"][path.name] = write_image2d(image, self.pixel_spacing, path, facts)
        if mask is not None:
            mask_path = self._claim(f"sample_{i:04d}_mask.nii.gz")
            facts = dict(facts, kind="mask", intensity=self.mask_intensity)
            self.provenance["files"][mask_path.name] = write_image2d(mask, self.pixel_spacing, mask_path, facts)
        self.paths.append(path)
        log.info("wrote %s", path)
        self.tiles.append(self._tile(image, mask))
        if len(self.tiles) == GRID_SAMPLES:
            self._flush_grid()

    def _flush_grid(self) -> None:
        if not self.tiles:
            return
        path = self._claim(f"grid_{self.grid_first // GRID_SAMPLES:04d}.png", sidecar=False)
        write_png(tile_grid(self.tiles), path)
        last = self.grid_first + len(self.tiles) - 1
        self._record(path, kind="png grid", indices=[self.grid_first, last], display_window=list(self.shown))
        self.grid_first += len(self.tiles)
        self.tiles = []

    def volume(self, group: list[tuple[np.ndarray, np.ndarray | None, str | None]]) -> None:
        from medvol.data.io import Volume
        from medvol.data.provenance import write_synthetic

        k = len(self.paths)
        plane = self.common["plane"]
        g = self.geometry
        size = len(group)
        image = stack_slices(np.stack([item[0] for item in group]), plane)
        path = self._claim(f"sample_{k:04d}.nii.gz")
        facts = {"index": k, "kind": "stacked volume", "slices": [k * size, (k + 1) * size - 1],
                 "spacing": list(g["spacing"]), "origin": list(g["origin"]), "direction": list(g["direction"]),
                 "spacing_normal_measured": g["spacing_normal_measured"],
                 "mask_source": [item[2] for item in group] if group[0][2] is not None else None}
        geometry = {"spacing": g["spacing"], "origin": g["origin"], "direction": g["direction"]}
        self.provenance["files"][path.name] = write_synthetic(Volume(array=image, **geometry), path,
                                                              dict(self.common, **facts))
        rows = [self._views(image)]
        if group[0][1] is not None:
            mask = stack_slices(np.stack([item[1] for item in group]), plane)
            mask_path = self._claim(f"sample_{k:04d}_mask.nii.gz")
            facts = dict(self.common, **dict(facts, kind="stacked mask volume", intensity=self.mask_intensity))
            self.provenance["files"][mask_path.name] = write_synthetic(Volume(array=mask, **geometry), mask_path,
                                                                       facts, dtype=np.uint8)
            rows.append(self._views(mask, grey=False))
        views = self._claim(f"sample_{k:04d}_views.png", sidecar=False)
        write_png(tile_grid([np.concatenate(rows, axis=0)], gap=0), views)
        self._record(views, index=k, kind="png views", display_window=list(self.shown))
        self.paths.append(path)
        log.info("wrote %s", path)

    def _views(self, volume: np.ndarray, grey: bool = True) -> np.ndarray:
        """Axial, coronal and sagittal mid-planes side by side (superior at the top)."""
        from medvol.data.datasets import take_slice

        mid = volume.shape[0] // 2
        planes = [take_slice(volume, plane, mid) for plane in _PLANES]
        tiles = [to_grey(p, self.shown) if grey else self._mask_grey(p) for p in planes]
        gap = np.full((tiles[0].shape[0], GRID_GAP), 255, dtype=np.uint8)
        return np.concatenate([tiles[0], gap, tiles[1], gap, tiles[2]], axis=1)

    def done_note(self) -> str:
        count = len(self.paths)
        return f"; the {count} sample(s) before it are complete" if count else ""

    def abort(self) -> None:
        if not self.paths:  # nothing written: no listing of nothing
            return
        with contextlib.suppress(MedvolError):
            self._flush_grid()
            write_provenance(self.owned, self.provenance)

    def finish(self) -> None:
        self._flush_grid()
        write_provenance(self.owned, self.provenance)

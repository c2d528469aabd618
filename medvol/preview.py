"""PNG previews with a caption on every panel: training samples, generated volumes, montages.

A layer below the trainer, the sampler, evaluation and the viewer, which all draw with it (the
trainer's sample previews, ``medvol generate``'s preview.png through :mod:`medvol.sample.volumes`,
evaluate's memorisation montage): arrays in, PNG out; nothing here reads a checkpoint.

A volume is shown as its three central planes (axial, coronal and sagittal, superior at the top as
:func:`medvol.data.datasets.take_slice` orients them). Panels are laid out row by row, each with
its caption in a band directly above it, so that no caption can be read as belonging to the
image of another row. Pillow draws the text (its built-in font); it comes with matplotlib and
with TensorBoard's image support, and where it is missing the previews are skipped
(:func:`pillow_available`), as TensorBoard logs are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from medvol.errors import MedvolError

PLANES = ("axial", "coronal", "sagittal")
#: Panels are enlarged (nearest neighbour, by a whole factor) to at least this many pixels a side,
#: so that a caption fits above a 32-pixel slice.
MIN_PANEL = 128
GAP = 6
#: Space between rows, more than between a caption and its panel.
ROW_GAP = 14
CAPTION_LINES = 2
BACKGROUND = 255
INK = 0


def pillow_available() -> bool:
    try:
        import PIL  # noqa: F401
    except ImportError:
        return False
    return True


def central_planes(volume: np.ndarray) -> list[np.ndarray]:
    """Axial, coronal and sagittal central slices of a (z, y, x) array (superior at the top)."""
    from medvol.data.datasets import take_slice

    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise MedvolError(f"preview: expected a (z, y, x) volume, got shape {volume.shape}")
    return [take_slice(volume, plane, volume.shape[axis] // 2) for plane, axis in zip(PLANES, (0, 1, 2))]


def to_grey(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """uint8 grey levels, ``window[0]`` and below black, ``window[1]`` and above white (NaN black)."""
    low, high = (float(w) for w in window)
    if not high > low:
        raise MedvolError(f"preview: display window {window} is empty")
    scaled = np.clip((np.nan_to_num(np.asarray(image, dtype=np.float64), nan=low) - low) / (high - low), 0, 1)
    return np.round(scaled * 255).astype(np.uint8)


def _font():
    from PIL import ImageFont

    return ImageFont.load_default()


def _wrap(text: str, width: int, draw, font) -> list[str]:
    """``text`` in at most :data:`CAPTION_LINES` lines of at most ``width`` pixels (cut with …)."""
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    lines.append(line)
    if len(lines) > CAPTION_LINES:
        lines = lines[:CAPTION_LINES]
        lines[-1] += " …"
    fitted = []
    for line in lines:
        while draw.textlength(line, font=font) > width and len(line) > 1:
            line = line[:-2] + "…"
        fitted.append(line)
    return fitted


def labelled_grid(rows: Sequence[Sequence[tuple[str, np.ndarray]]], title: str | None = None,
                  captions: bool = True) -> np.ndarray:
    """Panels ``rows[r][c] = (caption, uint8 image)`` in a grid, each caption above its panel.

    Panels of one grid may differ in size (a non-cubic volume's planes): each cell is as large as
    the largest panel, the panel at its top left. ``captions=False`` draws the same grid without
    text (the tests compare the two). Returns a uint8 (H, W) grey image.
    """
    from PIL import Image, ImageDraw

    cells = [panel for row in rows for _, panel in row]
    if not cells:
        raise MedvolError("preview: no panels to draw")
    side = max(max(p.shape[:2]) for p in cells)
    scale = max(1, -(-MIN_PANEL // side))
    cell_h = max(p.shape[0] for p in cells) * scale
    cell_w = max(p.shape[1] for p in cells) * scale
    font = _font()
    line_h = int(sum(font.getbbox("Ag")[1::2])) + 2
    band = CAPTION_LINES * line_h + 4
    title_h = line_h + GAP if title else 0
    n_cols = max(len(row) for row in rows)
    width = n_cols * cell_w + (n_cols + 1) * GAP
    height = title_h + len(rows) * (band + cell_h + ROW_GAP) + GAP
    canvas = Image.new("L", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title and captions:
        draw.text((GAP, GAP // 2), _wrap(title, width - 2 * GAP, draw, font)[0], fill=INK, font=font)
    for r, row in enumerate(rows):
        top = title_h + GAP + r * (band + cell_h + ROW_GAP)
        for c, (caption, panel) in enumerate(row):
            left = GAP + c * (cell_w + GAP)
            if captions:  # bottom-aligned: next to its own panel, away from the row above
                lines = _wrap(caption, cell_w, draw, font)
                for k, line in enumerate(lines):
                    draw.text((left, top + band - 2 - (len(lines) - k) * line_h), line, fill=INK, font=font)
            big = np.kron(np.asarray(panel, dtype=np.uint8), np.ones((scale, scale), dtype=np.uint8))
            canvas.paste(Image.fromarray(big, mode="L"), (left, top + band))
    return np.asarray(canvas)


def volume_rows(volumes: Sequence[tuple[str, np.ndarray]], window: tuple[float, float]) -> list:
    """One row per ``(name, (z, y, x) volume)``: its three central planes, captioned
    ``"<name> axial"`` and so on."""
    return [[(f"{name} {plane}", to_grey(image, window)) for plane, image in zip(PLANES, central_planes(volume))]
            for name, volume in volumes]


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 grey image as PNG bytes (for outputs written all at once, :mod:`medvol.outputs`)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a uint8 grey image as PNG under a temporary name, then rename it into place."""
    from PIL import Image

    from medvol.utils import checked_write

    path = Path(path)
    with checked_write(path, "preview image") as tmp:
        Image.fromarray(np.ascontiguousarray(image), mode="L").save(tmp, format="PNG")
    return path


def write_volume_preview(volumes: Sequence[tuple[str, np.ndarray]], path: str | os.PathLike,
                         window: tuple[float, float] = (-1.0, 1.0), title: str | None = None) -> Path | None:
    """``path``: the central planes of every ``(name, volume)``, one captioned row each.

    Returns the path, or None where Pillow is missing (nothing written).
    """
    if not pillow_available():
        return None
    return write_png(labelled_grid(volume_rows(volumes, window), title=title), path)


def training_preview(real: np.ndarray, fake: np.ndarray, iteration: int, per_row: int = 8,
                     channel_names: dict[str, Sequence[str]] | None = None) -> np.ndarray | None:
    """The labelled preview of a training run's samples: real ``[B, C, ...]`` and generated
    ``[B, C, ...]`` in [-1, 1], volumes or 2D images. Channel 0 is the image, channels 1.. a paired
    model's mask classes, unless ``channel_names`` (``{"real": [...], "generated": [...]}``, a
    model's ``preview_channels``) names them otherwise (cyclegan: domain A, domain B; A -> B, A).

    Volumes: one row per sample and channel (real i, then generated i), its three central
    planes. Images: real i then generated i (each channel a panel), ``per_row`` panels a row.
    Returns a uint8 (H, W) image, or None without Pillow.
    """
    if not pillow_available():
        return None
    rows, panels = [], []
    for i in range(min(len(real), len(fake))):
        for kind, batch in (("real", real), ("generated", fake)):
            sample = np.asarray(batch[i], dtype=np.float32)
            given = (channel_names or {}).get(kind)
            if given is not None and len(given) == len(sample):
                names = [f"{kind} {i} {name}" for name in given]
            else:
                names = [f"{kind} {i}"] + [f"{kind} {i} mask {c}" for c in range(1, len(sample))]
            if sample.ndim == 4:
                rows.extend(volume_rows(list(zip(names, sample)), (-1.0, 1.0)))
            else:
                panels.extend((name, to_grey(channel, (-1.0, 1.0))) for name, channel in zip(names, sample))
    rows.extend(panels[k:k + per_row] for k in range(0, len(panels), per_row))
    return labelled_grid(rows, title=f"iteration {iteration}: real and generated samples")

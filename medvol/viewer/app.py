"""Build a napari viewer on medvol volumes: layers, window, grid, view, dock widget, screenshot.

:func:`view` is what ``medvol view`` calls. It reads and checks everything first, so that bad
input fails with one :class:`MedvolError` line before any window exists, then builds the viewer
(:func:`prepare_layers` -> :func:`populate_viewer` -> :func:`set_view`) and either runs napari or
writes a screenshot and closes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from medvol.errors import MedvolError
from medvol.utils import missing_extra
from medvol.viewer.layers import (
    LayerData,
    image_layer_data,
    labels_layer_data,
    layer_transform,
    load_volumes,
    volume_name,
)
from medvol.viewer.presets import parse_window

#: ``--slice`` -> napari ``dims.order`` (the last two axes are displayed) and the 2D camera
#: orientation. Coronal and sagittal put z (superior in LPS) up; sagittal puts anterior left.
SLICE_VIEWS: dict[str, tuple[tuple[int, int, int], tuple[str, str]]] = {
    "axial": ((0, 1, 2), ("down", "right")),
    "coronal": ((1, 0, 2), ("up", "right")),
    "sagittal": ((2, 0, 1), ("up", "right")),
}

#: Grids up to this many volumes are one row (side by side); more fill a near-square grid.
MAX_GRID_ROW = 4

#: Screenshot size in pixels of one volume (one grid cell).
SCREENSHOT_CELL = 512


def prepare_layers(
    volumes: Sequence,
    *,
    window: tuple[float, float] | None = None,
    grid: bool = False,
    labels=None,
) -> list[LayerData]:
    """Check the volumes and turn them into napari layer data, without touching napari.

    Without ``grid`` every volume sits at its physical place (spacing, origin, direction), so
    overlapping volumes and a mask line up as in the scanner. With ``grid`` the volumes are
    aligned voxel by voxel at the first one's spacing and direction, origin at zero, so that the
    shared slider shows the same slice index of each (a reader study compares slice k of a real
    and of generated volumes, whose origins mean nothing to each other).

    Args:
        volumes: :class:`medvol.data.io.Volume` list, arrays (D, H, W).
        window: contrast limits (low, high) for every image, or None for each image's own.
        grid: lay the volumes out side by side (requires equal shapes).
        labels: a mask Volume of the first volume's shape, overlaid on the first volume (on
            every volume with ``grid``).

    Returns:
        layer data tuples in viewer order; with ``grid`` and ``labels``, image and mask
        alternate (two layers per grid cell).

    Raises:
        MedvolError: shape mismatch in ``grid`` or between the mask and the first volume.
    """
    if not volumes:
        return [labels_layer_data(labels)] if labels is not None else []
    first = volumes[0]
    if grid:
        for volume in volumes[1:]:
            if volume.array.shape != first.array.shape:
                raise MedvolError(
                    f"--grid needs volumes of one shape: {volume.path} is {volume.array.shape}, "
                    f"{first.path} is {first.array.shape}"
                )
    if labels is not None and labels.array.shape != first.array.shape:
        raise MedvolError(
            f"--labels {labels.path} has shape {labels.array.shape}, "
            f"{first.path} has {first.array.shape}"
        )
    if not grid:
        out = [image_layer_data(volume, window=window) for volume in volumes]
        if labels is not None:
            out.append(labels_layer_data(labels))
        return out
    shared = layer_transform(first, use_origin=False)
    out = []
    for index, volume in enumerate(volumes):
        out.append(image_layer_data(volume, window=window, transform=shared, name=grid_name(volume)))
        if labels is not None:
            name = f"{volume_name(labels.path, 'labels')} on {out[-1][1]['name']}"
            out.append(labels_layer_data(labels, name=name, transform=shared))
    return out


def grid_name(volume) -> str:
    """``"real: NAME"`` or ``"generated: NAME"``: a grid cell's caption says what the volume is.

    Generated means marked synthetic (header, sidecar, ``generated.json`` or cache manifest:
    :func:`medvol.data.provenance.provenance_of`); real, anything not so marked.
    """
    from medvol.data.provenance import provenance_of

    name = volume_name(volume.path)
    if volume.path is None:
        return name
    synthetic = provenance_of(volume.path)["synthetic"]
    return f"{'generated' if synthetic else 'real'}: {name}"


def populate_viewer(viewer, layer_data: Sequence[LayerData], *, grid: bool = False) -> list:
    """Add prepared layers to ``viewer`` and switch grid mode on if asked.

    Args:
        viewer: a ``napari.Viewer``.
        layer_data: from :func:`prepare_layers`.
        grid: one grid cell per image (its mask with it), one row for up to four images.

    Returns:
        the napari layers added, in order.
    """
    layers = []
    for data, kwargs, kind in layer_data:
        if kind == "image":
            layer = viewer.add_image(data, **kwargs)
            # A window narrower than the data would otherwise also cap the contrast slider.
            low, high = kwargs["contrast_limits"]
            layer.contrast_limits_range = (min(low, float(np.min(data))), max(high, float(np.max(data))))
            layer.contrast_limits = (low, high)
        else:
            layer = viewer.add_labels(data, **kwargs)
        layers.append(layer)
    if grid:
        for layer, (_, _, kind) in zip(layers, layer_data):
            if kind == "image":  # its name (real: / generated:) drawn in its own cell
                layer.name_overlay.visible = True
                layer.name_overlay.font_size = 14
        n_images = sum(kind == "image" for _, _, kind in layer_data)
        viewer.canvas.grid.stride = max(1, len(layer_data) // max(1, n_images))
        viewer.canvas.grid.shape = (1, n_images) if n_images <= MAX_GRID_ROW else (-1, -1)
        viewer.canvas.grid.spacing = 0.02
        viewer.canvas.grid.enabled = True
    return layers


def set_view(viewer, slice_view: str = "axial", ndisplay: int = 2) -> None:
    """Show ``slice_view`` planes in 2D or 3D, centred on the middle slice, fitted to the canvas.

    Args:
        viewer: a ``napari.Viewer`` with layers.
        slice_view: ``axial`` (z slider), ``coronal`` (y slider) or ``sagittal`` (x slider).
        ndisplay: 2 (slices) or 3 (volume rendering, looking along the sliced axis).
    """
    if slice_view not in SLICE_VIEWS:
        raise MedvolError(f"--slice {slice_view!r}: expected one of {', '.join(SLICE_VIEWS)}")
    if ndisplay not in (2, 3):
        raise MedvolError(f"--ndisplay {ndisplay!r}: expected 2 or 3")
    order, orientation = SLICE_VIEWS[slice_view]
    viewer.dims.ndisplay = ndisplay
    if viewer.dims.ndim == 3:
        viewer.dims.order = order
    viewer.scene.camera.orientation2d = orientation
    if len(viewer.layers):
        # The middle of the world extent, so every volume (grid or overlay) shows its centre.
        extent = viewer.layers.extent.world
        for axis in range(viewer.dims.ndim):
            viewer.dims.set_point(axis, float(extent[0][axis] + extent[1][axis]) / 2)
    viewer.reset_view()


def add_generator_widget(viewer, ckpt=None):
    """Dock the generator widget (:mod:`medvol.viewer.widget`) on ``viewer``.

    Args:
        viewer: a ``napari.Viewer``.
        ckpt: None, a checkpoint file or run folder, or a loaded
            :class:`medvol.viewer.generator.LoadedModel`.
    """
    from medvol.viewer.widget import GeneratorWidget

    widget = GeneratorWidget(viewer, ckpt=ckpt)
    viewer.window.add_dock_widget(widget, name="medvol generator", area="right")
    return widget


def save_screenshot(viewer, out: str | os.PathLike, *, size: tuple[int, int] | None = None) -> Path:
    """Resize the canvas, fit the data to it, and write it as a PNG, atomically.

    The viewer must be shown (on a real or virtual display): napari reads the picture back from
    the window's framebuffer.

    Args:
        viewer: a shown ``napari.Viewer``.
        out: destination ``.png``.
        size: (height, width) in pixels; default one :data:`SCREENSHOT_CELL` square per grid cell.

    Returns:
        ``out`` as a Path.
    """
    import imageio.v3 as iio

    from medvol.utils import atomic_path

    out = Path(out)
    if size is None:
        rows, cols = viewer.canvas.grid.actual_shape(viewer.layers)
        size = (rows * SCREENSHOT_CELL, cols * SCREENSHOT_CELL)
    # Fit the camera to the new size, then grab at that size before the window's layout gets a
    # chance to resize the canvas back (napari's screenshot(size=...) alone keeps the old zoom).
    viewer.canvas.size = tuple(size)
    viewer.reset_view()
    image = np.asarray(viewer.screenshot(size=tuple(size), canvas_only=True, flash=False))
    with atomic_path(out) as tmp:
        iio.imwrite(tmp, image[..., :3], extension=".png")
    return out


def _check_out(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise MedvolError(f"--screenshot {path}: the file name must end in .png")
    if path.exists() and path.is_dir():
        raise MedvolError(f"--screenshot {path} is a folder")
    return path


#: Qt platforms that draw on an X server or a Wayland compositor (the Linux default is xcb).
_WINDOWING_PLATFORMS = ("xcb", "wayland", "wayland-egl")


def _check_window_display() -> None:
    """Refuse an interactive window where Qt has nothing to show it on.

    Without ``DISPLAY`` (or ``WAYLAND_DISPLAY``) Qt's xcb platform aborts the process (exit 134)
    before Python can report anything, so this is checked before Qt starts. A platform named in
    ``QT_QPA_PLATFORM`` that needs no display server (``vnc``, ``eglfs``, ``offscreen``, ...) is
    the user's choice and is left alone, and so is a process that already runs Qt.
    """
    from medvol.viewer.display import _qt_started

    if not sys.platform.startswith("linux") or _qt_started():
        return
    platforms = [p.split(":")[0].strip() for p in os.environ.get("QT_QPA_PLATFORM", "").split(";")]
    platforms = [p for p in platforms if p] or ["xcb"]
    if any(p not in _WINDOWING_PLATFORMS for p in platforms):
        return
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return
    raise MedvolError("no display to open the viewer window on (DISPLAY and WAYLAND_DISPLAY are "
                      "unset): give --screenshot OUT.png to render without one, or log in with "
                      "a display (ssh -X)")


def view(
    sources: Sequence[str | os.PathLike] = (),
    *,
    window: str | tuple[float, float] | None = None,
    grid: bool = False,
    labels: str | os.PathLike | None = None,
    screenshot: str | os.PathLike | None = None,
    slice_view: str = "axial",
    ndisplay: int = 2,
    ckpt: str | os.PathLike | None = None,
) -> Path | None:
    """Open volumes in napari, or render them to a PNG: the library side of ``medvol view``.

    Args:
        sources: volume files, DICOM series folders, sample folders or globs.
        window: a preset name (``lung``, ``mediastinum``, ``bone``), ``"LOW,HIGH"`` or a tuple, in
            HU; None: each image's 0.5-99.5 percentile range.
        grid: volumes side by side with linked slicing (equal shapes required).
        labels: a mask file overlaid on the (first) volume.
        screenshot: write the canvas to this PNG and return, instead of opening a window.
        slice_view: ``axial``, ``coronal`` or ``sagittal``.
        ndisplay: 2 or 3.
        ckpt: dock the generator widget with this checkpoint loaded.

    Returns:
        the screenshot path, or None after the interactive window was closed.

    Raises:
        MedvolError: bad input of any kind, raised before a window opens.
    """
    if importlib.util.find_spec("napari") is None:  # said first; napari itself loads once a window is due
        raise missing_extra("napari", "the viewer")
    limits = parse_window(window) if window is None or isinstance(window, str) else tuple(window)
    if slice_view not in SLICE_VIEWS:
        raise MedvolError(f"--slice {slice_view!r}: expected one of {', '.join(SLICE_VIEWS)}")
    if ndisplay not in (2, 3):
        raise MedvolError(f"--ndisplay {ndisplay!r}: expected 2 or 3")
    if not sources and ckpt is None:
        raise MedvolError("nothing to view: give volume paths or --ckpt")
    out = _check_out(screenshot) if screenshot is not None else None
    if out is None:
        _check_window_display()
    volumes = load_volumes(sources)
    mask = load_volumes([labels])[0] if labels is not None else None
    layer_data = prepare_layers(volumes, window=limits, grid=grid, labels=mask)
    model = None
    if ckpt is not None:
        from medvol.viewer.generator import LoadedModel

        model = LoadedModel.load(ckpt)  # a bad checkpoint fails here, before any window

    from medvol.viewer.display import ensure_display, guard_triton

    if out is not None:
        ensure_display()
    guard_triton()  # before OpenGL starts: the generator widget may need Triton later
    import napari

    # Shown also for a screenshot (on the private Xvfb): a hidden canvas reads back black.
    viewer = napari.Viewer(title="medvol", show=True)
    try:
        populate_viewer(viewer, layer_data, grid=grid)
        set_view(viewer, slice_view, ndisplay)
        if model is not None:
            add_generator_widget(viewer, model)
        result = save_screenshot(viewer, out) if out is not None else None
    except BaseException:
        # Closing a half-built viewer can fail in turn; the first error is the one to report.
        with contextlib.suppress(Exception):
            viewer.close()
        raise
    if out is None:
        napari.run()
    else:
        viewer.close()
    return result

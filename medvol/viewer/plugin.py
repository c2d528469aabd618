"""The napari reader hook (npe2, declared in ``medvol/napari.yaml``).

napari users open NIfTI, MetaImage and NRRD files, DICOM series folders and sample folders through
medvol, with spacing, orientation and names as ``medvol view`` sets them. The manifest's widget
is :class:`medvol.viewer.widget.GeneratorWidget` itself (napari passes it ``napari_viewer``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from medvol.viewer.layers import LayerData, image_layer_data, load_volumes


def get_reader(path: str | os.PathLike | list) -> Callable[[str | list], list[LayerData]] | None:
    """npe2 reader contribution: a reader for volume files and volume folders, else None.

    Returning None (not raising) lets napari try its other readers.
    """
    paths = path if isinstance(path, list) else [path]
    if all(_looks_readable(Path(p)) for p in paths):
        return read_layers
    return None


def _looks_readable(path: Path) -> bool:
    from medvol.data.io import volume_suffix

    if path.is_dir():
        # A DICOM series or a folder of volumes (e.g. `medvol generate` output); only the
        # top level is looked at, so that napari stays quick when a large folder is dropped.
        return any(volume_suffix(child) for child in path.iterdir())
    return bool(volume_suffix(path)) and volume_suffix(path) != ".dcm"


def read_layers(path: str | os.PathLike | list) -> list[LayerData]:
    """Read one path or a list of paths into napari image layer data (see :mod:`.layers`)."""
    paths = path if isinstance(path, list) else [path]
    return [image_layer_data(volume) for volume in load_volumes(paths)]

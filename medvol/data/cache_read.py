"""Reading a cache: entries as :class:`medvol.data.io.Volume` with their geometry, label maps, and
the export of a whole cache as NIfTI (:mod:`medvol.data.cache` describes the layout).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medvol.data.cache_store import (GEOMETRY_KEYS, MANIFEST, VOLUME_DIR, CacheLock, _reason, entry_file,
                                     load_manifest)
from medvol.data.io import Volume
from medvol.data.preprocess import PreprocessParams
from medvol.data.provenance import sidecar_path, write_synthetic
from medvol.errors import MedvolError
from medvol.outputs import safe_name


def _volume_manifest(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """:func:`load_manifest`, refusing a 2D image cache (:mod:`medvol.data.image_cache`): its
    entries are images, not volumes with a geometry."""
    manifest = load_manifest(cache_dir)
    if manifest.get("dims") == 2:
        raise MedvolError(f"{cache_dir}: a 2D image cache (medvol preprocess --images); it holds images, not "
                          "volumes (read them with medvol.data.image_cache.read_image_labels)")
    return manifest


def entry_geometry(entry: dict[str, Any], manifest_path: str | os.PathLike = MANIFEST) -> dict[str, tuple[float, ...]]:
    """``{"spacing", "origin", "direction"}`` of a manifest entry, as :class:`Volume` holds them.

    Raises:
        MedvolError: the entry has no (or malformed) geometry: a cache built before medvol recorded
            it; running ``medvol preprocess`` again with its source adds it.
    """
    name = entry.get("name", "?")
    missing = [k for k in GEOMETRY_KEYS if k not in entry]
    if missing:
        raise MedvolError(f"{manifest_path}: volume {name!r} has no {', '.join(missing)} (built by an older medvol); "
                          "run `medvol preprocess` again with its source to add the geometry")
    try:
        geometry = {k: tuple(float(v) for v in entry[k]) for k in GEOMETRY_KEYS}
    except (TypeError, ValueError):
        geometry = {}
    if [len(geometry.get(k, ())) for k in GEOMETRY_KEYS] != [3, 3, 9] or not all(
            np.isfinite(v).all() for v in geometry.values()):
        raise MedvolError(f"{manifest_path}: volume {name!r} has a malformed geometry")
    return geometry


def _load(cache_dir: Path, manifest: dict[str, Any], entry: dict[str, Any], physical: bool) -> Volume:
    from medvol.data.preprocess import to_intensity

    geometry = entry_geometry(entry, cache_dir / MANIFEST)
    path = entry_file(cache_dir, entry)
    array = _read_cached(path, "cached volume", (int(manifest["params"].get("size", 0)),) * 3, np.float32)
    if physical:
        array = to_intensity(array, PreprocessParams.from_dict(manifest["params"])).astype(np.float32)
    return Volume(array=array, path=str(path), **geometry)


def entry_labels(cache_dir: Path, manifest: dict[str, Any], entry: dict[str, Any]) -> np.ndarray:
    """The uint8 (S, S, S) label map of a cache entry.

    Raises:
        MedvolError: the entry has no label map (names the cache and entry), or its file is
            missing, unreadable or of the wrong shape or type (names the file).
    """
    if not isinstance(entry.get("labels"), str):
        raise MedvolError(f"{cache_dir}: volume {entry.get('name')!r} has no label map (the cache was built "
                          "without a label file beside its source, or by a medvol without labels); put "
                          "<name>_mask.nii.gz beside the source and run `medvol preprocess` again")
    path = entry_file(cache_dir, entry, "labels")
    return _read_cached(path, "label map", (int(manifest["params"].get("size", 0)),) * 3, np.uint8)


def _read_cached(path: Path, what: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """The array of ``path`` (a writable copy: torch refuses read-only memory), checked against the
    ``shape`` and ``dtype`` the manifest implies.

    Raises:
        MedvolError: the file is missing, unreadable, or of another shape or type (names it).
    """
    try:
        array = np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise MedvolError(f"{path}: missing; the manifest lists it (rebuild it with `medvol preprocess`)") from None
    except (OSError, ValueError, EOFError) as error:
        raise MedvolError(f"{path}: unreadable {what} ({str(error).splitlines()[0]}); "
                          "rebuild it with `medvol preprocess`") from None
    if array.shape != shape or array.dtype != dtype:
        raise MedvolError(f"{path}: {array.dtype} array of shape {array.shape}, expected {np.dtype(dtype).name} "
                          f"{shape} ({what}) as the manifest says")
    return np.array(array)


def load_labels(cache_dir: str | os.PathLike, name: str) -> Volume:
    """The label map of one cache entry with its geometry (that of :func:`load_entry`'s array).

    Returns:
        A Volume whose array is uint8 (S, S, S): 0 background, i the class ``mask_labels[i - 1]``.

    Raises:
        MedvolError: as :func:`load_entry`, and an entry without a label map (names the cache).
    """
    cache_dir = Path(cache_dir)
    manifest = _volume_manifest(cache_dir)
    entry = {e["name"]: e for e in manifest["volumes"]}.get(name)
    if entry is None:
        raise MedvolError(f"{cache_dir}: no volume {name!r} in this cache")
    geometry = entry_geometry(entry, cache_dir / MANIFEST)
    return Volume(array=np.array(entry_labels(cache_dir, manifest, entry)),
                  path=str(entry_file(cache_dir, entry, "labels")), **geometry)


def load_entry(cache_dir: str | os.PathLike, name: str, *, physical: bool = False) -> Volume:
    """One cache entry with its geometry, as a :class:`medvol.data.io.Volume`.

    Args:
        cache_dir: the cache folder.
        name: the entry's name (``volumes/<name>.npy``).
        physical: map [-1, 1] back to HU (CT, the cache's window); MR stays in [-1, 1].

    Returns:
        A Volume with the float32 (S, S, S) array and the spacing, origin and direction of the
        preprocessed grid (it overlays the source scan); ``path`` is the ``.npy`` file.

    Raises:
        MedvolError: a missing or damaged manifest, an unknown name, a missing or corrupt array,
            or an entry without geometry (one line naming the file).

    Example:
        >>> vol = load_entry("cache64", "phantom_0000", physical=True)  # doctest: +SKIP
        >>> vol.array.shape, vol.spacing                                  # doctest: +SKIP
        ((64, 64, 64), (5.9375, 5.9375, 5.9375))
    """
    cache_dir = Path(cache_dir)
    manifest = _volume_manifest(cache_dir)
    by_name = {e["name"]: e for e in manifest["volumes"]}
    if name not in by_name:
        some = ", ".join(sorted(by_name)[:3]) + (", ..." if len(by_name) > 3 else "")
        raise MedvolError(f"{cache_dir}: no volume {name!r} in this cache ({len(by_name)} volume(s): {some})")
    return _load(cache_dir, manifest, by_name[name], physical)


def cache_volumes(source: str | os.PathLike, *, physical: bool = True) -> list[Volume] | None:
    """The cache entries that ``source`` names, or None if it names none (for viewers).

    ``source`` is a cache folder (all its volumes, in manifest order) or ``CACHE/volumes/NAME.npy``.

    Raises:
        MedvolError: a ``.npy`` outside a cache, or anything :func:`load_entry` refuses.
    """
    path = Path(source)
    if path.is_dir() and (path / MANIFEST).is_file():
        manifest = _volume_manifest(path)
        return [_load(path, manifest, entry, physical) for entry in manifest["volumes"]]
    if path.suffix.lower() != ".npy":
        return None
    cache_dir = path.parent.parent
    if path.parent.name != VOLUME_DIR or not (cache_dir / MANIFEST).is_file():
        raise MedvolError(f"{path}: a .npy outside a medvol cache (no {MANIFEST} beside its {VOLUME_DIR}/ "
                          "folder); give CACHE/volumes/NAME.npy or the cache folder")
    manifest = _volume_manifest(cache_dir)
    for entry in manifest["volumes"]:
        if entry["file"] == f"{VOLUME_DIR}/{path.name}":
            return [_load(cache_dir, manifest, entry, physical)]
    raise MedvolError(f"{path}: not listed in {cache_dir / MANIFEST}")


def export_nifti(cache_dir: str | os.PathLike, out_dir: str | os.PathLike, *, wait: float | None = None,
                 on_wait: Callable[[str], None] | None = None) -> list[Path]:
    """Write every cache entry as ``out_dir/<name>.nii.gz`` with its geometry.

    CT is written in HU (the cache's window mapped back), MR in [-1, 1], float32; an entry's label
    map as ``out_dir/<name>_mask.nii.gz`` (uint8, same geometry). Each file is
    written under a temporary name and renamed; an existing file of the same name is replaced.
    A synthetic entry is written marked, with a sidecar (:mod:`medvol.data.provenance`): the
    export of a mixed cache never passes a generated volume off as a scan.
    The cache is locked meanwhile, so a run writing it is waited for (``wait``, ``on_wait`` as
    :class:`CacheLock`).

    Returns:
        The files written, in manifest order (an entry's volume, then its label map if it has one).

    Raises:
        MedvolError: anything :func:`load_entry` refuses, or a failed write (names the file).
    """
    cache_dir = Path(cache_dir)
    _volume_manifest(cache_dir)  # a folder that is no (3D) cache fails before a lock file is made in it
    with CacheLock(cache_dir, wait=wait, on_wait=on_wait):
        return _export(cache_dir, _volume_manifest(cache_dir), Path(out_dir))


def _export(cache_dir: Path, manifest: dict[str, Any], out_dir: Path) -> list[Path]:
    if out_dir.exists() and not out_dir.is_dir():
        raise MedvolError(f"{out_dir}: exists and is not a folder (--export-nifti)")
    try:
        return _export_checked(cache_dir, manifest, out_dir)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"interrupted (Ctrl-C) while exporting; the cache {cache_dir} is complete, and "
                                f"the files already in {out_dir} are whole (each is written under a temporary "
                                "name and renamed)") from None


def _export_checked(cache_dir: Path, manifest: dict[str, Any], out_dir: Path) -> list[Path]:
    from medvol.data.io import write_volume

    # Every file's name is checked before the first is written: none may be a link out of out_dir.
    plans = []
    for entry in manifest["volumes"]:
        names = [f"{entry['name']}.nii.gz"] + ([f"{entry['name']}_mask.nii.gz"] if isinstance(entry.get("labels"), str)
                                              else [])
        targets = [safe_name(out_dir, name, "--export-nifti file") for name in names]
        if entry.get("synthetic") is True:  # and their sidecars
            for target in targets:
                safe_name(out_dir, sidecar_path(target).name, "--export-nifti sidecar")
        plans.append((entry, targets))
    written = []
    for entry, targets in plans:
        synthetic = entry.get("synthetic") is True
        volume = _load(cache_dir, manifest, entry, physical=True)
        pairs = [(volume, targets[0], None)]
        if len(targets) > 1:
            labels = dataclasses.replace(volume, array=np.array(entry_labels(cache_dir, manifest, entry)))
            pairs.append((labels, targets[1], np.uint8))
        try:
            for item, target, dtype in pairs:
                if synthetic:
                    record = dict(entry.get("provenance") or {}, exported_from={"cache": str(cache_dir),
                                                                                 "entry": entry["name"]})
                    if dtype is not None:
                        record["mask_labels"] = manifest.get("mask_labels")
                    write_synthetic(item, target, record, dtype=dtype)
                    written.append(target)
                else:
                    written.append(write_volume(item, target, dtype=dtype))
        except MedvolError:
            raise
        except (OSError, RuntimeError) as error:
            reason = _reason(error) if isinstance(error, OSError) else str(error).strip().splitlines()[-1]
            raise MedvolError(f"{target}: cannot write ({reason})") from None
    return written

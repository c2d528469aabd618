"""Provenance of synthetic data: marking what medvol generates, and finding the marks again.

Synthetic volumes that end up in a training set as if they were scans degrade the models trained
on them over generations (model collapse). medvol therefore marks every volume it writes from a
generator, and ``medvol preprocess`` and the training loaders refuse marked volumes unless they
are allowed explicitly (``--allow-synthetic``, ``data.allow_synthetic``).

The marks of a generated volume ``DIR/NAME.nii.gz`` (any one of them is enough):

- **header**: the NIfTI ``descrip`` field (80 bytes) starts with the word ``synthetic`` and
  ``aux_file`` (24 bytes) holds ``medvol synthetic``; MetaImage and NRRD files carry the same
  description as ``ITK_FileNotes`` and a ``medvol_synthetic = true`` field. ITK-based tools
  (SimpleITK, ITK-SNAP, ANTs) and nibabel keep these fields when they read and write the image,
  including a NIfTI converted to MetaImage or NRRD; a copy of the file alone keeps them.
- **sidecar**: ``DIR/NAME.json`` (BIDS style) with ``"synthetic": true`` and the full record:
  model, checkpoint path and SHA-256, iteration, seed, index, label, medvol version, date, and a
  SHA-256 of the voxels that ties the sidecar to its volume.
- **folder**: ``DIR/generated.json`` (written by ``medvol generate``) lists the file.

A cache entry made from a marked volume carries ``"synthetic": true`` and the record under
``"provenance"`` in the cache manifest; entries of real volumes carry ``"synthetic": false``.
A tool that writes the voxels under a fresh header (e.g. ``nibabel.Nifti1Image(data, affine)``)
drops the header marks; the sidecar and the listing then remain the only evidence.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from medvol.errors import MedvolError

#: The word every marked header contains.
WORD = "synthetic"
#: The NIfTI ``aux_file`` value of a generated volume (23 characters at most fit).
AUX_MARK = "medvol synthetic"
#: The MetaImage / NRRD key/value field of a generated volume.
META_KEY = "medvol_synthetic"
#: Header fields that hold free text, in the names SimpleITK reads them under.
TEXT_FIELDS = ("descrip", "ITK_FileNotes", "aux_file", META_KEY)
#: The folder-level record of ``medvol generate``.
LISTING = "generated.json"
#: How the preprocessing option and the training config key are spelled in messages.
PREPROCESS_FLAG = "--allow-synthetic"
CONFIG_KEY = "data.allow_synthetic"

_WORD_RE = re.compile(rf"\b{WORD}\b", re.IGNORECASE)
_NIFTI = (".nii", ".nii.gz")


def describe(record: dict[str, Any]) -> str:
    """The header description of a generated volume: ``synthetic medvol <model> seed S #i ...``.

    It starts with the marker word so that truncation (NIfTI ``descrip`` holds 79 characters) can
    never cut it off, and is ASCII (the field is bytes).
    """
    parts = [WORD, "medvol", str(record.get("model", "?"))]
    if record.get("seed") is not None:
        parts.append(f"seed {record['seed']}")
    if record.get("index") is not None:
        parts.append(f"#{record['index']}")
    if record.get("label") is not None:
        parts.append(f"label {record['label']}")
    if record.get("checkpoint_sha256"):
        parts.append(f"ckpt {str(record['checkpoint_sha256'])[:12]}")
    return " ".join(parts).encode("ascii", "replace").decode("ascii")[:79]


def header_fields(path: str | os.PathLike) -> dict[str, str]:
    """The header fields that mark ``path`` synthetic, besides its description (format by suffix)."""
    from medvol.data.io import volume_suffix

    return {"aux_file": AUX_MARK} if volume_suffix(path) in _NIFTI else {META_KEY: "true"}


def sidecar_path(path: str | os.PathLike) -> Path:
    """``DIR/NAME.json`` for the volume ``DIR/NAME.<suffix>`` (``.nii.gz``, ``.mha``, ...)."""
    from medvol.data.io import volume_stem

    path = Path(path)
    return path.with_name(f"{volume_stem(path)}.json")


def voxels_sha256(array: np.ndarray) -> str:
    """SHA-256 of a volume's voxels as float32 in (z, y, x) order, shape included.

    It ties a sidecar to its volume whatever the container: recompression, a rewritten header or
    a SimpleITK read and write leave it unchanged; other voxel values change it.
    """
    data = np.ascontiguousarray(array, dtype=np.float32)
    digest = hashlib.sha256(repr(tuple(data.shape)).encode())
    digest.update(data.tobytes())
    return digest.hexdigest()


def synthetic_record(record: dict[str, Any], array: np.ndarray, path: str | os.PathLike) -> dict[str, Any]:
    """The full provenance record of a generated volume: ``record`` plus the marker and the date."""
    import medvol

    full = {"synthetic": True, "generated_by": "medvol", **record}
    full.setdefault("medvol_version", medvol.__version__)
    full.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))  # an export keeps it
    full["file"] = Path(path).name
    full["voxels_sha256"] = voxels_sha256(array)
    return full


def write_sidecar(path: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write the sidecar JSON of the volume ``path`` atomically; returns the sidecar's path."""
    from medvol.utils import checked_write

    side = sidecar_path(path)
    with checked_write(side, "provenance sidecar") as tmp:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
    return side


def write_synthetic(volume, path: str | os.PathLike, record: dict[str, Any], **write_options) -> dict[str, Any]:
    """Write a generated volume with every mark: header description and fields, and its sidecar.

    The sidecar is written and flushed under a temporary name first and takes its name only once
    the volume is in place, so a failed write (a full disk) of either leaves no new file, and a
    volume and sidecar of an earlier call under these names stay as they were.

    Args:
        volume: a :class:`medvol.data.io.Volume`, array (z, y, x).
        path: the destination (NIfTI, MetaImage, NRRD; as :func:`medvol.data.io.write_volume`).
        record: what made it (model, checkpoint and its SHA-256, seed, index, label, ...).
        **write_options: passed on to :func:`medvol.data.io.write_volume` (``dtype``, ``compress``).

    Returns:
        The full record written to the sidecar (:func:`synthetic_record`).

    Raises:
        MedvolError: a failed write of the volume or of the sidecar (names the file).
    """
    from medvol.data.io import write_volume
    from medvol.utils import checked_write

    full = synthetic_record(record, volume.array, path)
    with checked_write(sidecar_path(path), "provenance sidecar") as tmp:
        tmp.write_text(json.dumps(full, indent=1, sort_keys=True), encoding="utf-8")
        write_volume(volume, path, notes=describe(full), header=header_fields(path), **write_options)
    return full


def is_marked(fields: dict[str, str]) -> list[str]:
    """The marks among a volume's free-text header fields, in words (empty: none)."""
    marks = []
    for key in TEXT_FIELDS:
        value = fields.get(key)
        if value is None:
            continue
        if (value.strip().lower() == "true") if key == META_KEY else bool(_WORD_RE.search(value)):
            marks.append(f"header {key} {value!r}")
    return marks


def read_header_fields(path: str | os.PathLike) -> dict[str, str]:
    """The free-text header fields (:data:`TEXT_FIELDS`) of a volume file, without reading voxels.

    NIfTI is read with nibabel (the header only); MetaImage, NRRD and DICOM files with SimpleITK's
    ``ReadImageInformation``. A DICOM folder has no such fields (``{}``).

    Raises:
        MedvolError: the header cannot be read (names the file).
    """
    from medvol.data.io import volume_suffix
    from medvol.utils import optional_import

    path = Path(path)
    if path.is_dir():
        return {}
    try:
        if volume_suffix(path) in _NIFTI:
            nib = optional_import("nibabel", "reading NIfTI headers")
            header = nib.load(str(path)).header
            return {key: header[key].item().decode("latin-1").rstrip("\0") for key in ("descrip", "aux_file")}
        sitk = optional_import("SimpleITK", "reading volume headers")
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return {key: reader.GetMetaData(key) for key in TEXT_FIELDS if reader.HasMetaDataKey(key)}
    except MedvolError:
        raise
    except Exception as error:  # noqa: BLE001 - a corrupt header: nibabel and ITK raise many kinds
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise MedvolError(f"{path}: cannot read its header ({reason})") from None


def read_sidecar(path: str | os.PathLike) -> dict[str, Any] | None:
    """The sidecar JSON of the volume ``path`` if it is a provenance record (has ``"synthetic"``)."""
    side = sidecar_path(path)
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    # A BIDS sidecar of a real scan (scanner parameters) is not a provenance record.
    return data if isinstance(data, dict) and isinstance(data.get("synthetic"), bool) else None


@functools.lru_cache(maxsize=64)
def _listing(folder: str, mtime_ns: int, size: int) -> dict[str, Any]:
    # Keyed by mtime and size: a folder of thousands of generated files reads its listing once.
    try:
        data = json.loads((Path(folder) / LISTING).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else {}


def listed_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The entry of ``path`` in the ``generated.json`` of its folder, if it is listed there."""
    path = Path(path)
    listing = path.parent / LISTING
    try:
        stat = listing.stat()
    except OSError:
        return None
    entry = _listing(str(path.parent), stat.st_mtime_ns, stat.st_size).get(path.name)
    return entry if isinstance(entry, dict) else None


def provenance_of(path: str | os.PathLike, *, verify: bool = False) -> dict[str, Any]:
    """Whether the volume, cache entry or cache at ``path`` is synthetic, and from what.

    Args:
        path: a volume file (or DICOM folder), a cache entry ``CACHE/volumes/NAME.npy``, a
            cache folder, or a folder of volumes (searched as ``medvol preprocess --src`` does).
        verify: for a volume with a sidecar, read its voxels and compare their SHA-256 with the
            sidecar's (``"voxels_match"``); not done for the volumes of a folder.

    Returns:
        ``{"path", "kind", "synthetic", "evidence", "record", ...}``: ``kind`` is ``"volume"``,
        ``"cache entry"`` or ``"cache"``; ``evidence`` lists every mark found, in words (empty:
        not marked); ``record`` is what made it (the sidecar, else the ``generated.json`` entry,
        else the manifest's provenance), None when unknown. A volume also has ``"header"`` (its
        free-text fields), ``"sidecar"`` (the path, or None) and ``"listed_in"``; a cache entry
        ``"cache"``, ``"name"`` and ``"source"``; a cache ``"volumes"``, ``"synthetic_names"``
        and ``"unchecked"`` (entries made before medvol recorded provenance); a folder
        (``kind`` ``"folder"``) ``"volumes"``, ``"synthetic_names"`` and ``"unmarked_names"``
        (paths relative to it).

    Raises:
        MedvolError: a missing path, a file that is not regular (a FIFO), an unreadable header, a
            malformed cache manifest, or a folder holding no volume.
    """
    from medvol.data.cache_store import MANIFEST, VOLUME_DIR, load_manifest
    from medvol.data.io import is_dicom_file, regular_file

    path = Path(path)
    if path.is_dir() and (path / MANIFEST).is_file():
        return _cache_provenance(path, load_manifest(path))
    if path.suffix.lower() == ".npy":
        cache = path.parent.parent
        if path.parent.name != VOLUME_DIR or not (cache / MANIFEST).is_file():
            raise MedvolError(f"{path}: a .npy outside a medvol cache (no {MANIFEST} beside its {VOLUME_DIR}/ folder)")
        for entry in load_manifest(cache)["volumes"]:
            if entry["file"] == f"{VOLUME_DIR}/{path.name}":
                return _entry_provenance(cache, entry)
        raise MedvolError(f"{path}: not listed in {cache / MANIFEST}")
    if not path.exists():
        raise MedvolError(f"{path}: no such file or folder")
    regular_file(path)
    if path.is_dir() and not any(is_dicom_file(f) for f in sorted(path.iterdir()) if not f.name.startswith(".")):
        return _folder_provenance(path)
    fields = read_header_fields(path)
    evidence = is_marked(fields)
    sidecar = read_sidecar(path)
    if sidecar is not None and sidecar["synthetic"]:
        evidence.append(f"sidecar {sidecar_path(path).name}")
    listed = listed_record(path)
    if listed is not None:
        evidence.append(f"listed in {path.parent / LISTING}")
    record = sidecar if sidecar is not None and sidecar["synthetic"] else listed
    result = {"path": str(path), "kind": "volume", "synthetic": bool(evidence), "evidence": evidence,
              "record": record, "header": fields,
              "sidecar": str(sidecar_path(path)) if sidecar is not None else None,
              "listed_in": str(path.parent / LISTING) if listed is not None else None}
    if verify and record is not None and record.get("voxels_sha256"):
        from medvol.data.io import read_volume

        result["voxels_match"] = voxels_sha256(read_volume(path).array) == record["voxels_sha256"]
    return result


def _folder_provenance(folder: Path) -> dict[str, Any]:
    """A folder that is neither a cache nor a DICOM series: each of its volumes, counted."""
    from medvol.data.discover import discover

    files = discover(folder)  # none: a one-line error naming the folder
    marked, unmarked = [], []
    for file in files:
        (marked if provenance_of(file)["synthetic"] else unmarked).append(file.relative_to(folder).as_posix())
    evidence = [f"{len(marked)} of {len(files)} volumes marked synthetic"] if marked else []
    return {"path": str(folder), "kind": "folder", "synthetic": bool(marked), "evidence": evidence, "record": None,
            "volumes": len(files), "synthetic_names": marked, "unmarked_names": unmarked}


def _entry_provenance(cache: Path, entry: dict[str, Any]) -> dict[str, Any]:
    flag = entry.get("synthetic")
    evidence = [f"manifest entry {entry['name']!r}: synthetic"] if flag is True else []
    return {"path": str(cache / entry["file"]), "kind": "cache entry", "synthetic": flag is True,
            "evidence": evidence, "record": entry.get("provenance"), "cache": str(cache),
            "name": entry["name"], "source": entry["source"], "checked": isinstance(flag, bool)}


def _cache_provenance(cache: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    entries = manifest["volumes"]
    names = [e["name"] for e in entries if e.get("synthetic") is True]
    unchecked = [e["name"] for e in entries if not isinstance(e.get("synthetic"), bool)]
    evidence = [f"manifest: {len(names)} of {len(entries)} entries synthetic"] if names else []
    found = {"path": str(cache), "kind": "cache", "synthetic": bool(names), "evidence": evidence, "record": None,
             "volumes": len(entries), "synthetic_names": names, "unchecked": unchecked,
             "dims": 2 if manifest.get("dims") == 2 else 3}
    if found["dims"] == 2:  # a 2D image cache: what it holds, as a classifier or a 2D model would read it
        params = manifest.get("params") or {}
        classes = manifest.get("classes")
        counts = [sum(int(e.get("label", 0)) == k for e in entries) for k in range(len(classes or []))]
        found.update(size=params.get("size"), source=params.get("source"),
                     colour="rgb" if params.get("colour") == "rgb" else "grey",
                     classes=dict(zip(classes, counts)) if classes else None,
                     split={"mode": (manifest.get("split") or {}).get("mode"),
                            **{k: sum(e.get("split") == k for e in entries) for k in ("train", "val")}})
    return found


def source_marks(sources: Iterable[str | os.PathLike]) -> dict[str, dict[str, Any]]:
    """What a cache manifest records about each source: ``{"synthetic": bool[, "provenance"]}``.

    A source whose header cannot be read counts as unmarked here: preprocessing reads it next
    and reports the bad file itself.
    """
    marks = {}
    for source in sources:
        try:
            found = provenance_of(source)
        except MedvolError:
            marks[str(source)] = {"synthetic": False}
            continue
        if found["synthetic"]:
            provenance = dict(found["record"] or {}, evidence=found["evidence"])
            marks[str(source)] = {"synthetic": True, "provenance": provenance}
        else:
            marks[str(source)] = {"synthetic": False}
    return marks


def refuse_synthetic_sources(marks: dict[str, dict[str, Any]]) -> None:
    """Raise a one-line error naming the first marked source of ``marks`` (:func:`source_marks`)."""
    marked = [s for s, m in marks.items() if m["synthetic"]]
    if not marked:
        return
    first = marked[0]
    more = f"; {len(marked) - 1} more of the {len(marks)} volumes are marked too" if len(marked) > 1 else ""
    raise MedvolError(f"{first}: marked synthetic ({marks[first]['provenance']['evidence'][0]}){more}; "
                      f"refusing generated volumes as training data: pass {PREPROCESS_FLAG} to preprocess "
                      "them anyway (the manifest records them as synthetic)")


def synthetic_entries(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The manifest entries that are synthetic: marked so, or (entries made before medvol recorded
    provenance) whose source file still exists and is marked."""
    found = []
    for entry in entries:
        flag = entry.get("synthetic")
        if isinstance(flag, bool):
            if flag:
                found.append(entry)
            continue
        source = Path(entry.get("source", ""))
        if source.exists():
            try:
                if provenance_of(source)["synthetic"]:
                    found.append(entry)
            except MedvolError:
                pass  # an unreadable source cannot be judged; its cached array was made earlier
    return found


def refuse_synthetic_entries(cache: str | os.PathLike, entries: list[dict[str, Any]], split: str,
                             allow: bool) -> list[str]:
    """Names of the synthetic entries among ``entries``; raise unless ``allow``.

    Raises:
        MedvolError: one line naming the cache, the count and a first entry, and how to allow it.
    """
    marked = synthetic_entries(entries)
    if marked and not allow:
        first = marked[0]
        raise MedvolError(f"{cache}: {len(marked)} of its {len(entries)} {split} volume(s) are marked synthetic "
                          f"(e.g. {first['name']!r} from {first.get('source', '?')}); refusing them as real "
                          f"training data: set {CONFIG_KEY}: true (--{CONFIG_KEY} true) to use them anyway")
    return [e["name"] for e in marked]

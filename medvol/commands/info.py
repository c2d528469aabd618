"""``medvol info``: trainable parameter counts of a model at a size, per sub-network; or, given a
PATH, the provenance of a volume, cache entry, cache or folder of volumes (synthetic or not, and from what)."""

from __future__ import annotations

import argparse
import json


#: What a Ctrl-C leaves (``medvol.cli``).
INTERRUPTED = "nothing was written"
#: What a 2D cache's images were made from (its ``params.source``), in words.
FROM = {"images": "of image files", "slices": "axial slices of volumes"}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "info",
        help="parameter counts of a model, or the provenance of a volume",
        description="Print the trainable parameter counts of a model per sub-network "
        "(3D: G, D, E, sub_E or crf, total; 2D: G, D, total). Nothing is allocated: the model is built "
        "on the meta device. With PATH instead: whether the volume (or cache entry CACHE/volumes/NAME.npy, "
        "or cache folder) is marked synthetic, the marks found (header, sidecar JSON, generated.json, "
        "cache manifest) and what made it; given a folder of volumes (e.g. a `medvol generate` output), how "
        "many it holds and how many of them are marked synthetic. A folder without volumes is an error.",
    )
    parser.add_argument("path", nargs="?",
                        help="a volume file, cache entry, cache folder or folder of volumes: print its provenance")
    parser.add_argument("--model", help="hagan, crfgan, ldm (3D) or dcgan, mlpgan, stylegan2, fastgan, spade, pix2pix, cyclegan, ldm2d (2D)")
    parser.add_argument("--size", type=int,
                        help="volume side: 64, 128, 256, 512; 2D image side: 64, 128, 256 (or 32)")
    parser.add_argument("--base-width", type=int, default=None,
                        help="base width c (default: the model's own: 32 for the 3D models, dcgan 64, mlpgan 256, the others 64)")
    parser.add_argument("--latent-dim", type=int, default=None,
                        help="latent length (default: the published one: 1024, dcgan and mlpgan 100)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a model build option, e.g. channels=2 or spectral_norm_d=true (repeatable)")
    parser.add_argument("--num-classes", type=int, default=0, help="classes of the conditional variant")
    parser.add_argument("--mask-channels", type=int, default=0,
                        help="label-map channels of the paired image + mask variant (default 0: the published networks)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    import yaml

    from medvol.errors import MedvolError
    from medvol.models import build

    if args.path is not None:
        if args.model is not None:
            raise MedvolError(f"give either PATH ({args.path}) or --model, not both")
        return _provenance(args.path, args.json)
    if args.model is None or args.size is None:
        raise MedvolError("give --model NAME --size S (parameter counts) or a PATH (provenance of a volume)")
    options = {}
    for item in args.option:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise MedvolError(f"--option {item!r}: expected KEY=VALUE")
        options[key] = yaml.safe_load(text) if text.strip() else text
    with torch.device("meta"):
        system = build(
            args.model,
            args.size,
            base_width=args.base_width,
            latent_dim=args.latent_dim,
            num_classes=args.num_classes,
            mask_channels=args.mask_channels,
            **options,
        )
    counts = system.param_counts()
    if args.json:
        print(json.dumps(counts))
        return 0
    shape = f"{args.size}^{system.dims}"
    masks = f", mask channels {args.mask_channels}" if args.mask_channels else ""
    print(f"{args.model} @ {shape} (base width {system.base_width}, latent {system.latent_dim}, "
          f"classes {args.num_classes}{masks})")
    for key, value in counts.items():
        print(f"  {key:<6} {value:>14,}  ({value / 1e6:.2f}M)")
    return 0


def _provenance(path: str, as_json: bool) -> int:
    from medvol.data.provenance import provenance_of

    found = provenance_of(path, verify=True)
    if as_json:
        print(json.dumps(found, sort_keys=True))
        return 0
    for line in provenance_lines(found):
        print(line)
    return 0


def provenance_lines(found: dict) -> list[str]:
    """Human-readable lines of a :func:`medvol.data.provenance.provenance_of` result."""
    verdict = "SYNTHETIC" if found["synthetic"] else "not marked synthetic"
    if found["kind"] == "folder":
        lines = [f"{found['path']}: folder of {found['volumes']} volume(s), {len(found['synthetic_names'])} "
                 "marked synthetic (give one file to see what made it and check its voxels)"]
        for what, key in (("synthetic", "synthetic_names"), ("not marked", "unmarked_names")):
            names = found[key]
            if names and len(names) < found["volumes"]:
                more = f" and {len(names) - 5} more" if len(names) > 5 else ""
                lines.append(f"  {what}: {', '.join(names[:5])}{more}")
        return lines
    if found["kind"] == "cache" and found.get("dims") == 2:
        split = found["split"]
        classes = ", ".join(f"{name} {n}" for name, n in found["classes"].items()) if found["classes"] else "none"
        lines = [f"{found['path']}: medvol 2D image cache (dims 2) of {found['volumes']} image(s), "
                 f"{len(found['synthetic_names'])} marked synthetic",
                 f"  {found['size']}x{found['size']} {found['colour']}, {FROM.get(found['source'], found['source'])}; "
                 f"classes: {classes}; "
                 f"split {split['mode']}: train {split['train']}, val {split['val']}"]
    elif found["kind"] == "cache":
        lines = [f"{found['path']}: medvol cache of {found['volumes']} volume(s), "
                 f"{len(found['synthetic_names'])} marked synthetic"]
    if found["kind"] == "cache":
        if found["synthetic_names"]:
            lines.append(f"  synthetic: {', '.join(found['synthetic_names'])}")
        if found["unchecked"]:
            lines.append(f"  made before provenance was recorded (unchecked): {', '.join(found['unchecked'])}")
        return lines
    if found["kind"] == "cache entry":
        lines = [f"{found['path']}: {verdict} (entry {found['name']!r} of the cache {found['cache']}, "
                 f"from {found['source']})"]
        if not found["checked"]:
            lines.append("  the entry was made before medvol recorded provenance: check its source")
    else:
        lines = [f"{found['path']}: {verdict}"]
        header = ", ".join(f"{k} {v!r}" for k, v in found["header"].items()) or "none"
        lines.append(f"  header text: {header}")
    for mark in found["evidence"]:
        lines.append(f"  mark: {mark}")
    record = found.get("record")
    if found["synthetic"] and not record:
        lines.append("  no sidecar or listing beside it: only the header says what made it")
    if record:
        lines.append(f"  model {record.get('model', '?')}, checkpoint {record.get('checkpoint', '?')} "
                     f"(iteration {record.get('iteration', '?')})")
        lines.append(f"  checkpoint sha256 {record.get('checkpoint_sha256', '?')}")
        lines.append(f"  seed {record.get('seed', '?')}, index {record.get('index', '?')}, "
                     f"label {record.get('label')}, medvol {record.get('medvol_version', '?')}, "
                     f"created {record.get('created', '?')}")
        trained = record.get("training_data") or {}
        if "synthetic_volumes" in trained:
            lines.append(f"  trained on {trained.get('volumes', '?')} volume(s) of {trained.get('source', '?')}, "
                         f"{trained['synthetic_volumes']} of them synthetic")
    if "voxels_match" in found:
        lines.append("  voxels match the sidecar's checksum" if found["voxels_match"] else
                     "  voxels DIFFER from the sidecar's checksum: the file was changed after generation")
    return lines

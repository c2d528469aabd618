"""2D evaluation: the samples of a 2D model scored against the slices it was trained on.

``medvol evaluate`` takes this path when ``--fake`` is a 2D model's checkpoint or run, or a folder
of 2D images (:func:`medvol.eval.sources.probe`). Every sample is one image ``(S, S)`` in [-1, 1];
N counts images, and the bootstrap resamples images. Mask channels (a model trained with
``data.masks``) are dropped: Inception sees the image channel only.

Sources (:mod:`medvol.eval.sources`):

- ``--fake`` a 2D checkpoint or run folder: images generated on the fly, ``batch`` at a time
  (:class:`~medvol.eval.sources.GeneratedImages`); image ``i`` is sample ``i`` of ``--seed``, so
  the set does not depend on the batch size or the device.
- ``--fake`` a folder (or one file) of 2D images: ``.png`` (8- or 16-bit grey, one image per file;
  grids are not split) or 2D NIfTI ``.nii`` / ``.nii.gz`` (CT in HU, mapped to [-1, 1] with the
  training window; MR taken as [-1, 1]); files whose name ends in ``_mask`` are skipped, and so
  are medvol's own previews (``grid_0000.png``, ``sample_0000_views.png``, listed as such in the
  folder's ``generated.json``).
- ``--real data`` (with a 2D checkpoint): the run's own training slices, built by the trainer's
  :func:`medvol.train.data.build_dataset` from the checkpoint's ``data`` config, so the real set
  is exactly what the model saw (plane, size, blank slices, mask channel, slice class).
- ``--real phantom[:SEED]`` / ``--real CACHE``: the same slice settings (the checkpoint's, or
  ``--plane`` and the images' size for an image folder) over phantoms of that seed (default
  ``--seed``) or over a cache's ``--split``; a 2D image cache (``medvol preprocess --images``) gives
  its images, with the cache's channels (1 grey, 3 RGB; channel 0 is fed, as on the fake side).

Of a real set larger than N, N slices are drawn without replacement with ``--seed``.

``--metrics factors`` scores the phantom slice factors (:func:`medvol.eval.factors.score_slices`);
it needs axial slices of phantoms as the real side and no extractor.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from medvol.errors import MedvolError
from medvol.eval.scores import check_counts, check_logits, metric_names, volume_vectors
from medvol.eval.sources import (DEFAULT_N, IMAGE_SUFFIXES, PREVIEW_KINDS, Checksums, GeneratedImages,  # noqa: F401
                                 ImageFiles, RealSlices, image_files, is_preview, marked_synthetic, read_image,
                                 real_slices, synthetic_real)


def memo_key(*parts) -> str:
    """A stable key of the real set's definition, for the caller's feature memo."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def image_pairs(report: dict, real: str, fake: str, *, sampler, files, features, metrics, n, size,
                modality, window, plane, split, seed, batch, device, progress, memo,
                allow_synthetic_real: bool = False, strict: bool = False) -> list:
    """Extract the 2D features of both sides; fill ``report`` (sources, provenance).

    A real image folder holding images marked synthetic is refused unless
    ``allow_synthetic_real``; ``n`` larger than a set warns (refused with ``strict``).

    Returns:
        ``[(extractor info, real FeatureSet, fake FeatureSet), ...]``, one per extractor, for
        :func:`medvol.eval.evaluate.evaluate` to score.
    """
    from medvol.data.preprocess import PreprocessParams
    from medvol.eval.features import get_extractor

    allowed = metric_names(dims=2)
    other = [m for m in metrics if m not in allowed]
    if other:
        raise MedvolError(f"--metrics {other[0]}: not available for 2D images; choose from {', '.join(allowed)}")
    if n is not None and n < 2:
        raise MedvolError(f"--n {n}: need at least 2 images per set")
    if modality == "ct" and window is None:
        window = PreprocessParams.__dataclass_fields__["window"].default
    nifti_window = window if modality == "ct" else None
    if sampler is not None:
        src_fake = GeneratedImages(sampler, n or DEFAULT_N, seed, batch, device)
        src_fake.info["source"] = fake
        cfg = sampler.cfg
    else:
        src_fake = ImageFiles(fake, files, n, nifti_window)
        cfg = None
    if size is not None and size != src_fake.size:
        raise MedvolError(f"--fake {fake}: the images are {src_fake.size}^2, --size asks for {size}")
    real_files = image_files(real)
    if real_files is not None:
        src_real = ImageFiles(real, real_files, n, nifti_window, role="real")
        real_def = ("files", str(Path(real).resolve()), [p.name for p in src_real.files])
        synthetic_real(src_real.info, [p.name for p in marked_synthetic(src_real.files)], len(src_real.files),
                       allow_synthetic_real, real, "images")
    else:
        src_real = real_slices(real, cfg, size=src_fake.size, plane=plane, split=split, n=n, seed=seed,
                               allow_synthetic_real=allow_synthetic_real)
        real_def = ("slices", src_real.info["data"], list(map(int, src_real.indices)))
    if src_real.size != src_fake.size:
        raise MedvolError(f"--real images are {src_real.size}^2 but --fake images are {src_fake.size}^2")
    check_counts(report, n, len(src_real.names), len(src_fake.names), "images", strict)
    only_factors = set(metrics) == {"factors"}
    if "factors" in metrics:  # phantom ground truth on axial slices (medvol.eval.factors.score_slices)
        from medvol.eval.factors import check_phantom_slices, score_slices

        check_phantom_slices(src_real)
    extractors = [] if only_factors else [get_extractor(spec, device=device, seed=seed, batch=batch)
                                          for spec in features]
    if not extractors and not only_factors:
        raise MedvolError("--features: give at least one extractor")
    for spec, ext in zip(features, extractors):
        if ext.dims != 2:
            raise MedvolError(f"--features {spec}: scores volumes, not 2D images (use inception)")
    check_logits(features, extractors, metrics)

    def run(ext, src, role):
        wrap = None if progress is None else (
            lambda it: progress(it, len(src.names), f"features {ext.name} {role}", "image"))
        return ext.extract(src, progress=wrap)

    # The factor metric scores the arrays the feature pass reads (kept on the way through), so a
    # 2D checkpoint's images are generated and the real set is read only once for both.
    factors = "factors" in metrics
    real_kept = fake_kept = None
    pairs = []
    set_sha256 = None
    if only_factors:  # no extractor reads the real set: checksum it here
        sums = Checksums(src_real, keep=True)
        for _ in sums:
            pass
        set_sha256, real_kept = sums.set_sha256(), sums.arrays
    for spec, ext in zip(features, extractors):
        key = ("real2d", memo_key(real_def, spec, ext.weights_sha256, size, seed))
        if key not in memo:
            sums = Checksums(src_real, keep=factors and real_kept is None)
            memo[key] = run(ext, sums, "real")
            memo[("set_sha256",) + key] = sums.set_sha256()
            real_kept = sums.arrays if sums.keep else real_kept
        set_sha256 = memo[("set_sha256",) + key]
        fake = Checksums(src_fake, keep=True) if factors and fake_kept is None else src_fake
        pairs.append((ext.info(), memo[key], run(ext, fake, "fake")))
        fake_kept = fake.arrays if fake is not src_fake else fake_kept
    if factors:
        report["factors"] = score_slices(real_kept if real_kept is not None else [a for _, a in src_real],
                                         fake_kept if fake_kept is not None else [a for _, a in src_fake],
                                         src_real.dataset.spacing, src_real.dataset.window)
    report["real"] = dict(src_real.info, n_images=len(src_real.names), names=src_real.names, set_sha256=set_sha256)
    report["fake"] = dict(src_fake.info, n_images=len(src_fake.names), names=src_fake.names)
    if pairs:
        report["_scatter"] = (pairs[0][0]["extractor"], volume_vectors(pairs[0][1]),
                              volume_vectors(pairs[0][2]), "image")
    return pairs

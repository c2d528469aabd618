"""``build(name, size, **options)``: the one way to make a model."""

from __future__ import annotations

from medvol.errors import MedvolError
from medvol.models.crfgan import CRFGAN
from medvol.models.hagan import HAGAN
from medvol.models.networks import SIZES
from medvol.models.system import GANSystem

MODELS: dict[str, type[GANSystem]] = {"hagan": HAGAN, "crfgan": CRFGAN}


def build(
    name: str, size: int, *, base_width: int = 32, latent_dim: int = 1024, num_classes: int = 0,
    **options: object,
) -> GANSystem:
    """Build a GAN system in reference mode, training mode, on the current default device.

    Args:
        name: "hagan" or "crfgan".
        size: volume side S: 64, 128, 256, 512 (32: a tiny size for tests and demos).
        base_width: generator base width c (32 published; D and the sub-encoder scale with it).
            An even number >= 2.
        latent_dim: length of z (1024 published).
        num_classes: K > 0 builds the class-conditional variant (one-hot label into G,
            auxiliary classifier on D).
        **options: model-specific options, all defaulting to the published procedure
            (CRF-GAN: ``crf_forwards``, ``crf_layout``, ``crf_self_pairs``; see
            :class:`medvol.models.crfgan.CRFGAN`). HA-GAN takes none.

    Raises:
        MedvolError: unknown name, unsupported size, or an invalid option.

    Example:
        >>> system = build("crfgan", 32, base_width=4, latent_dim=32)
        >>> sorted(system.param_counts())
        ['D', 'E', 'G', 'crf', 'total']
    """
    if name not in MODELS:
        raise MedvolError(f"model: unknown model {name!r} (choose {', '.join(MODELS)})")
    if isinstance(size, bool) or size not in SIZES:
        raise MedvolError(f"size: {name} supports sizes {', '.join(map(str, SIZES))}, not {size!r}")
    if not isinstance(base_width, int) or base_width < 2 or base_width % 2:
        raise MedvolError(f"base_width: expected an even integer >= 2, got {base_width!r}")
    if not isinstance(latent_dim, int) or latent_dim < 1:
        raise MedvolError(f"latent_dim: expected a positive integer, got {latent_dim!r}")
    if not isinstance(num_classes, int) or num_classes < 0:
        raise MedvolError(f"num_classes: expected an integer >= 0, got {num_classes!r}")
    allowed = MODEL_OPTIONS[name]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        known = ", ".join(allowed) or "none"
        raise MedvolError(f"model option {unknown[0]!r}: {name} has no such option (its options: {known})")
    return MODELS[name](size, base_width=base_width, latent_dim=latent_dim, num_classes=num_classes, **options)


#: Model-specific build options and their published defaults.
MODEL_OPTIONS: dict[str, dict[str, object]] = {
    "hagan": {},
    "crfgan": {"crf_forwards": "fresh", "crf_layout": "channels", "crf_self_pairs": True},
}


def build_from_config(model) -> GANSystem:
    """``build`` with a :class:`medvol.config.ModelConfig` (its ``crf_*`` keys go to CRF-GAN only;
    for HA-GAN they must keep their defaults)."""
    options = {key: getattr(model, key) for key in MODEL_OPTIONS["crfgan"]}
    if model.name != "crfgan":
        changed = [key for key, value in options.items() if value != MODEL_OPTIONS["crfgan"][key]]
        if changed:
            raise MedvolError(f"model.{changed[0]}: only for crfgan, not {model.name}")
        options = {}
    return build(model.name, model.size, base_width=model.base_width, latent_dim=model.latent_dim,
                 num_classes=model.num_classes, **options)

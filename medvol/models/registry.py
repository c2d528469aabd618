"""``build(name, size, **options)``: the one way to make a model."""

from __future__ import annotations

import dataclasses

from medvol.errors import MedvolError
from medvol.models.crfgan import CRFGAN
from medvol.models.gan2d import DCGAN, DCGAN_OPTIONS, MLPGAN, MLPGAN_OPTIONS, SIZES_2D
from medvol.models.gan2d import FASTGAN_OPTIONS, PIX2PIX_OPTIONS, SPADE_OPTIONS, STYLEGAN2_OPTIONS
from medvol.models.gan2d import FastGAN, Pix2Pix, SPADEModel, StyleGAN2
from medvol.models.hagan import HAGAN
from medvol.models.networks import SIZES
from medvol.models.system import GANSystem

MODELS: dict[str, type[GANSystem]] = {
    "hagan": HAGAN, "crfgan": CRFGAN,
    "dcgan": DCGAN, "mlpgan": MLPGAN, "stylegan2": StyleGAN2, "fastgan": FastGAN, "spade": SPADEModel,
    "pix2pix": Pix2Pix,
}
#: Sizes each model supports (3D: the volume side; 2D: the image side).
MODEL_SIZES: dict[str, tuple[int, ...]] = {name: SIZES if name in ("hagan", "crfgan") else SIZES_2D for name in MODELS}
#: ``(base_width, latent_dim)`` when not given: the published values of each model. stylegan2:
#: c = 64 (config-f halved, docs/models2d.md), z and w of 512 as the paper; pix2pix has no latent:
#: its z (4 numbers per image) only seeds generation's dropout.
MODEL_DEFAULTS: dict[str, tuple[int, int]] = {
    "hagan": (32, 1024), "crfgan": (32, 1024), "dcgan": (64, 100), "mlpgan": (256, 100), "stylegan2": (64, 512),
    "fastgan": (64, 256), "spade": (64, 256), "pix2pix": (64, 4),
}


def build(
    name: str, size: int, *, base_width: int | None = None, latent_dim: int | None = None,
    num_classes: int = 0, mask_channels: int = 0, **options: object,
) -> GANSystem:
    """Build a GAN system in reference mode, training mode, on the current default device.

    Args:
        name: "hagan", "crfgan" (3D) or "dcgan", "mlpgan", "stylegan2", "fastgan", "spade",
            "pix2pix" (2D, docs/models2d.md).
        size: volume side S: 64, 128, 256, 512; image side 64, 128, 256 for the 2D models
            (32: a tiny size for tests and demos).
        base_width: generator base width c (32 published; D and the sub-encoder scale with it;
            dcgan: its filters, 64; mlpgan: G's first hidden width, 256). An even number >= 2;
            None: the model's published value.
        latent_dim: length of z (1024 published; 100 for dcgan and mlpgan); None: the published.
        num_classes: K > 0 builds the class-conditional variant (one-hot label into G,
            auxiliary classifier on D).
        mask_channels: K > 0 builds the paired image + mask variant (hagan, crfgan and the
            unconditional 2D models): G outputs and D (E, G^L, D^L) read 1 + K channels, the image
            then one per label-map class (docs/models.md "Paired image + mask generation"); 2D
            models then take no ``channels`` option. 0: the published networks.
        **options: model-specific options, all defaulting to the published procedure
            (CRF-GAN: ``crf_forwards``, ``crf_layout``, ``crf_self_pairs``, ``crop_depth``,
            ``d_minibatch_std``; see :class:`medvol.models.crfgan.CRFGAN`; HA-GAN: ``crop_depth``,
            ``d_minibatch_std``; dcgan: ``loss`` and the search-grid options, see
            :class:`medvol.models.gan2d.DCGAN`; mlpgan: ``channels``; the other 2D models: their
            ``*_OPTIONS`` tables in :mod:`medvol.models.gan2d`).

    Raises:
        MedvolError: unknown name, unsupported size, or an invalid option.

    Example:
        >>> system = build("crfgan", 32, base_width=4, latent_dim=32)
        >>> sorted(system.param_counts())
        ['D', 'E', 'G', 'crf', 'total']
    """
    if name not in MODELS:
        raise MedvolError(f"model: unknown model {name!r} (choose {', '.join(MODELS)})")
    if isinstance(size, bool) or size not in MODEL_SIZES[name]:
        raise MedvolError(f"size: {name} supports sizes {', '.join(map(str, MODEL_SIZES[name]))}, not {size!r}")
    default_width, default_latent = MODEL_DEFAULTS[name]
    base_width = default_width if base_width is None else base_width
    latent_dim = default_latent if latent_dim is None else latent_dim
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
    if isinstance(mask_channels, bool) or not isinstance(mask_channels, int) or mask_channels < 0:
        raise MedvolError(f"mask_channels: expected an integer >= 0, got {mask_channels!r}")
    if not mask_channels:
        return MODELS[name](size, base_width=base_width, latent_dim=latent_dim, num_classes=num_classes, **options)
    if name in ("spade", "pix2pix"):
        raise MedvolError(f"mask_channels: {name} draws images from given masks (channels 2 with data.masks); "
                          "paired generation is for hagan, crfgan, dcgan, mlpgan, stylegan2 and fastgan")
    if MODELS[name].dims == 3:
        return MODELS[name](size, base_width=base_width, latent_dim=latent_dim, num_classes=num_classes,
                            mask_channels=mask_channels, **options)
    if options.get("channels", 1) != 1:
        raise MedvolError(f"channels: {options['channels']} with mask_channels {mask_channels}; channels counts "
                          f"the image and the binary mask of data.masks, leave it at 1 (the model gets "
                          f"1 + {mask_channels} channels)")
    # The 2D networks are channel-generic: the paired variant is the 1 + K channel network.
    system = MODELS[name](size, base_width=base_width, latent_dim=latent_dim, num_classes=num_classes,
                          **{**options, "channels": 1 + mask_channels})
    system.mask_channels = mask_channels
    return system


#: Model-specific build options and their published defaults.
MODEL_OPTIONS: dict[str, dict[str, object]] = {
    "hagan": {"crop_depth": 0, "d_minibatch_std": False},
    "crfgan": {"crf_forwards": "fresh", "crf_layout": "channels", "crf_self_pairs": True, "crop_depth": 0,
               "d_minibatch_std": False},
    "dcgan": DCGAN_OPTIONS,
    "mlpgan": MLPGAN_OPTIONS,
    "stylegan2": STYLEGAN2_OPTIONS,
    "fastgan": FASTGAN_OPTIONS,
    "spade": SPADE_OPTIONS,
    "pix2pix": PIX2PIX_OPTIONS,
}

#: The models whose G step adds the mode-seeking term (GANSystem's and GANSystem2D's own G step).
MODE_SEEKING = ("crfgan", "hagan", "dcgan", "mlpgan")


def build_from_config(model) -> GANSystem:
    """``build`` with a :class:`medvol.config.ModelConfig`.

    Its model-specific keys (``crf_*``, ``loss`` and the other dcgan options, ``channels``) go to
    the models that have them; for any other model they must keep their defaults.
    """
    own = MODEL_OPTIONS[model.name]
    # A key another model owns must keep the config's default (a table's default may differ:
    # spade and pix2pix need channels 2).
    unset = {f.name: f.default for f in dataclasses.fields(model)}
    for other, table in MODEL_OPTIONS.items():
        for key in table:
            if key not in own and getattr(model, key) != unset[key]:
                owners = " and ".join(n for n, t in MODEL_OPTIONS.items() if key in t)
                raise MedvolError(f"model.{key}: only for {owners}, not {model.name}")
    options = {key: getattr(model, key) for key in own}
    system = build(model.name, model.size, base_width=model.base_width, latent_dim=model.latent_dim,
                   num_classes=model.num_classes, mask_channels=model.mask_channels, **options)
    if model.mode_seeking > 0:
        if model.name not in MODE_SEEKING:
            raise MedvolError(f"model.mode_seeking: only for {', '.join(MODE_SEEKING)}, not {model.name}")
        system.mode_seeking = float(model.mode_seeking)
    if model.g_ema_half_life > 0:
        try:
            system.enable_g_ema(model.g_ema_half_life)
        except MedvolError as error:
            raise MedvolError(f"model.{error}") from None
    return system

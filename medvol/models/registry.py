"""The one table of models, and ``build(name, size, **options)``: the one way to make a model.

Every other list of models is read from :data:`REGISTRY`: the config's ``model.name``, the build
options, the CLI's checks, ``medvol profile``'s cases and report names, and the contract tests
(tests/models/test_contract.py). A new model is one module (a :class:`GenerativeSystem`
subclass) and one :class:`ModelSpec` here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from medvol.errors import MedvolError
from medvol.models.contract import GenerativeSystem
from medvol.models.crfgan import CRFGAN
from medvol.models.diffusion import LDM_SIZES_2D, LDM_SIZES_3D, LatentDiffusion, LatentDiffusion2D, LDMOptions
from medvol.models.gan2d import DCGAN, DCGAN_OPTIONS, MLPGAN, MLPGAN_OPTIONS, SIZES_2D
from medvol.models.gan2d import FASTGAN_OPTIONS, PIX2PIX_OPTIONS, SPADE_OPTIONS, STYLEGAN2_OPTIONS
from medvol.models.gan2d import CycleGAN, CycleGANOptions, FastGAN, Pix2Pix, SPADEModel, StyleGAN2
from medvol.models.hagan import HAGAN
from medvol.models.networks import SIZES

#: What a model does with ``mask_channels`` K > 0: "native" (its constructor takes it), "channels"
#: (a channel-generic 2D network built with 1 + K channels), "none" (refused).
PAIRED = ("native", "channels", "none")
#: In a stage's options: the run folder of the stage before it (tests and docs put the path there).
PREVIOUS_STAGE = "<previous stage's run>"
#: The latent diffusion model's two stages: the autoencoder, then the denoiser on its latents.
STAGES = ({"stage": "autoencoder"}, {"stage": "diffusion", "autoencoder": PREVIOUS_STAGE})


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry.

    Attributes:
        name: the registry name (``model.name`` of a config, ``--model`` of the CLI).
        system: the :class:`GenerativeSystem` subclass, called as
            ``system(size, base_width=, latent_dim=, num_classes=, [mask_channels=,] **options)``.
        dims: 3 (volumes) or 2 (images).
        sizes: the sizes it supports (3D: the volume side; 2D: the image side).
        base_width, latent_dim: the published values, used when a build gives none.
        options: the model's build options and their published defaults: a dict (the GANs, whose
            options are flat keys of ``ModelConfig``, as their configs and checkpoints spell them)
            or an options dataclass (set under ``model.options`` of a config).
        title: the name reports print ("CRF-GAN").
        mode_seeking: whether its G step adds the mode-seeking term (``model.mode_seeking``).
        paired: what it does with ``mask_channels`` (:data:`PAIRED`).
        stages: its training stages in order, each as the options that select it (one run per
            stage; the last stage's checkpoints sample). One stage for the GANs.
    """

    name: str
    system: type[GenerativeSystem]
    dims: int
    sizes: tuple[int, ...]
    base_width: int
    latent_dim: int
    options: Any = dataclasses.field(default_factory=dict)
    title: str = ""
    mode_seeking: bool = False
    paired: str = "none"
    stages: tuple[dict[str, object], ...] = ({},)

    def option_defaults(self) -> dict[str, object]:
        """The options and their defaults as a dict."""
        if dataclasses.is_dataclass(self.options):
            return {f.name: getattr(self.options(), f.name) for f in dataclasses.fields(self.options)}
        return dict(self.options)

    @property
    def flat_options(self) -> bool:
        """True when the options are flat ``ModelConfig`` keys (the GANs), not ``model.options``."""
        return not dataclasses.is_dataclass(self.options)


#: The models, in the order lists print them. stylegan2: c = 64 (config-f halved,
#: docs/models2d.md), z and w of 512 as the paper; pix2pix has no latent: its z (4 numbers per
#: image) only seeds generation's dropout; ldm: latent_dim is the autoencoder's latent channels.
REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("hagan", HAGAN, 3, SIZES, 32, 1024, {"crop_depth": 0, "d_minibatch_std": False}, "HA-GAN", True,
              "native"),
    ModelSpec("crfgan", CRFGAN, 3, SIZES, 32, 1024,
              {"crf_forwards": "fresh", "crf_layout": "channels", "crf_self_pairs": True, "crop_depth": 0,
               "d_minibatch_std": False}, "CRF-GAN", True, "native"),
    ModelSpec("dcgan", DCGAN, 2, SIZES_2D, 64, 100, DCGAN_OPTIONS, "DCGAN", True, "channels"),
    ModelSpec("mlpgan", MLPGAN, 2, SIZES_2D, 256, 100, MLPGAN_OPTIONS, "MLP-GAN", True, "channels"),
    ModelSpec("stylegan2", StyleGAN2, 2, SIZES_2D, 64, 512, STYLEGAN2_OPTIONS, "StyleGAN2", False, "channels"),
    ModelSpec("fastgan", FastGAN, 2, SIZES_2D, 64, 256, FASTGAN_OPTIONS, "FastGAN", False, "channels"),
    ModelSpec("spade", SPADEModel, 2, SIZES_2D, 64, 256, SPADE_OPTIONS, "SPADE", False, "none"),
    ModelSpec("pix2pix", Pix2Pix, 2, SIZES_2D, 64, 4, PIX2PIX_OPTIONS, "Pix2Pix", False, "none"),
    ModelSpec("cyclegan", CycleGAN, 2, SIZES_2D, 64, 1, CycleGANOptions, "CycleGAN", False, "none"),
    ModelSpec("ldm", LatentDiffusion, 3, LDM_SIZES_3D, 32, 4, LDMOptions, "LDM", False, "native", STAGES),
    ModelSpec("ldm2d", LatentDiffusion2D, 2, LDM_SIZES_2D, 32, 4, LDMOptions, "LDM 2D", False, "native", STAGES),
)}

# Views of the table, kept for the callers that read them by these names.
MODELS: dict[str, type[GenerativeSystem]] = {name: spec.system for name, spec in REGISTRY.items()}
#: Sizes each model supports (3D: the volume side; 2D: the image side).
MODEL_SIZES: dict[str, tuple[int, ...]] = {name: spec.sizes for name, spec in REGISTRY.items()}
#: ``(base_width, latent_dim)`` when not given: the published values of each model.
MODEL_DEFAULTS: dict[str, tuple[int, int]] = {name: (s.base_width, s.latent_dim) for name, s in REGISTRY.items()}
#: Model-specific build options and their published defaults.
MODEL_OPTIONS: dict[str, dict[str, object]] = {name: spec.option_defaults() for name, spec in REGISTRY.items()}
#: The models whose G step adds the mode-seeking term (GANBase's own G steps).
MODE_SEEKING = tuple(name for name, spec in REGISTRY.items() if spec.mode_seeking)


def spec(name: str) -> ModelSpec:
    """The registry entry of ``name``; a one-line error listing the models otherwise."""
    if name not in REGISTRY:
        raise MedvolError(f"model: unknown model {name!r} (choose {', '.join(REGISTRY)})")
    return REGISTRY[name]


def build(
    name: str, size: int, *, base_width: int | None = None, latent_dim: int | None = None,
    num_classes: int = 0, mask_channels: int = 0, **options: object,
) -> GenerativeSystem:
    """Build a model in reference mode, training mode, on the current default device.

    Args:
        name: a registry name: "hagan", "crfgan", "ldm" (3D) or "dcgan", "mlpgan", "stylegan2",
            "fastgan", "spade", "pix2pix", "ldm2d" (2D; docs/models2d.md, docs/diffusion.md).
        size: volume side S: 64, 128, 256, 512; image side 64, 128, 256 for the 2D models
            (32: a tiny size for tests and demos; the ldm's sizes are multiples of 8 from 16).
        base_width: base width c (32 published for the 3D GANs; D and the sub-encoder scale with
            it; dcgan: its filters, 64; mlpgan: G's first hidden width, 256; ldm: the first level's
            channels). An even number >= 2; None: the model's published value.
        latent_dim: length of z (1024 published; 100 for dcgan and mlpgan; ldm: latent channels);
            None: the published.
        num_classes: K > 0 builds the class-conditional variant (one-hot label into G,
            auxiliary classifier on D).
        mask_channels: K > 0 builds the paired image + mask variant (hagan, crfgan, ldm and the
            unconditional 2D GANs): the model draws and reads 1 + K channels, the image then one
            per label-map class (docs/models.md "Paired image + mask generation"); 2D GANs then
            take no ``channels`` option. 0: the published networks.
        **options: model-specific options, all defaulting to the published procedure
            (:data:`MODEL_OPTIONS`; CRF-GAN: ``crf_forwards``, ``crf_layout``, ``crf_self_pairs``,
            ``crop_depth``, ``d_minibatch_std``, see :class:`medvol.models.crfgan.CRFGAN`; HA-GAN:
            ``crop_depth``, ``d_minibatch_std``; dcgan: ``loss`` and the search-grid options, see
            :class:`medvol.models.gan2d.DCGAN`; ldm: :class:`medvol.models.diffusion.LDMOptions`).

    Raises:
        MedvolError: unknown name, unsupported size, or an invalid option.

    Example:
        >>> system = build("crfgan", 32, base_width=4, latent_dim=32)
        >>> sorted(system.param_counts())
        ['D', 'E', 'G', 'crf', 'total']
    """
    entry = spec(name)
    if isinstance(size, bool) or size not in entry.sizes:
        raise MedvolError(f"size: {name} supports sizes {', '.join(map(str, entry.sizes))}, not {size!r}")
    base_width = entry.base_width if base_width is None else base_width
    latent_dim = entry.latent_dim if latent_dim is None else latent_dim
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
    common = dict(base_width=base_width, latent_dim=latent_dim, num_classes=num_classes)
    if not mask_channels:
        return entry.system(size, **common, **options)
    if entry.paired == "none":
        raise MedvolError(f"mask_channels: {name} draws images from given masks (channels 2 with data.masks); "
                          "paired generation is for "
                          + ", ".join(n for n, s in REGISTRY.items() if s.paired != "none"))
    if entry.paired == "native":
        return entry.system(size, **common, mask_channels=mask_channels, **options)
    if options.get("channels", 1) != 1:
        raise MedvolError(f"channels: {options['channels']} with mask_channels {mask_channels}; channels counts "
                          f"the image and the binary mask of data.masks, leave it at 1 (the model gets "
                          f"1 + {mask_channels} channels)")
    # The 2D networks are channel-generic: the paired variant is the 1 + K channel network.
    system = entry.system(size, **common, **{**options, "channels": 1 + mask_channels})
    system.mask_channels = mask_channels
    return system


def build_from_config(model) -> GenerativeSystem:
    """``build`` with a :class:`medvol.config.ModelConfig`.

    A GAN's model-specific keys (``crf_*``, ``loss`` and the other dcgan options, ``channels``)
    are flat keys of the config and go to the models that have them; for any other model they
    must keep their defaults. A model with an options dataclass reads ``model.options``.
    """
    entry = spec(model.name)
    own = MODEL_OPTIONS[model.name] if entry.flat_options else {}
    # A key another model owns must keep the config's default (a table's default may differ:
    # spade and pix2pix need channels 2).
    unset = {f.name: f.default for f in dataclasses.fields(model)}
    for other, table in MODEL_OPTIONS.items():
        if not REGISTRY[other].flat_options:
            continue
        for key in table:
            if key not in own and getattr(model, key) != unset[key]:
                owners = " and ".join(n for n, t in MODEL_OPTIONS.items() if key in t and REGISTRY[n].flat_options)
                raise MedvolError(f"model.{key}: only for {owners}, not {model.name}")
    options = {key: getattr(model, key) for key in own}
    extra = dict(getattr(model, "options", None) or {})
    if extra and entry.flat_options:
        raise MedvolError(f"model.options: {model.name} takes its options as model.<key> "
                          f"(its options: {', '.join(own) or 'none'})")
    system = build(model.name, model.size, base_width=model.base_width, latent_dim=model.latent_dim,
                   num_classes=model.num_classes, mask_channels=model.mask_channels, **options, **extra)
    if model.mode_seeking > 0:
        if model.name not in MODE_SEEKING:
            raise MedvolError(f"model.mode_seeking: only for {', '.join(MODE_SEEKING)}, not {model.name}")
        system.mode_seeking = float(model.mode_seeking)
    if model.g_ema_half_life > 0:
        if not hasattr(system, "enable_g_ema"):
            raise MedvolError(f"model.g_ema_half_life: {model.name} has no generator to average")
        try:
            system.enable_g_ema(model.g_ema_half_life)
        except MedvolError as error:
            raise MedvolError(f"model.{error}") from None
    return system

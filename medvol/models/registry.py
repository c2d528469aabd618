"""The one table of models, and ``build(name, size, **options)``: the one way to make a model.

Every other list of models is read from :data:`REGISTRY`: the config's ``model.name`` and
``model.options``, the build options, the CLI's checks and help texts, ``medvol profile``'s cases
and report names, and the contract tests (tests/models/test_contract.py). A new model is one
module (a :class:`GenerativeSystem` subclass and its options dataclass) and one
:class:`ModelSpec` here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from medvol.errors import MedvolError
from medvol.models.contract import GenerativeSystem
from medvol.models.crfgan import CRFGAN, CRFGANOptions
from medvol.models.diffusion import LDM_SIZES_2D, LDM_SIZES_3D, LatentDiffusion, LatentDiffusion2D, LDMOptions
from medvol.models.gan2d import DCGAN, MLPGAN, SIZES_2D, DCGANOptions, MLPGANOptions
from medvol.models.gan2d import FastGAN, FastGANOptions, Pix2Pix, Pix2PixOptions, SPADEModel, SPADEOptions
from medvol.models.gan2d import CycleGAN, CycleGANOptions, StyleGAN2, StyleGAN2Options
from medvol.models.hagan import HAGAN, HAGANOptions
from medvol.models.networks import SIZES
from medvol.models.options import NoOptions, option_defaults
from medvol.ops.cpu_bf16 import guard_depth_two_convs

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
        options: the model's options dataclass (:mod:`medvol.models.options`): the names, types,
            published defaults and documentation of its build options, set under
            ``model.options`` of a config (or as ``model.<key>``, the older spelling).
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
    options: type = NoOptions
    title: str = ""
    mode_seeking: bool = False
    paired: str = "none"
    stages: tuple[dict[str, object], ...] = ({},)

    def __post_init__(self) -> None:
        if not (isinstance(self.options, type) and dataclasses.is_dataclass(self.options)):
            raise TypeError(f"ModelSpec {self.name}: options must be an options dataclass "
                            f"(medvol.models.options), not {self.options!r}")

    def option_defaults(self) -> dict[str, object]:
        """The options and their defaults as a dict."""
        return option_defaults(self.options)


#: The models, in the order lists print them. stylegan2: c = 64 (config-f halved,
#: docs/models2d.md), z and w of 512 as the paper; pix2pix has no latent: its z (4 numbers per
#: image) only seeds generation's dropout; ldm: latent_dim is the autoencoder's latent channels.
REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("hagan", HAGAN, 3, SIZES, 32, 1024, HAGANOptions, "HA-GAN", True, "native"),
    ModelSpec("crfgan", CRFGAN, 3, SIZES, 32, 1024, CRFGANOptions, "CRF-GAN", True, "native"),
    ModelSpec("dcgan", DCGAN, 2, SIZES_2D, 64, 100, DCGANOptions, "DCGAN", True, "channels"),
    ModelSpec("mlpgan", MLPGAN, 2, SIZES_2D, 256, 100, MLPGANOptions, "MLP-GAN", True, "channels"),
    ModelSpec("stylegan2", StyleGAN2, 2, SIZES_2D, 64, 512, StyleGAN2Options, "StyleGAN2", False, "channels"),
    ModelSpec("fastgan", FastGAN, 2, SIZES_2D, 64, 256, FastGANOptions, "FastGAN", False, "channels"),
    ModelSpec("spade", SPADEModel, 2, SIZES_2D, 64, 256, SPADEOptions, "SPADE", False, "none"),
    ModelSpec("pix2pix", Pix2Pix, 2, SIZES_2D, 64, 4, Pix2PixOptions, "Pix2Pix", False, "none"),
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
#: Model-specific build options and their published defaults (from each options dataclass).
#: These views are taken when the module loads; the code reads :data:`REGISTRY` itself.
MODEL_OPTIONS: dict[str, dict[str, object]] = {name: spec.option_defaults() for name, spec in REGISTRY.items()}
#: The models whose G step adds the mode-seeking term (GANBase's own G steps).
MODE_SEEKING = tuple(name for name, spec in REGISTRY.items() if spec.mode_seeking)


def option_owners(key: str) -> list[str]:
    """The models that have the option ``key``, in registry order."""
    return [name for name, s in REGISTRY.items() if key in {f.name for f in dataclasses.fields(s.options)}]


def model_list(dims: int | None = None) -> str:
    """The registry's names (of one dimension, 3 or 2), comma-separated, for help texts and errors."""
    return ", ".join(name for name, s in REGISTRY.items() if dims is None or s.dims == dims)


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
        name: a name of :data:`REGISTRY` (docs/models.md, docs/models2d.md, docs/diffusion.md).
        size: volume side S: 64, 128, 256, 512; image side 64, 128, 256 for the 2D models
            (32: a tiny size for tests and demos; the ldm's sizes are multiples of 8 from 16).
        base_width: base width c (32 published for the 3D GANs; D and the sub-encoder scale with
            it; dcgan: its filters, 64; mlpgan: G's first hidden width, 256; ldm: the first level's
            channels). An even number >= 2; None: the model's published value.
        latent_dim: length of z (1024 published; 100 for dcgan and mlpgan; ldm: latent channels);
            None: the published.
        num_classes: K > 0 builds the class-conditional variant (one-hot label into G,
            auxiliary classifier on D).
        mask_channels: K > 0 builds the paired image + mask variant (the models whose entry's
            ``paired`` is not "none"): the model draws and reads 1 + K channels, the image then one
            per label-map class (docs/models.md "Paired image + mask generation"); 2D GANs then
            take no ``channels`` option. 0: the published networks.
        **options: model-specific options: the fields of the entry's options dataclass
            (:attr:`ModelSpec.options`, e.g. :class:`medvol.models.crfgan.CRFGANOptions`), each
            defaulting to its published value there; the system is built with all of them.

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
    allowed = entry.option_defaults()
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        known = ", ".join(allowed) or "none"
        raise MedvolError(f"model option {unknown[0]!r}: {name} has no such option (its options: {known})")
    # Every option from the dataclass's defaults: the constructor's own defaults are never used.
    options = {**allowed, **options}
    if isinstance(mask_channels, bool) or not isinstance(mask_channels, int) or mask_channels < 0:
        raise MedvolError(f"mask_channels: expected an integer >= 0, got {mask_channels!r}")
    common = dict(base_width=base_width, latent_dim=latent_dim, num_classes=num_classes)
    return _guarded(_construct(entry, name, size, common, options, mask_channels))


def _guarded(system: GenerativeSystem) -> GenerativeSystem:
    """``system`` with every ``Conv3d`` guarded against the torch CPU bf16 bug of output depth 2
    (:func:`medvol.ops.cpu_bf16.guard_depth_two_convs`: wrong weight gradients, up to 1e37).

    Here rather than in the trainer: every model is made by :func:`build` (the trainer, resume,
    the profiler, the sampler, tests), so none trains or is profiled unguarded, whoever drives it;
    each model need not remember it, and a new one is covered. The guard only acts under CPU bf16
    autocast on depth-2 outputs and leaves parameters, state dicts and the module tree unchanged.
    """
    guard_depth_two_convs(system)
    return system


def _construct(entry: ModelSpec, name: str, size: int, common: dict, options: dict,
               mask_channels: int) -> GenerativeSystem:
    """:func:`build`'s construction, its arguments checked."""
    if not mask_channels:
        return entry.system(size, **common, **options)
    if entry.paired == "none":
        raise MedvolError(f"mask_channels: {name} draws images from given masks (channels 2 with data.masks); "
                          "paired generation is for "
                          + ", ".join(n for n, s in REGISTRY.items() if s.paired != "none"))
    if entry.paired == "native":
        return entry.system(size, **common, mask_channels=mask_channels, **options)
    if options.get("channels", 1) != 1:  # an explicit other value (the defaults are 1)
        raise MedvolError(f"channels: {options['channels']} with mask_channels {mask_channels}; channels counts "
                          f"the image and the binary mask of data.masks, leave it at 1 (the model gets "
                          f"1 + {mask_channels} channels)")
    # The 2D networks are channel-generic: the paired variant is the 1 + K channel network.
    system = entry.system(size, **common, **{**options, "channels": 1 + mask_channels})
    system.mask_channels = mask_channels
    return system


def build_from_config(model) -> GenerativeSystem:
    """``build`` with a :class:`medvol.config.ModelConfig`: its common fields and its ``options``
    (the config loader has checked them against the model's options dataclass and filled in the
    defaults; flat ``model.<key>`` options of older configs are already among them)."""
    system = build(model.name, model.size, base_width=model.base_width, latent_dim=model.latent_dim,
                   num_classes=model.num_classes, mask_channels=model.mask_channels, **dict(model.options or {}))
    if model.mode_seeking > 0:
        if not spec(model.name).mode_seeking:
            seeking = ", ".join(name for name, s in REGISTRY.items() if s.mode_seeking)
            raise MedvolError(f"model.mode_seeking: only for {seeking}, not {model.name}")
        system.mode_seeking = float(model.mode_seeking)
    if model.g_ema_half_life > 0:
        if not hasattr(system, "enable_g_ema"):
            raise MedvolError(f"model.g_ema_half_life: {model.name} has no generator to average")
        try:
            system.enable_g_ema(model.g_ema_half_life)
        except MedvolError as error:
            raise MedvolError(f"model.{error}") from None
    return system

"""Typed experiment configs: dataclasses filled from ``configs/*.yaml``, overridable from the CLI.

A config file has three sections, ``model``, ``data`` and ``train``; every key is optional and falls
back to the default below. Overrides name a key by its dotted path (``--train.iterations 10``,
``--data.batch=4``, ``train.lr.G=2e-4``); values are parsed as YAML scalars and checked against the
field's type. An unknown key or a bad value raises :class:`MedvolError` naming the key, so a typo
never silently trains the wrong thing.

Example:
    >>> cfg = load_config("configs/demo.yaml", ["--train.iterations", "10"])   # doctest: +SKIP
    >>> cfg.train.iterations                                                  # doctest: +SKIP
    10
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from medvol.errors import MedvolError
from medvol.utils import checked_write



@dataclass
class ModelConfig:
    """Which network to build: ``medvol.models.build(name, size, **options)``.

    ``name`` is a name of the model registry (``medvol.models.REGISTRY``); the fields here are
    common to every model, and ``options`` holds the model's own options, checked on load against
    the options dataclass of its registry entry (names, types, ranges) and completed with its
    defaults (``model.options.loss``). ``model.<key>`` (the flat spelling of configs and
    checkpoints written before ``options``) still works for an option of the named model; an
    option of another model is refused (:func:`_fold_flat_options`).
    """

    name: str = "crfgan"
    size: int = 256
    base_width: int = 32
    latent_dim: int = 1024
    num_classes: int = 0
    #: Paired image + mask generation (docs/models.md, docs/models2d.md): K > 0 adds one output
    #: (and discriminator input) channel per label-map class 1..K; 0 keeps the published networks.
    mask_channels: int = 0
    #: Any model with a generator but stylegan2 (which has ema_kimg): half-life in iterations of
    #: G_ema, a moving average of G's weights that generation samples from; 0: none, as published
    #: (docs/learning.md).
    g_ema_half_life: float = 0.0
    #: The models whose registry entry says ``mode_seeking``: weight of the mode-seeking term in
    #: G's loss (Mao et al. 2019); 0: none, as published (docs/learning.md).
    mode_seeking: float = 0.0
    #: The model's options (its registry entry's options dataclass; every one of them once loaded).
    options: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        """``cfg.model.loss``: an option read as before options had their own section (read-only;
        only called for a name that is not a field)."""
        options = self.__dict__.get("options") or {}
        if name in options:
            return options[name]
        raise AttributeError(f"ModelConfig has no field or option {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self.__dataclass_fields__ and name in (self.__dict__.get("options") or {}):
            raise AttributeError(f"model.{name} is an option: set model.options[{name!r}]")
        super().__setattr__(name, value)


#: The model options that were flat keys of :class:`ModelConfig` before ``model.options``, with
#: the defaults that older configs and checkpoints hold for them (every config saved then holds
#: all of them): such a key of another model at this value is dropped on load; any other value
#: is refused, as then. Frozen: options added since exist only under ``model.options`` (and as
#: ``model.<key>`` of their own model).
LEGACY_FLAT_DEFAULTS: dict[str, Any] = {
    "crf_forwards": "fresh", "crf_layout": "channels", "crf_self_pairs": True, "crop_depth": 0,
    "d_minibatch_std": False, "channels": 1, "loss": "bce", "g_activation": "relu", "d_activation": "leakyrelu",
    "norm": "batch", "spectral_norm_d": False, "spectral_norm_g": False, "init": "normal", "init_gain": 0.02,
    "gp_weight": None, "clip": None, "fm_weight": 0.0, "label_smoothing": 0.0, "g_norm": None, "d_norm": None,
    "g_base_width": None, "d_base_width": None, "augment": False, "vgg_weight": 0.0, "vgg_weights": None,
    "vgg_sha256": None, "n_critic": 1, "optimizer": "adam", "r1_gamma": None, "r1_interval": 16,
    "pl_weight": 2.0, "pl_interval": 4, "pl_batch_shrink": 2, "pl_decay": 0.01, "mixing_prob": 0.9,
    "ema_kimg": 10.0, "ema_rampup": 0.0, "truncation": 1.0, "mapping_layers": 8, "diffaugment": None,
    "recon_weight": 1.0, "recon_loss": "l1", "d_scales": 2, "fm_l1_weight": 10.0, "l1_weight": 100.0, "patch": 46,
}


@dataclass
class DataConfig:
    """Where training volumes come from and how they are loaded.

    ``source`` is ``"phantom"`` (procedural volumes generated on the fly) or the folder of a
    preprocessing cache built by ``medvol.data.cache.build_cache``.
    """

    source: str = "phantom"
    #: cyclegan only: the 2D image cache of domain B (data.source is domain A's); unpaired with it.
    cache_b: Optional[str] = None
    split: Literal["train", "val"] = "train"
    phantom_n: int = 64
    phantom_seed: int = 0
    phantom_nodules: bool = False
    #: 2D models only: the slice plane, blank slices skipped, the nodule mask as a second channel
    #: (phantom source), slice labels from the volume or from the mask (1: the slice holds mask
    #: pixels), and training on the slices of one class only (-1: all).
    plane: Literal["axial", "coronal", "sagittal"] = "axial"
    skip_blank: bool = True
    masks: bool = False
    slice_labels: Literal["volume", "mask"] = "volume"
    slice_class: int = -1
    #: Train on cache entries marked synthetic (generated volumes); refused by default.
    allow_synthetic: bool = False
    workers: int = 2
    batch: int = 2
    prefetch: int = 2


@dataclass
class TrainOptions:
    """How to train: length, precision/memory mode, seeds, output cadence and folder.

    ``mode`` is ``"reference"`` (fp32, plain ops, no activation checkpointing: the published
    procedure) or ``"optimized"`` (autocast in ``amp``, activation checkpointing, fused ops,
    norms in the autocast dtype; ``compile`` adds ``torch.compile``). ``amp: auto`` is bf16 where
    the device computes it natively and fp32 elsewhere (``medvol.utils.resolve_amp``); the run's
    config.yaml records what it became. ``threads``: torch CPU threads, 0 for medvol's default
    (``medvol.utils.default_threads``); config.yaml records the count used. ``lr`` overrides the
    published learning rate of an optimiser by its key in ``GANSystem.make_optimizers()``
    (e.g. ``{"G": 1e-4}``); ``beta1`` likewise overrides Adam's first beta.
    """

    iterations: int = 80000
    mode: Literal["reference", "optimized"] = "optimized"
    amp: Literal["auto", "bf16", "fp16", "none"] = "auto"
    compile: bool = False
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    ckpt_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 10
    sample_every: int = 500
    progress: bool = True
    out: str = "runs/run"
    lr: dict[str, float] = field(default_factory=dict)
    #: Adam's beta1 per optimiser, like ``lr`` (e.g. ``{"G": 0.5}``); the model's own by default
    #: (3D: 0, as published; 2D: 0.5). A stabiliser for short CPU runs (docs/learning.md).
    beta1: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """A whole experiment: ``model``, ``data`` and ``train`` sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainOptions = field(default_factory=TrainOptions)


_POSITIVE = {"model.base_width", "model.latent_dim", "data.phantom_n", "data.batch", "data.prefetch",
             "train.ckpt_every", "train.log_every", "train.sample_every"}
_NON_NEGATIVE = {"model.num_classes", "data.workers", "train.iterations", "train.keep_checkpoints", "train.threads"}
_NON_NEGATIVE |= {"model.mask_channels", "model.g_ema_half_life", "model.mode_seeking"}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (int -> float etc.)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if not any(type(value) is type(c) and value == c for c in choices):
            raise MedvolError(f"config key {key}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin is typing.Union:
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(value, inner[0], key)
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise MedvolError(f"config key {key}: expected a mapping, got {value!r}")
        _, value_type = typing.get_args(tp)
        if value_type is Any:  # checked later against its owner's types (model.options)
            return {str(k): v for k, v in value.items()}
        return {str(k): _coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise MedvolError(f"config key {key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MedvolError(f"config key {key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-4" (no dot) as a string; accept any float literal.
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MedvolError(f"config key {key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise MedvolError(f"config key {key}: expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported config field type {tp!r} for {key}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _did_you_mean(name: str, known, prefix: str) -> str:
    """``"; did you mean train.iterations?"`` for a mistyped key (difflib's closest), or ""."""
    close = difflib.get_close_matches(name, sorted(known), n=2, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + " or ".join(f"{prefix}.{c}" if prefix else c for c in close) + "?"


def _from_dict(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MedvolError(f"config section {prefix or 'top level'}: expected a mapping, got {data!r}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, data)) - names)
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise MedvolError(f"unknown config key {key!r}{_did_you_mean(unknown[0], names, prefix)} "
                          f"(known in {prefix or 'top level'}: {', '.join(sorted(names))})")
    kwargs = {}
    for name in names & set(data):
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _from_dict(tp, data[name], key)
        else:
            kwargs[name] = _coerce(data[name], tp, key)
    return cls(**kwargs)


def _validate(cfg: TrainConfig, flat: frozenset[str] = frozenset()) -> None:
    """Ranges and combinations; ``flat``: the options the config spelled ``model.<key>`` (errors
    name them so)."""
    from medvol.models.registry import REGISTRY

    if cfg.model.name not in REGISTRY:
        raise MedvolError(f"config key model.name: {cfg.model.name!r} is not one of {', '.join(REGISTRY)}"
                          f"{_did_you_mean(cfg.model.name, REGISTRY, '')}")
    _validate_model_options(cfg, REGISTRY[cfg.model.name], flat)
    sizes = REGISTRY[cfg.model.name].sizes
    if cfg.model.size not in sizes:
        raise MedvolError(f"config key model.size: {cfg.model.name} supports sizes "
                          f"{', '.join(map(str, sizes))}, not {cfg.model.size}")
    for key in _POSITIVE | _NON_NEGATIVE:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value < 0 or (key in _POSITIVE and value == 0):
            need = "positive" if key in _POSITIVE else "non-negative"
            raise MedvolError(f"config key {key}: must be {need}, got {value}")
    _validate_mask_channels(cfg)
    _validate_unpaired(cfg, REGISTRY[cfg.model.name])
    if cfg.data.slice_class < -1:
        raise MedvolError(f"config key data.slice_class: -1 (all) or a class id, got {cfg.data.slice_class}")
    for name, lr in cfg.train.lr.items():
        if lr <= 0:
            raise MedvolError(f"config key train.lr.{name}: must be positive, got {lr}")
    for name, beta in cfg.train.beta1.items():
        if not 0 <= beta < 1:
            raise MedvolError(f"config key train.beta1.{name}: must be in [0, 1), got {beta}")
    if cfg.train.device not in ("auto", "cpu") and not cfg.train.device.startswith("cuda"):
        raise MedvolError(f"config key train.device: {cfg.train.device!r} is not auto, cpu or cuda[:N]")


def _validate_model_options(cfg: TrainConfig, spec, flat: frozenset[str] = frozenset()) -> None:
    """``model.options`` against the model's options dataclass: known keys, values of its types,
    the dataclass's own checks; then every option, its default where not set, so that the saved
    config says what was built and two configs that build the same model compare equal."""
    from medvol.models.registry import option_owners

    options = cfg.model.options
    fields = {f.name for f in dataclasses.fields(spec.options)}
    hints = _hints(spec.options)
    for name in list(options):
        where = f"model.{name}" if name in flat else f"model.options.{name}"
        if name not in fields:
            owners = option_owners(name)
            if owners:
                raise MedvolError(f"{where}: only for {' and '.join(owners)}, not {spec.name}")
            raise MedvolError(f"unknown config key {where!r}{_did_you_mean(name, fields, 'model.options')} "
                              f"({spec.name}'s options: {', '.join(fields) or 'none'})")
        options[name] = _coerce(options[name], hints[name], where)
    try:
        instance = spec.options(**options)  # the dataclass's own checks (ranges, combinations)
    except (TypeError, ValueError, MedvolError) as error:
        key, _, rest = str(error).partition(": ")
        if key in fields and rest:
            where = f"model.{key}" if key in flat else f"model.options.{key}"
            raise MedvolError(f"config key {where}: {rest}") from None
        raise MedvolError(f"config key model.options: {error}") from None
    cfg.model.options = {f.name: getattr(instance, f.name) for f in dataclasses.fields(spec.options)}


def _same(value: Any, default: Any) -> bool:
    """``value == default`` without Python's ``True == 1`` (a number matches a number, 0 matches 0.0)."""
    if isinstance(value, bool) or isinstance(default, bool) or value is None or default is None:
        return value is default
    if isinstance(value, (int, float)) and isinstance(default, (int, float)):
        return value == default
    return type(value) is type(default) and value == default


def _option_names() -> set[str]:
    """Every registered model's option names and the legacy flat keys."""
    from medvol.models.registry import REGISTRY

    return {f.name for s in REGISTRY.values() for f in dataclasses.fields(s.options)} | set(LEGACY_FLAT_DEFAULTS)


def _fold_flat_options(raw: dict) -> frozenset[str]:
    """Move the flat ``model.<key>`` options of a raw config under ``model.options``.

    An option of the named model moves (a key given both ways is refused); another model's
    option is dropped when it holds its :data:`LEGACY_FLAT_DEFAULTS` value (older configs and
    checkpoints hold every one of them) and refused otherwise, naming the models that have it.

    Returns:
        The keys that moved (errors about their values then name ``model.<key>``).
    """
    from medvol.models.registry import REGISTRY, option_owners

    model = raw.get("model")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    extra = [key for key in model if key not in fields] if isinstance(model, dict) else []
    options = model.get("options") if extra else None
    if not extra or not isinstance(options, (dict, type(None))):
        return frozenset()  # nothing to move, or a bad options section that _from_dict names
    options = {} if options is None else options
    name = model.get("name", ModelConfig.name)
    known = REGISTRY[name].option_defaults() if isinstance(name, str) and name in REGISTRY else None
    moved = set()
    for key in extra:
        owners = option_owners(str(key))
        if known is None or key in known:  # an unknown model.name is named by _validate
            if key in options:
                raise MedvolError(f"config key model.{key}: given twice, as model.{key} and model.options.{key}")
            options[key] = model.pop(key)
            moved.add(key)
        elif key in LEGACY_FLAT_DEFAULTS and _same(model[key], LEGACY_FLAT_DEFAULTS[key]):
            del model[key]
        elif owners:
            raise MedvolError(f"model.{key}: only for {' and '.join(owners)}, not {name}")
        else:
            names = fields | set(known)
            raise MedvolError(f"unknown config key 'model.{key}'{_did_you_mean(str(key), names, 'model')} "
                              f"(known in model: {', '.join(sorted(fields))}, and {name}'s options: "
                              f"{', '.join(known) or 'none'})")
    model["options"] = options
    return frozenset(moved)


def _validate_unpaired(cfg: TrainConfig, spec) -> None:
    """data.cache_b belongs to the unpaired models (cyclegan), which need it."""
    unpaired = bool(getattr(spec.system, "unpaired", False))
    if cfg.data.cache_b is not None and not unpaired:
        raise MedvolError(f"config key data.cache_b: a second domain is only for cyclegan, not {spec.name}")
    if not unpaired:
        return
    if cfg.data.cache_b is None:
        raise MedvolError(f"config key data.cache_b: {spec.name} translates between two image caches; give domain "
                          "B's cache as data.cache_b (data.source is domain A's)")
    if cfg.data.masks:
        raise MedvolError(f"config key data.masks: {spec.name} translates images without masks (data.masks false)")


def _validate_mask_channels(cfg: TrainConfig) -> None:
    """model.mask_channels against the settings it would contradict (the binary mask channel of
    data.masks, which model.channels counts, and the mask-conditional models)."""
    k = cfg.model.mask_channels
    if k <= 0:
        return
    if cfg.data.masks:
        raise MedvolError(f"config key model.mask_channels: {k} adds the label map's one-hot channels, "
                          "data.masks the binary nodule channel; use one of them (data.masks false)")
    from medvol.models.registry import REGISTRY

    channels = cfg.model.options.get("channels", 1)
    # A mask-conditional model (paired "none") needs its channels 2 and refuses K when built.
    if REGISTRY[cfg.model.name].paired == "channels" and channels != 1:
        raise MedvolError(f"config key model.channels: {channels} with model.mask_channels {k}; "
                          "model.channels counts the image and data.masks' channel, leave it at 1 "
                          f"(the model gets 1 + {k} channels)")


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    """Turn ``["--train.iterations", "10", "--data.batch=4"]`` into ``[(key, value), ...]``.

    Values are parsed as YAML scalars (``10`` -> int, ``1e-4`` -> float, ``true`` -> bool).
    A flag without a value (``--train.compile``) means ``true``.
    """
    pairs: list[tuple[str, Any]] = []
    items = list(overrides or [])
    i = 0
    while i < len(items):
        item = items[i]
        key = item[2:] if item.startswith("--") else item
        if "=" in key:
            key, text = key.split("=", 1)
            i += 1
        elif item.startswith("--") and (i + 1 >= len(items) or items[i + 1].startswith("--")):
            text = "true"
            i += 1
        elif item.startswith("--"):
            text = items[i + 1]
            i += 2
        else:
            raise MedvolError(f"config override {item!r}: expected --section.key VALUE or section.key=VALUE")
        if not key or "." not in key:
            raise MedvolError(f"config override {item!r}: keys are dotted, e.g. --train.iterations 10")
        try:
            value = yaml.safe_load(text) if text.strip() else text
        except yaml.YAMLError:
            value = text
        pairs.append((key, value))
    return pairs


def _apply_override(raw: dict, key: str, value: Any) -> None:
    """Set ``raw[a][b]... = value`` after checking each part of ``key`` is a known field."""
    parts = key.split(".")
    model = raw.get("model") if isinstance(raw.get("model"), dict) else None
    if parts[0] == "model" and len(parts) == 2 and parts[1] not in _hints(ModelConfig) and \
            parts[1] in _option_names():
        # The flat spelling of an option (--model.loss): folded under model.options on load; the
        # later of the two spellings wins, as for any repeated key.
        model = raw["model"] = model if model is not None else {}
        model[parts[1]] = value
        if isinstance(model.get("options"), dict):
            model["options"].pop(parts[1], None)
        return
    if parts[:2] == ["model", "options"] and len(parts) == 3 and model is not None:
        model.pop(parts[2], None)
    cls: Any = TrainConfig
    node = raw
    for depth, part in enumerate(parts):
        here = ".".join(parts[: depth + 1])
        last = depth == len(parts) - 1
        if cls is dict:
            # Inside a mapping field (train.lr, train.beta1): any name is a valid key, one level deep.
            if not last:
                raise MedvolError(f"unknown config key {key!r}")
            node[part] = value
            return
        hints = _hints(cls)
        if part not in hints:
            section = ".".join(parts[:depth])
            known = set(hints) | (_option_names() if cls is ModelConfig else set())
            raise MedvolError(f"unknown config key {here!r}{_did_you_mean(part, known, section)}")
        tp = hints[part]
        if last:
            node[part] = value
            return
        if dataclasses.is_dataclass(tp):
            cls = tp
        elif typing.get_origin(tp) is dict:
            cls = dict
        else:
            raise MedvolError(f"unknown config key {key!r} ({here} is not a section)")
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]


def config_from_dict(data: dict | None, overrides: list[str] | None = None, source: str = "config") -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from a plain mapping plus CLI overrides."""
    raw = yaml.safe_load(yaml.safe_dump(data or {}))  # deep copy, plain types only
    if not isinstance(raw, dict):
        raise MedvolError(f"{source}: expected a mapping with model/data/train sections")
    for key, value in parse_overrides(overrides):
        _apply_override(raw, key, value)
    flat = _fold_flat_options(raw)
    cfg = _from_dict(TrainConfig, raw, "")
    _validate(cfg, flat)
    return cfg


def shipped_configs_dir() -> Path:
    """The folder of the configs medvol ships, found from the package, never from the cwd.

    Installed, they are package data (``medvol/configs``: setup.py maps ``configs/`` there as it
    maps ``kernels/`` to ``medvol.kernels``); in a source checkout (``PYTHONPATH``, ``pip -e``)
    they are the checkout's top-level ``configs/``, the one copy that is edited.
    """
    package = Path(__file__).resolve().parent
    for folder in (package / "configs", package.parent / "configs"):
        if (folder / "demo.yaml").is_file():
            return folder
    raise MedvolError(f"the shipped configs are missing from this installation ({package / 'configs'}); "
                      "reinstall medvol")


def shipped_config_names() -> list[str]:
    """Names of the shipped configs: ``demo``, ``crfgan_256``, ``sweeps/tiny``, ..."""
    root = shipped_configs_dir()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def resolve_config(name_or_path: str | os.PathLike) -> Path:
    """The YAML file that ``--config`` (or ``--grid``) means: an existing file as given, else a
    shipped config by name (``demo``, ``crfgan_256``, ``sweeps/tiny``; ``.yaml`` and a leading
    ``configs/`` may be given), so that documented commands work outside the checkout.

    Raises:
        MedvolError: neither a file nor a shipped name; close names are suggested.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    text = path.as_posix().removesuffix(".yaml").removesuffix(".yml")
    name = text.removeprefix("configs/")
    names = shipped_config_names()
    if name in names:
        return shipped_configs_dir() / f"{name}.yaml"
    close = difflib.get_close_matches(name, names, n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise MedvolError(f"config file {name_or_path} does not exist, and no shipped config has that name "
                      f"(`medvol configs` lists them){hint}")


def describe_config(path: str | os.PathLike, width: int = 90) -> str:
    """The first sentence of a config file's first comment (its one-line description), cut to
    ``width`` characters at a word; "" for a file that starts without a comment."""
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if not text or text.startswith(("medvol ", "Train:")):
            break
        lines.append(text)
    text, depth = " ".join(lines), 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        ends = char == ";" or (char == "." and text[i + 1:i + 2] in ("", " ")
                               and not text[:i].endswith((" al", "e.g", "i.e")))
        if ends and depth <= 0:
            text = text[:i]
            break
    if len(text) > width:
        text = text[:width - 1].rsplit(" ", 1)[0].rstrip(",;:(") + "…"
    return text


def list_shipped_configs() -> list[dict[str, Any]]:
    """One row per shipped config: ``name``, ``model`` and ``size`` (None for a sweep grid, which
    has no model section), ``description`` (:func:`describe_config`) and ``path``."""
    root = shipped_configs_dir()
    rows = []
    for name in shipped_config_names():
        path = root / f"{name}.yaml"
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        model = data.get("model") if isinstance(data.get("model"), dict) else None
        rows.append({"name": name, "model": model.get("name", ModelConfig.name) if model else None,
                     "size": model.get("size", ModelConfig.size) if model else None,
                     "description": describe_config(path), "path": str(path)})
    return rows


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> TrainConfig:
    """Load ``path`` (YAML; ``None`` for the defaults) and apply ``overrides``.

    Args:
        path: a YAML file with optional ``model``, ``data``, ``train`` sections, or the name of a
            shipped config (:func:`resolve_config`: ``demo``, ``crfgan_256``).
        overrides: CLI-style overrides, e.g. ``["--train.iterations", "10", "--data.batch=4"]``.

    Raises:
        MedvolError: missing, empty or unparsable file, unknown key, or a value of the wrong
            type/range.
    """
    data: Any = {}
    if path is not None:
        path = resolve_config(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            first = str(error).splitlines()[0] if str(error) else "parse error"
            raise MedvolError(f"config file {path}: invalid YAML ({first})") from None
        if data is None or data == {}:
            # All defaults would be the published 256^3 run of 80,000 iterations: never by accident.
            raise MedvolError(f"config file {path} is empty: it needs at least one of the sections "
                              "model, data, train (configs/demo.yaml is a small example)")
    return config_from_dict(data, overrides, source=str(path))


def config_to_dict(cfg: TrainConfig) -> dict:
    """The config as plain nested dicts (YAML/checkpoint friendly); ``model.options`` only for a
    model that has options."""
    data = dataclasses.asdict(cfg)
    if not data["model"]["options"]:
        del data["model"]["options"]
    return data


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML, atomically; ``load_config`` reads it back unchanged."""
    path = Path(path)
    with checked_write(path, "config") as tmp:
        tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")
    return path

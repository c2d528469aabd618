"""A sweep's search grid: which config keys vary, over which values, and how runs are drawn.

A grid file (YAML)::

    stratify: model.loss          # optional: run i takes this key's value i mod len(values)
    fixed:                        # overrides applied to every run
      train.iterations: 300
    grid:                         # config key -> list of values
      model.loss: [bce, lsgan, hinge]
      model.norm: [batch, instance]
      "train.lr.G,train.lr.D": [1e-4, 2e-4]     # comma-joined keys share one drawn value
    when:                         # a key is only set when another key's drawn value is listed
      model.label_smoothing: {model.loss: [bce, lsgan]}

Keys are the dotted config keys of ``medvol train`` overrides. Every key, and every value on its
own, is checked against the base config when the grid is loaded (a typo or an out-of-range value
is a grid error, before anything trains); values that are valid alone but impossible together
(label smoothing with a WGAN loss, say) only fail the run that draws them.

Two samplers, as the empirical study drew from its table: ``random`` (:meth:`Grid.draw`): run
``i`` is drawn from a generator seeded with ``(seed, i)`` and differs from runs ``0..i-1``;
``grid`` (:meth:`Grid.ordered`): every distinct configuration once, in an order shuffled by
``seed``. Either way a sweep's first K runs are the same whatever K, and a larger ``--runs``
extends a sweep.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from medvol.errors import MedvolError

GRID_KEYS = ("fixed", "grid", "when", "stratify")
#: Draws tried per run before giving up on finding a configuration not drawn before.
MAX_ATTEMPTS = 1000
#: Grids up to this many combinations are enumerated to count their distinct configurations.
COUNT_LIMIT = 100_000


def canonical_hash(data: Any) -> str:
    """SHA-256 of a YAML/JSON-like value in canonical form (key order, comments and layout of the
    file it came from do not matter)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def read_yaml(path: str | Path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise MedvolError(f"{what} {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        first = str(error).splitlines()[0] if str(error) else "parse error"
        raise MedvolError(f"{what} {path}: invalid YAML ({first})") from None
    if not isinstance(data, dict) or not data:
        raise MedvolError(f"{what} {path}: expected a non-empty mapping")
    return data


def override_args(values: dict[str, Any]) -> list[str]:
    """``{"model.loss": "bce"}`` -> ``["--model.loss=\"bce\""]``: JSON is YAML, so every value
    reaches the config loader with its type (an empty string stays a string)."""
    return [f"--{key}={json.dumps(value)}" for key, value in values.items()]


def _encode(value: Any, choices: list) -> Any:
    scalar = all(c is None or isinstance(c, (bool, int, float, str)) for c in choices)
    return value if scalar else json.dumps(value, sort_keys=True)


class Grid:
    """A loaded, validated grid.

    Args:
        path: the grid YAML.
        base: the base config as a mapping (the sweep's ``--config``), to validate keys and values.

    Attributes:
        fixed: overrides of every run. space: ``[(keys, values)]`` in file order.
        when: ``{key: {other_key: allowed values}}``. stratify: a key of ``space`` or None.
        sha256: :func:`canonical_hash` of the file's content.
    """

    def __init__(self, path: str | Path, base: dict):
        from medvol.config import config_from_dict

        self.path = Path(path)
        data = read_yaml(self.path, "grid file")
        unknown = [k for k in data if k not in GRID_KEYS]
        if unknown:
            raise MedvolError(f"grid file {path}: unknown section {unknown[0]!r} (sections: "
                              f"{', '.join(GRID_KEYS)})")
        self.sha256 = canonical_hash(data)
        self.fixed = dict(data.get("fixed") or {})
        grid = data.get("grid")
        if not isinstance(grid, dict) or not grid:
            raise MedvolError(f"grid file {path}: 'grid' must map config keys to lists of values")
        self.space: list[tuple[tuple[str, ...], list]] = []
        for name, values in grid.items():
            keys = tuple(k.strip() for k in str(name).split(","))
            if not isinstance(values, list) or not values:
                raise MedvolError(f"grid file {path}: grid.{name} must be a non-empty list of values")
            self.space.append((keys, values))
        self.keys = [k for keys, _ in self.space for k in keys]
        if len(set(self.keys)) != len(self.keys):
            raise MedvolError(f"grid file {path}: a config key appears twice in 'grid'")
        self.when: dict[str, dict[str, list]] = {}
        for key, cond in (data.get("when") or {}).items():
            if key not in self.keys or not isinstance(cond, dict) or not cond:
                raise MedvolError(f"grid file {path}: when.{key} must name a grid key and map grid "
                                  "keys to the values that allow it")
            for other, allowed in cond.items():
                if other not in self.keys or not isinstance(allowed, list):
                    raise MedvolError(f"grid file {path}: when.{key}.{other} must be a grid key with "
                                      "a list of values")
            self.when[key] = {k: list(v) for k, v in cond.items()}
        self.stratify = data.get("stratify")
        if self.stratify is not None and self.stratify not in self.keys:
            raise MedvolError(f"grid file {path}: stratify {self.stratify!r} is not a grid key")
        try:
            config_from_dict(base, override_args(self.fixed), source=f"grid file {path} (fixed)")
        except MedvolError as error:
            raise MedvolError(f"grid file {path}: fixed: {error}") from None
        self._vgg_checked = False
        for keys, values in self.space:
            for key in keys:
                for value in values:
                    try:
                        cfg = config_from_dict(base, override_args({**self.fixed, key: value}))
                    except MedvolError as error:
                        raise MedvolError(f"grid file {path}: {key} = {value!r}: {error}") from None
                    if key == "model.vgg_weight" and value > 0 and not self._vgg_checked:
                        self._check_vgg(cfg.model, f"grid file {path}: {key} = {value!r}")

    def _check_vgg(self, model, where: str) -> None:
        """A VGG weight > 0 trains only with the VGG weights file: refuse the grid at load, not
        every run that draws it (the file's sha256 is checked once, here)."""
        from medvol.eval.features import check_sha256

        weights, sha256 = model.options.get("vgg_weights"), model.options.get("vgg_sha256")
        if not (weights and sha256):
            raise MedvolError(f"{where} needs model.vgg_weights (a local torchvision VGG16/19 state_dict "
                              "file) and model.vgg_sha256 in the config or in 'fixed'")
        weights = Path(weights).expanduser()
        if not weights.is_file():
            raise MedvolError(f"{where}: model.vgg_weights {weights} does not exist")
        try:
            check_sha256(weights, sha256, "VGG")
        except MedvolError as error:
            raise MedvolError(f"{where}: {error}") from None
        self._vgg_checked = True

    @property
    def size(self) -> int:
        """Distinct configurations in the grid: ``when`` rules merge those that differ only in a key
        they unset (counted exactly up to :data:`COUNT_LIMIT` combinations, else an upper bound)."""
        nominal = math.prod(len(values) for _, values in self.space)
        if not self.when or nominal > COUNT_LIMIT:
            return nominal
        seen = set()
        for combo in itertools.product(*(values for _, values in self.space)):
            values = {key: value for (keys, _), value in zip(self.space, combo) for key in keys}
            seen.add(canonical_hash(self._apply_when(values)))
        return len(seen)

    def draw(self, count: int, seed: int) -> list[dict[str, Any]]:
        """The first ``count`` configurations of this grid for ``seed`` (see the module docstring).

        Returns:
            One ``{config key: value}`` per run, only the keys that are set (``when``).
        """
        if count < 1:
            raise MedvolError(f"--runs {count}: must be at least 1")
        if count > self.size:
            raise MedvolError(f"--runs {count}: the grid {self.path} holds only {self.size} configurations")
        drawn: list[dict[str, Any]] = []
        seen: set[str] = set()
        for i in range(count):
            rng = np.random.default_rng([seed, i])
            for _ in range(MAX_ATTEMPTS):
                values = self._one(rng, i)
                key = canonical_hash(values)
                if key not in seen:
                    break
            else:
                why = f"; stratify by {self.stratify} gives each value 1/{len(self._strata())} of the runs" \
                    if self.stratify else ""
                raise MedvolError(f"--runs {count}: no configuration left for run {i} that differs "
                                  f"from the earlier runs (grid {self.path}{why})")
            seen.add(key)
            drawn.append(values)
        return drawn

    def ordered(self, count: int, seed: int) -> list[dict[str, Any]]:
        """The first ``count`` of every distinct configuration, in an order shuffled by ``seed``
        (the ``grid`` sampler: ``--runs`` equal to :attr:`size` trains the whole table).

        Raises:
            MedvolError: ``count`` out of range, or a grid too large to enumerate.
        """
        nominal = math.prod(len(values) for _, values in self.space)
        if nominal > COUNT_LIMIT:
            raise MedvolError(f"--sampler grid: the grid {self.path} has {nominal} combinations, too many "
                              f"to enumerate (limit {COUNT_LIMIT}); use --sampler random")
        if count < 1:
            raise MedvolError(f"--runs {count}: must be at least 1")
        every: dict[str, dict[str, Any]] = {}
        for combo in itertools.product(*(values for _, values in self.space)):
            values = self._apply_when({key: value for (keys, _), value in zip(self.space, combo) for key in keys})
            every.setdefault(canonical_hash(values), values)
        if count > len(every):
            raise MedvolError(f"--runs {count}: the grid {self.path} holds only {len(every)} configurations")
        configs = list(every.values())
        order = np.random.default_rng([seed, len(configs)]).permutation(len(configs))
        return [configs[j] for j in order[:count]]

    def params(self, values: dict[str, Any]) -> dict[str, Any]:
        """A drawn configuration as Optuna parameters: one per grid entry that is set, named as in
        the grid file (``"train.lr.G,train.lr.D"``), its value as :meth:`choices` encodes it."""
        out = {}
        for keys, choices in self.space:
            if keys[0] in values:
                out[",".join(keys)] = _encode(values[keys[0]], choices)
        return out

    def choices(self, keys: tuple[str, ...]) -> list:
        """The Optuna categorical choices of a grid entry: its values, or their JSON text when one
        of them is not a scalar (Optuna stores only None, bool, int, float and str)."""
        values = next(v for k, v in self.space if k == keys)
        return [_encode(v, values) for v in values]

    def _strata(self) -> list:
        return next(values for keys, values in self.space if self.stratify in keys)

    def _one(self, rng: np.random.Generator, i: int) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for keys, choices in self.space:
            if self.stratify in keys:
                value = choices[i % len(choices)]
            else:
                value = choices[int(rng.integers(len(choices)))]
            for key in keys:
                values[key] = value
        return self._apply_when(values)

    def _apply_when(self, values: dict[str, Any]) -> dict[str, Any]:
        for key, cond in self.when.items():
            if not all(values.get(other) in allowed for other, allowed in cond.items()):
                values.pop(key, None)
        return values

"""Model options: one dataclass per model, registered with it (:attr:`ModelSpec.options`).

A model's options dataclass is the one place that names its build options and gives their types
(``Literal`` choices, ``Optional``), published defaults and documentation (its ``Attributes``):
the config reads it for ``model.options`` (and the flat ``model.<key>`` spelling of older
configs), :func:`medvol.models.build` for the defaults and the accepted names, ``medvol profile
--model-option`` and ``medvol info --option`` for their checks. Its ``__post_init__`` checks what
can be checked without building the network (ranges), so a config fails on load, not in training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from medvol.errors import MedvolError


@dataclass
class NoOptions:
    """The options of a model that has none beyond size, widths and classes."""


def check_ranges(options: object, *, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = (),
                 below_one: tuple[str, ...] = ()) -> None:
    """Refuse a value out of range with ``"<key>: must be ..., got <value>"`` (None: the option's
    own default, always accepted)."""
    for keys, need, bad in ((positive, "positive", lambda v: v <= 0), (non_negative, "non-negative", lambda v: v < 0),
                            (below_one, "below 1", lambda v: v >= 1)):
        for key in keys:
            value = getattr(options, key)
            if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # types are the config loader's (and the constructor's) to check
            if bad(value):
                raise MedvolError(f"{key}: must be {need}, got {value}")


def option_defaults(options_type: type) -> dict[str, object]:
    """The options and their defaults, in field order."""
    instance = options_type()
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(options_type)}

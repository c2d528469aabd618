"""CT window presets in Hounsfield units, and the ``--window`` parser.

A window of width W and level L shows the HU range [L - W/2, L + W/2]; napari calls that range the
layer's contrast limits. The presets are the usual radiology reading windows.
"""

from __future__ import annotations

from medvol.errors import MedvolError

#: Preset name -> (width, level) in HU.
WINDOW_WIDTH_LEVEL: dict[str, tuple[float, float]] = {
    "lung": (1500.0, -600.0),
    "mediastinum": (350.0, 50.0),
    "bone": (1800.0, 400.0),
}

#: Preset name -> (low, high) contrast limits in HU.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    name: (level - width / 2, level + width / 2) for name, (width, level) in WINDOW_WIDTH_LEVEL.items()
}


def parse_window(text: str | None) -> tuple[float, float] | None:
    """Turn a ``--window`` value into (low, high) contrast limits in HU.

    Args:
        text: a preset name (``lung``, ``mediastinum``, ``bone``), ``"LOW,HIGH"``, or None.

    Returns:
        (low, high) with low < high, or None when ``text`` is None (contrast from the data).

    Raises:
        MedvolError: for an unknown preset or a malformed or empty range.

    Example:
        >>> parse_window("lung")
        (-1350.0, 150.0)
        >>> parse_window("-160,240")
        (-160.0, 240.0)
    """
    if text is None:
        return None
    key = text.strip().lower()
    if key in WINDOW_PRESETS:
        return WINDOW_PRESETS[key]
    parts = key.split(",")
    try:
        low, high = (float(part) for part in parts)
    except ValueError:
        names = ", ".join(WINDOW_PRESETS)
        raise MedvolError(f"--window {text!r}: expected one of {names} or LOW,HIGH in HU") from None
    if not low < high:
        raise MedvolError(f"--window {text!r}: LOW must be below HIGH")
    return (low, high)

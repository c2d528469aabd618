"""Help texts that name the registry's models: filled in when help is printed, never written out by hand."""

from __future__ import annotations

import argparse

#: Placeholders a help text may hold; :class:`RegistryHelp` fills them from the model registry.
PLACEHOLDERS = ("{models}", "{models_3d}", "{models_2d}", "{widths}", "{latents}")


def registry_text(text: str) -> str:
    """``text`` with :data:`PLACEHOLDERS` replaced from ``medvol.models.registry``: every model
    (of one dimension), and the published base widths and latent lengths grouped by value."""
    if not any(token in text for token in PLACEHOLDERS):
        return text
    from medvol.models.registry import REGISTRY, model_list

    def grouped(index: int) -> str:
        values: dict[int, list[str]] = {}
        for name, spec in REGISTRY.items():
            values.setdefault((spec.base_width, spec.latent_dim)[index], []).append(name)
        return "; ".join(f"{value} for {', '.join(names)}" for value, names in values.items())

    for token, value in (("{models}", model_list()), ("{models_3d}", model_list(3)), ("{models_2d}", model_list(2)),
                         ("{widths}", grouped(0)), ("{latents}", grouped(1))):
        text = text.replace(token, value)
    return text


class RegistryHelp(argparse.HelpFormatter):
    """A help formatter that names the registry's models (:func:`registry_text`) when help is
    printed: the registry imports torch and every network, which a command line that only parses
    must not wait for, and a hand-written list would miss the next model."""

    def _format_text(self, text: str) -> str:
        return super()._format_text(registry_text(text))

    def _get_help_string(self, action: argparse.Action) -> str:
        return registry_text(super()._get_help_string(action) or "")


class RawRegistryHelp(RegistryHelp, argparse.RawDescriptionHelpFormatter):
    """:class:`RegistryHelp` that keeps the description's and epilog's line breaks."""

"""Study recipes: one YAML file per source study (``configs/studies/``) naming the data layout it
expects and the medvol commands that reproduce it, with a phantom version small enough for CI.

- :mod:`.recipe`: the format, its checks, and each step's command line;
- :mod:`.run`: :func:`run_recipe` (claim OUT, run the steps through the commands' entry points,
  resume, summarise);
- :mod:`.phantom_data`: phantom stand-ins for the studies' folder layouts;
- :mod:`.summary`: each step's outputs and scores, read from the commands' result files.
"""

from medvol.study.recipe.run import run_recipe

__all__ = ["run_recipe"]

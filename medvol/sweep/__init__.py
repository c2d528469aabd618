"""Hyper-parameter sweeps: K configurations drawn from a grid, each trained by ``medvol train``
and scored by ``medvol evaluate``; a report of the best run per loss and the spread of scores.

    from medvol.sweep import Sweep
    state = Sweep("configs/dcgan_tiny.yaml", "configs/sweeps/tiny.yaml", runs=4, out="sweeps/t").run()
"""

from medvol.sweep.grid import Grid
from medvol.sweep.runner import Sweep

__all__ = ["Grid", "Sweep"]

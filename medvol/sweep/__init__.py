"""Hyper-parameter sweeps on Optuna: K configurations drawn from a grid, each trained by
``medvol train`` and scored by ``medvol evaluate`` as one trial of an Optuna study (SQLite in the
sweep folder, or PostgreSQL for workers on several machines); a report of the best run per loss,
the spread of scores and the score against each grid key.

    from medvol.sweep import Sweep
    state = Sweep("configs/dcgan_tiny.yaml", "configs/sweeps/tiny.yaml", runs=4, out="sweeps/t").run()
"""

from medvol.sweep.grid import Grid
from medvol.sweep.sweep import Sweep

__all__ = ["Grid", "Sweep"]

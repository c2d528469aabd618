"""Peak memory and iterations/s of the training step, each configuration in a fresh process,
plus a device-free estimate of peak memory on fake tensors.

- :mod:`~medvol.profile.cases`: what one configuration is (:class:`Case`) and grids of them.
- :mod:`~medvol.profile.worker`: the fresh process running one case (``python -m``).
- :mod:`~medvol.profile.measure`: real runs (CUDA allocator peaks, CPU peak RSS, timings).
- :mod:`~medvol.profile.estimate`: the step traced on fake tensors, peak of live tensor memory.
- :mod:`~medvol.profile.runner`: launching workers, largest-batch search, :func:`run_profile`.
- :mod:`~medvol.profile.report`: markdown / CSV / JSON / PNG.
"""

from medvol.profile.cases import Case, grid, parse_list
from medvol.profile.runner import find_max_batch, run_in_subprocess, run_profile

__all__ = ["Case", "grid", "parse_list", "find_max_batch", "run_in_subprocess", "run_profile"]

"""Custom ops: one public function each, several backends (``backend="auto"`` chooses).

- :func:`meanfield_crf` — the patch-wise mean-field CRF of CRF-GAN (torch, triton, cpp, cuda).
- :func:`upsample_conv3d` — nearest x2 upsampling + 3x3x3 conv by the exact parity decomposition.
- :func:`selected_backend` — which backend ``auto`` runs for an op on a given tensor;
  :func:`available_backends` — every backend with the reason it cannot run (or None).
"""

from medvol.ops._dispatch import available_backends, selected_backend
from medvol.ops.meanfield_crf import meanfield_crf, meanfield_crf_reference
from medvol.ops.upsample_conv import fold_weights, upsample_conv3d, upsample_conv3d_reference

__all__ = [
    "available_backends",
    "fold_weights",
    "meanfield_crf",
    "meanfield_crf_reference",
    "selected_backend",
    "upsample_conv3d",
    "upsample_conv3d_reference",
]

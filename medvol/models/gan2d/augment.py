"""Classical data augmentation of the real images (the empirical study's "use of data
augmentation" switch), as opposed to DiffAugment, which transforms every image D sees.

``rand_flip_shift``: each real image is mirrored left-right with probability 1/2, then shifted by
an integer in [-S/16, S/16] pixels along each axis (drawn per image), the uncovered border
filled by repeating the edge pixels (medical backgrounds are flat, so no artificial black band).
Only real batches are transformed, before D and feature matching see them; generated images
never are. All draws come from the given ``torch.Generator``, so a step stays reproducible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def max_shift(size: int) -> int:
    """The largest shift, in pixels, for images of side ``size``: S/16 (2 pixels at 32^2)."""
    return max(1, size // 16)


def rand_flip_shift(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Randomly flipped and shifted copy of ``x [B, C, S, S]`` (all channels alike, so a mask
    channel stays aligned with its image).

    Args:
        x: real images ``[B, C, S, S]``.
        generator: the source of the flips and shifts.

    Returns:
        A new tensor of the same shape and dtype; ``x`` is not modified.
    """
    b, _, h, w = x.shape
    m = max_shift(min(h, w))
    gen_device = generator.device if generator is not None else x.device
    flips = torch.rand(b, generator=generator, device=gen_device) < 0.5
    shifts = torch.randint(-m, m + 1, (b, 2), generator=generator, device=gen_device)
    padded = F.pad(x, (m, m, m, m), mode="replicate")
    out = []
    for i in range(b):
        dy, dx = int(shifts[i, 0]), int(shifts[i, 1])
        img = padded[i, :, m - dy:m - dy + h, m - dx:m - dx + w]
        out.append(img.flip(-1) if bool(flips[i]) else img)
    return torch.stack(out)

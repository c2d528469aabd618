"""The one tolerance table of the op tests: backend result (inputs in ``dtype``) vs the float64
reference computed from the same (rounded) inputs. Checked element-wise as |a - b| <= atol + rtol |b|,
with atol scaled by the largest reference magnitude so that gradients of any size compare fairly."""

import torch

TOLERANCES = {
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
    # 11-bit significand: outputs and gradients are rounded to 4.9e-4 relative, the rest is float32.
    torch.float16: dict(rtol=3e-3, atol=3e-3),
}


def assert_close_to_reference(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    tol = TOLERANCES[dtype]
    scale = max(expected.abs().max().item(), 1.0) if expected.numel() else 1.0
    torch.testing.assert_close(actual.to(torch.float64), expected, rtol=tol["rtol"], atol=tol["atol"] * scale,
                               msg=lambda m: f"{what}: {m}")

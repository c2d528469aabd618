"""upsample_conv3d: the parity decomposition equals interpolate + conv3d, forward and gradients."""

import pytest
import torch
import torch.nn.functional as F
from _tolerances import assert_close_to_reference

from medvol.errors import MedvolError
from medvol.ops import fold_weights, upsample_conv3d, upsample_conv3d_reference

# (B, C, O, D, H, W): minimal, odd and unequal sizes, more channels.
SHAPES = [(1, 1, 1, 1, 1, 1), (2, 3, 5, 4, 3, 5), (1, 8, 4, 2, 6, 2), (3, 16, 7, 3, 3, 3)]


def _inputs(B, C, O, D, H, W, dtype, bias, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, D, H, W, generator=gen).to(dtype)
    w = (torch.randn(O, C, 3, 3, 3, generator=gen) / (27 * C) ** 0.5).to(dtype)
    b = torch.randn(O, generator=gen).to(dtype) if bias else None
    grad = torch.randn(B, O, 2 * D, 2 * H, 2 * W, generator=gen)
    return x, w, b, grad


def _run(fn, x, w, b, grad):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    out = fn(*leaves)
    (out.to(grad.dtype) * grad).sum().backward()
    return out.detach(), [t.grad for t in leaves if t is not None]


def _check(x, w, b, grad, dtype, backend="decomposed", prepare=lambda t: t):
    ref_out, ref_grads = _run(upsample_conv3d_reference, *(t.double() if t is not None else None for t in (x, w, b)),
                              grad.double())
    out, grads = _run(lambda x_, w_, b_: upsample_conv3d(prepare(x_), w_, b_, backend=backend), x, w, b, grad)
    assert out.dtype == dtype
    assert_close_to_reference(out, ref_out, dtype, "output")
    for name, g, ref in zip(("x", "weight", "bias"), grads, ref_grads):
        assert_close_to_reference(g, ref, dtype, f"grad {name}")
    return out


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("backend", ["decomposed", "torch", "auto"])
def test_matches_interpolate_conv(backend, shape, dtype, bias, seed):
    _check(*_inputs(*shape, dtype, bias, seed), dtype, backend)


def test_exact_in_float64(seed):
    x, w, b, _ = _inputs(2, 4, 3, 3, 5, 4, torch.float64, True, seed)
    torch.testing.assert_close(upsample_conv3d(x, w, b), upsample_conv3d_reference(x, w, b), rtol=1e-12, atol=1e-12)


def test_channels_last_3d_stays_channels_last(seed):
    x, w, b, grad = _inputs(2, 6, 4, 3, 4, 5, torch.float32, True, seed)
    out = _check(x, w, b, grad, torch.float32, prepare=lambda t: t.to(memory_format=torch.channels_last_3d))
    assert out.is_contiguous(memory_format=torch.channels_last_3d)


def test_non_contiguous_input(seed):
    x, w, b, grad = _inputs(1, 5, 3, 4, 4, 4, torch.float32, False, seed)
    big = torch.randn(1, 10, 4, 8, 4)
    strided = big[:, ::2, :, ::2, :]  # same shape as x, strided along C and H
    assert not strided.is_contiguous()
    permuted = lambda t: t.transpose(2, 4).contiguous().transpose(2, 4)  # noqa: E731 - dense, permuted strides
    _check(strided.contiguous(), w, b, grad, torch.float32, prepare=permuted)
    _check(strided, w, b, grad, torch.float32)


def test_gradcheck_decomposed(seed):
    x, w, b, _ = _inputs(1, 2, 1, 2, 3, 2, torch.float64, True, seed)
    leaves = [t.requires_grad_() for t in (x, w, b)]
    assert torch.autograd.gradcheck(lambda *a: upsample_conv3d(*a, backend="decomposed"), leaves, fast_mode=True)


def test_gradgradcheck_decomposed(seed):
    # Double backward goes through the interleave's hand-written backward (_Deinterleave) and back.
    x, w, b, _ = _inputs(1, 2, 2, 2, 1, 3, torch.float64, True, seed)
    leaves = [t.requires_grad_() for t in (x, w, b)]
    assert torch.autograd.gradgradcheck(lambda *a: upsample_conv3d(*a, backend="decomposed"), leaves,
                                        fast_mode=True)


@pytest.mark.parametrize("channels_last", [False, True])
def test_interleave_backward_allocates_one_gradient(channels_last, seed):
    # The interleave's backward must write one gradient of the stacked parity output and nothing
    # else (autograd's backward of slice assignments held three, that of a strided view index
    # tensors): live memory while it runs stays within one such tensor.
    from medvol.ops.upsample_conv import _Interleave
    from medvol.profile.estimate import LiveMemoryTracker, _round

    out_channels, (D, H, W) = 3, (4, 5, 6)
    y = torch.randn(2, 8 * out_channels, D + 1, H + 1, W + 1)
    if channels_last:
        y = y.contiguous(memory_format=torch.channels_last_3d)
    y.requires_grad_()
    out = _Interleave.apply(y, out_channels, channels_last)
    tracker = LiveMemoryTracker()
    with tracker:
        grad_out = torch.randn_like(out)
        (grad_y,) = torch.autograd.grad(out, y, grad_out)
    assert tracker.peak <= _round(out.nbytes) + _round(y.nbytes)
    assert grad_y.stride() == y.stride()
    # Each output voxel's gradient lands where its value came from; unused window positions get 0.
    expected = torch.zeros_like(y)
    for p in range(8):
        pd, ph, pw = p >> 2, (p >> 1) & 1, p & 1
        expected[:, p * out_channels:(p + 1) * out_channels, pd:pd + D, ph:ph + H, pw:pw + W] = \
            grad_out[:, :, pd::2, ph::2, pw::2]
    assert torch.equal(grad_y, expected)
    assert torch.equal(_Interleave.apply(expected, out_channels, channels_last), grad_out)


def test_fold_weights_of_a_single_tap():
    """A 3x3x3 kernel with only tap (0, 2, 1) lands at offset 0/1 of the parities that use it."""
    w = torch.zeros(1, 1, 3, 3, 3)
    w[0, 0, 0, 2, 1] = 1.0
    k = fold_weights(w)  # [pd, ph, pw, O, C, a, b, c]
    assert k.sum() == 8  # every parity sees every tap exactly once
    # depth tap 0 -> parity 0 offset 0 (x[d-1]) and parity 1 offset 0 (x[d]); height tap 2 -> parity 0
    # offset 1 and parity 1 offset 1; width tap 1 -> parity 0 offset 1, parity 1 offset 0.
    for pd in range(2):
        for ph in range(2):
            assert k[pd, ph, 0, 0, 0, 0, 1, 1] == 1 and k[pd, ph, 1, 0, 0, 0, 1, 0] == 1


def test_bad_arguments_raise():
    x = torch.zeros(1, 2, 3, 3, 3)
    with pytest.raises(MedvolError, match="weight"):
        upsample_conv3d(x, torch.zeros(4, 2, 5, 5, 5))
    with pytest.raises(MedvolError, match="bias"):
        upsample_conv3d(x, torch.zeros(4, 2, 3, 3, 3), torch.zeros(3))
    with pytest.raises(MedvolError, match="Triton"):
        upsample_conv3d(x, torch.zeros(4, 2, 3, 3, 3), backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_matches_interpolate_conv(dtype, seed):
    x, w, b, grad = _inputs(2, 32, 16, 8, 8, 8, dtype, True, seed)
    out = upsample_conv3d(x.cuda(), w.cuda(), b.cuda())
    ref = F.conv3d(F.interpolate(x.double(), scale_factor=2), w.double(), b.double(), padding=1)
    assert_close_to_reference(out.cpu(), ref, dtype, "cuda output")

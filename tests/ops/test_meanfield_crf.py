"""meanfield_crf: every backend vs the float64 reference, forward and all gradients."""

import pytest
import torch
from _tolerances import assert_close_to_reference

from medvol.ops import available_backends, meanfield_crf, meanfield_crf_reference

# (B, N, F, T): minimal, N not a power of two, odd F, B = 1 and 3, zero iterations.
SHAPES = [(1, 1, 1, 1), (1, 7, 33, 3), (3, 12, 40, 5), (2, 16, 129, 10), (3, 5, 17, 0)]
DTYPES = [torch.float32, torch.bfloat16]


def _inputs(B, N, F, dtype, device="cpu", seed=None):
    gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
    feats = torch.randn(B, N, F, generator=gen)
    unary = torch.randn(B, N, generator=gen) * 2
    compat = torch.randn(N, N, generator=gen)
    grad = torch.randn(B, N, generator=gen)
    return [t.to(device=device, dtype=dtype) for t in (feats, unary, compat)], grad.to(device)


def _run(fn, inputs, grad):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    (out.to(grad.dtype) * grad.to(out.device, grad.dtype)).sum().backward()
    # With T = 0 the reference does not touch feats/compat (grad None); fast backends return zeros.
    return out.detach(), [t.grad if t.grad is not None else torch.zeros_like(t) for t in leaves]


def _check_backend(backend, shape, dtype, device="cpu"):
    # The fast kernels hold only self_pairs=False, eps=0 until issue #10 part 2 ports them.
    form = {} if backend == "torch" else dict(self_pairs=False, eps=0.0)
    B, N, F, T = shape
    inputs, grad = _inputs(B, N, F, dtype, device)
    ref_out, ref_grads = _run(lambda *a: meanfield_crf_reference(*a, iterations=T, **form),
                              [t.to(torch.float64) for t in inputs], grad.to(torch.float64))
    out, grads = _run(lambda *a: meanfield_crf(*a, iterations=T, backend=backend, **form), inputs, grad)
    assert out.dtype == dtype and out.shape == (B, N)
    assert_close_to_reference(out.cpu(), ref_out.cpu(), dtype, f"{backend} logits")
    for name, g, ref, inp in zip(("feats", "unary", "compat"), grads, ref_grads, inputs):
        assert g.dtype == inp.dtype and g.shape == inp.shape
        assert_close_to_reference(g.cpu(), ref.cpu(), dtype, f"{backend} grad {name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
def test_backend_matches_float64_reference(backend, shape, dtype):
    reason = available_backends("meanfield_crf", torch.zeros(1, 1, 1))[backend]
    if reason is not None:
        pytest.skip(reason)
    _check_backend(backend, shape, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES + [(2, 64, 100_003, 10), (1, 128, 4099, 4), (8, 33, 65_537, 10)], ids=str)
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_backend_matches_float64_reference(backend, shape, dtype):
    _check_backend(backend, shape, dtype, device="cuda")


def test_reference_gradcheck():
    inputs, _ = _inputs(2, 5, 7, torch.float64, seed=3)
    leaves = [t.requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(lambda f, u, w: meanfield_crf_reference(f, u, w, iterations=4), leaves)
    assert torch.autograd.gradgradcheck(lambda f, u, w: meanfield_crf_reference(f, u, w, iterations=2), leaves)


def test_reference_definition():
    """Spells out the documented maths once, independently of the reference's code."""
    feats = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]], dtype=torch.float64)
    unary = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    compat = torch.tensor([[9.0, 1.0, 2.0], [3.0, 9.0, 0.0], [0.0, 4.0, 9.0]], dtype=torch.float64)
    s = 2 ** -0.5
    pot = torch.tensor([[9.0, 2.0 * s, 1.0], [2.0 * s, 9.0, 2.0 * s], [1.0, 2.0 * s, 9.0]], dtype=torch.float64)
    pot[0, 2] = pot[2, 0] = 0.0  # f_0 and f_2 are orthogonal
    m = 2 * torch.sigmoid(unary[0]) - 1
    # One iteration, eps = 0: the published form keeps the self-pairs (cos_ii = 1, Wsym_ii = 9).
    out = meanfield_crf_reference(feats, unary, compat, iterations=1, eps=0.0)[0]
    torch.testing.assert_close(out, unary[0] + pot @ m)
    off = pot * (1 - torch.eye(3, dtype=torch.float64))
    out = meanfield_crf_reference(feats, unary, compat, iterations=1, self_pairs=False, eps=0.0)[0]
    torch.testing.assert_close(out, unary[0] + off @ m)
    # eps enters the denominator once: cos_01 = 1 / (1 * sqrt(2) + eps).
    eps = 0.25
    pot_eps = pot.clone()
    pot_eps[0, 1] = pot_eps[1, 0] = 2.0 / (2 ** 0.5 + eps)
    pot_eps[1, 2] = pot_eps[2, 1] = 2.0 * 2.0 / (2 * 2 ** 0.5 + eps)
    pot_eps.diagonal().copy_(9.0 * torch.tensor([1 / (1 + eps), 2 / (2 + eps), 4 / (4 + eps)], dtype=torch.float64))
    out = meanfield_crf_reference(feats, unary, compat, iterations=1, eps=eps)[0]
    torch.testing.assert_close(out, unary[0] + pot_eps @ m)


@pytest.mark.parametrize("bad", [-1e-6, float("nan"), "0.1"])
def test_bad_eps_raises(bad):
    from medvol.errors import MedvolError

    feats, unary, compat = torch.randn(1, 3, 4), torch.randn(1, 3), torch.randn(3, 3)
    with pytest.raises(MedvolError, match="eps"):
        meanfield_crf(feats, unary, compat, eps=bad)
    with pytest.raises(MedvolError, match="eps"):
        meanfield_crf_reference(feats, unary, compat, eps=bad)


def test_non_contiguous_feats():
    inputs, grad = _inputs(2, 9, 50, torch.float32, seed=1)
    feats = inputs[0].transpose(0, 1).contiguous().transpose(0, 1)[:, :, ::2]  # strided rows and columns
    ref = meanfield_crf_reference(feats.double(), inputs[1].double(), inputs[2].double(), iterations=5)
    for backend in ("torch",):  # fast backends: issue #10 part 2
        if available_backends("meanfield_crf", feats)[backend] is None:
            out = meanfield_crf(feats, inputs[1], inputs[2], iterations=5, backend=backend)
            assert_close_to_reference(out, ref, torch.float32, backend)


def test_zero_feature_node_is_finite():
    inputs, grad = _inputs(1, 4, 8, torch.float32, seed=2)
    inputs[0][0, 1] = 0.0  # cos with a zero vector is 0 (eps > 0 in the denominator), not NaN
    for backend, reason in available_backends("meanfield_crf", inputs[0]).items():
        if reason is None and backend == "torch":  # fast backends: issue #10 part 2
            out, grads = _run(lambda *a: meanfield_crf(*a, iterations=3, backend=backend), inputs, grad)
            assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads), backend


def test_unported_fast_backend_raises_and_auto_runs_reference():
    from medvol.errors import MedvolError

    inputs, _ = _inputs(1, 4, 8, torch.float32, seed=4)
    for backend, reason in available_backends("meanfield_crf", inputs[0]).items():
        if reason is None and backend != "torch":
            with pytest.raises(MedvolError, match="backend='torch'"):
                meanfield_crf(*inputs, backend=backend)
    torch.testing.assert_close(meanfield_crf(*inputs), meanfield_crf_reference(*inputs))


@pytest.mark.parametrize("self_pairs", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 16, 1500), (2, 33, 257)])
def test_auto_reduced_precision_gram_form_matches_float64_reference(shape, self_pairs):
    # auto runs the Gram form for bf16/fp16 features while the kernels lack the published form.
    from medvol.ops.meanfield_crf import _meanfield_from_gram

    seed = 1234 + shape[1]
    gen = torch.Generator().manual_seed(seed)
    b, n, f = shape
    feats = torch.randn(b, n, f, generator=gen)
    unary = torch.randn(b, n, generator=gen)
    compat = torch.randn(n, n, generator=gen)
    feats[0, 0] = 0.0  # a dead node: norm 0, finite values and gradients
    for dtype, rtol, atol in ((torch.float32, 1e-5, 1e-5), (torch.bfloat16, 3e-2, 3e-2)):
        x = feats.to(dtype).requires_grad_()
        u, w = unary.clone().requires_grad_(), compat.clone().requires_grad_()
        out = _meanfield_from_gram(x, u, w, 10, self_pairs, 1e-6)
        x64 = x.detach().double().requires_grad_()
        u64, w64 = unary.double().requires_grad_(), compat.double().requires_grad_()
        ref = meanfield_crf_reference(x64, u64, w64, 10, self_pairs=self_pairs, eps=1e-6)
        weight = torch.randn(b, n, generator=gen)
        grads = torch.autograd.grad((out * weight).sum(), (x, u, w))
        refs = torch.autograd.grad((ref * weight.double()).sum(), (x64, u64, w64))
        msg = f"seed={seed} dtype={dtype}"
        torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol, msg=msg)
        for g, r in zip(grads, refs):
            assert torch.isfinite(g).all(), msg
            torch.testing.assert_close(g.double(), r, rtol=rtol, atol=atol * max(1.0, r.abs().max().item()), msg=msg)
    x = feats.bfloat16()
    assert torch.equal(meanfield_crf(x, unary, compat, backend="auto"),
                       _meanfield_from_gram(x, unary, compat, 10, True, 1e-6))

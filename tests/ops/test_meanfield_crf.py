"""meanfield_crf: every backend vs the float64 reference, forward and all gradients, both forms."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _tolerances import assert_close_to_reference

from medvol.ops import available_backends, meanfield_crf, meanfield_crf_reference

ROOT = Path(__file__).resolve().parents[2]
# (B, N, F, T): minimal, N not a power of two, odd F, B = 1 and 3, zero iterations.
SHAPES = [(1, 1, 1, 1), (1, 7, 33, 3), (3, 12, 40, 5), (2, 16, 129, 10), (3, 5, 17, 0)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
FAST = ["cpp", "triton"]  # on CPU tensors; triton runs interpreted (TRITON_INTERPRET=1, tests/conftest.py)
# The published node layout (crfgan.PatchCRF): N = S/4 nodes, each F = 64 (S/4)^2 features of the
# [B, 64, S/4, S/4, S/4] embedding; T = 10.
PRODUCTION = {64: (2, 16, 16384, 10), 128: (2, 32, 65536, 10), 256: (2, 64, 262144, 10), 512: (1, 128, 1048576, 10)}


def _skip_unless_available(backend, device="cpu"):
    reason = available_backends("meanfield_crf", torch.zeros(1, 1, 1, device=device))[backend]
    if reason is not None:
        pytest.skip(reason)


def _inputs(B, N, F, dtype, seed, device="cpu"):
    """Features with a shared component (cosines near 0.5, not the ~0 of independent vectors, so
    that the pair terms matter) and unequal norms; unaries, compatibility, an upstream gradient.

    The compatibility is scaled by N^-1/2 so that the messages stay O(1) at every N: with O(1)
    entries, 64 nodes send messages of ~4, the sigmoids saturate, and the ten iterations amplify
    float32 rounding (plain PyTorch in float32 then misses the float64 gradients by 2e-5 of their
    largest value, beyond the table's float32 tolerance).
    """
    gen = torch.Generator().manual_seed(seed)
    feats = (torch.randn(B, 1, F, generator=gen) + torch.randn(B, N, F, generator=gen)) \
        * torch.rand(B, N, 1, generator=gen).add(0.5)
    unary = torch.randn(B, N, generator=gen) * 2
    compat = torch.randn(N, N, generator=gen) * 2 / max(N, 1) ** 0.5
    grad = torch.randn(B, N, generator=gen)
    return [t.to(device=device, dtype=dtype) for t in (feats, unary, compat)], grad.to(device)


def _run(fn, inputs, grad):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    (out.to(grad.dtype) * grad.to(out.device, grad.dtype)).sum().backward()
    # With T = 0 the reference does not touch feats/compat (grad None); fast backends return zeros.
    return out.detach(), [t.grad if t.grad is not None else torch.zeros_like(t) for t in leaves]


def _check(backend, inputs, grad, dtype, *, iterations, prepare=lambda f: f, **form):
    """Backend on ``inputs`` (feats through ``prepare``) vs the float64 reference on the same values."""
    B, N = inputs[1].shape
    ref_out, ref_grads = _run(lambda *a: meanfield_crf_reference(*a, iterations=iterations, **form),
                              [t.to(torch.float64) for t in inputs], grad.to(torch.float64))
    out, grads = _run(lambda f, u, w: meanfield_crf(prepare(f), u, w, iterations=iterations, backend=backend, **form),
                      inputs, grad)
    assert out.dtype == dtype and out.shape == (B, N)
    assert_close_to_reference(out.cpu(), ref_out.cpu(), dtype, f"{backend} logits")
    for name, g, ref, inp in zip(("feats", "unary", "compat"), grads, ref_grads, inputs):
        assert g.dtype == inp.dtype and g.shape == inp.shape
        assert_close_to_reference(g.cpu(), ref.cpu(), dtype, f"{backend} grad {name}")


@pytest.mark.parametrize("self_pairs", [True, False])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("backend", ["torch", *FAST])
def test_backend_matches_float64_reference(backend, shape, dtype, self_pairs, seed):
    _skip_unless_available(backend)
    B, N, F, T = shape
    inputs, grad = _inputs(B, N, F, dtype, seed)
    _check(backend, inputs, grad, dtype, iterations=T, self_pairs=self_pairs)


@pytest.mark.parametrize("eps", [0.0, 1e-6, 0.5])
@pytest.mark.parametrize("self_pairs", [True, False])
@pytest.mark.parametrize("backend", FAST)
def test_eps_enters_the_denominator_like_the_reference(backend, self_pairs, eps, seed):
    _skip_unless_available(backend)
    # Small features make eps = 0.5 a large change of every cosine (|f_i||f_j| ~ 1).
    inputs, grad = _inputs(2, 9, 31, torch.float32, seed)
    inputs[0] = inputs[0] / inputs[0].norm(dim=-1).mean()
    _check(backend, inputs, grad, torch.float32, iterations=6, self_pairs=self_pairs, eps=eps)


def _production(backends, slow_from):
    """(backend, size) at every published size; sizes >= slow_from[backend] marked slow."""
    return [pytest.param(b, s, marks=[pytest.mark.slow] if s >= slow_from[b] else [], id=f"{b}-{s}")
            for b in backends for s in PRODUCTION]


@pytest.mark.parametrize("self_pairs", [True, False])
@pytest.mark.parametrize("backend,size", _production(FAST, {"cpp": 256, "triton": 128}))
def test_production_shapes_match_float64_reference(backend, size, self_pairs, seed):
    _skip_unless_available(backend)
    B, N, F, T = PRODUCTION[size]
    inputs, grad = _inputs(B, N, F, torch.float32, seed)
    _check(backend, inputs, grad, torch.float32, iterations=T, self_pairs=self_pairs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("backend", FAST)
def test_reduced_precision_features_at_the_64_cubed_shape(backend, dtype, seed):
    # The optimized CRF-GAN hands the bf16/fp16 embedding over as is; unaries stay float32.
    _skip_unless_available(backend)
    B, N, F, T = PRODUCTION[64]
    (feats, unary, compat), grad = _inputs(1, N, F, torch.float32, seed)
    inputs = [feats.to(dtype), unary, compat]
    ref_out, ref_grads = _run(lambda *a: meanfield_crf_reference(*a, iterations=T),
                              [t.to(torch.float64) for t in inputs], grad.double())
    out, grads = _run(lambda *a: meanfield_crf(*a, iterations=T, backend=backend), inputs, grad)
    assert out.dtype == torch.float32 and grads[0].dtype == dtype
    assert_close_to_reference(out, ref_out, torch.float32, "logits")  # float32 sums of exact products
    assert_close_to_reference(grads[0], ref_grads[0], dtype, "grad feats")
    for name, g, ref in zip(("unary", "compat"), grads[1:], ref_grads[1:]):
        assert_close_to_reference(g, ref, torch.float32, f"grad {name}")


@pytest.mark.parametrize("threads", [2, 3, 4])
@pytest.mark.parametrize("shape", [(2, 33, 1500), (1, 128, 4096), (2, 32, 2049), (2, 64, 1025)], ids=str)
def test_cpp_many_columns_and_threads(shape, threads, seed):
    """F > 1024 (several column blocks) at N = 32, 33, 64, 128: the former AVX-512 Gram kernel read
    past its buffer here (segfault at (2, 33, 1500) and (1, 128, 4096)). At a given number of
    threads the result is the same from run to run (the BLAS's rounding may depend on it)."""
    _skip_unless_available("cpp")
    B, N, F = shape
    inputs, grad = _inputs(B, N, F, torch.float32, seed)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        _check("cpp", inputs, grad, torch.float32, iterations=10)
        runs = [torch.ops.medvol.meanfield_crf_forward(*inputs, 10, True, 1e-6) for _ in range(2)]
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_cpp_crash_shapes_in_a_subprocess(seed):
    """The two shapes that crashed the former kernel (exit 139), forward and backward, in a child
    process: a segfault there fails this test instead of ending the test session."""
    _skip_unless_available("cpp")
    script = (
        "import sys, torch\n"
        "from medvol.ops import meanfield_crf\n"
        "torch.manual_seed(int(sys.argv[1])); torch.set_num_threads(2)\n"
        "for shape in ((2, 33, 1500), (1, 128, 4096)):\n"
        "    x = torch.randn(*shape, requires_grad=True)\n"
        "    out = meanfield_crf(x, torch.randn(shape[:2]), torch.randn(shape[1], shape[1]), backend='cpp')\n"
        "    out.sum().backward()\n"
        "    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()\n"
        "print('done')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    child = subprocess.run([sys.executable, "-c", script, str(seed)], capture_output=True, text=True, env=env,
                           timeout=300)
    assert child.returncode == 0 and child.stdout.strip() == "done", \
        f"exit {child.returncode}\n{child.stdout}\n{child.stderr[-2000:]}"


@pytest.mark.parametrize("shape", [(2, 33, 1500), (1, 128, 4096)], ids=str)
def test_triton_many_columns_and_nodes(shape, seed):
    """The cpp crash shapes through the Triton kernels: N past one 32/64-row tile, F over many
    BLOCK_K tiles and several split-K chunks."""
    _skip_unless_available("triton")
    B, N, F = shape
    inputs, grad = _inputs(B, N, F, torch.float32, seed)
    _check("triton", inputs, grad, torch.float32, iterations=10, self_pairs=True)


@pytest.mark.parametrize("backend", ["torch", *FAST])
def test_non_contiguous_feats(backend, seed):
    _skip_unless_available(backend)
    inputs, grad = _inputs(2, 9, 50, torch.float32, seed)
    views = {
        # Rows of a larger tensor (F contiguous, strided rows and batch): read in place.
        "strided rows": lambda f: torch.cat([f, f], dim=2)[:, :, :50],
        # A transposed view ([B, F, N] storage): F is the strided dimension.
        "transposed": lambda f: f.transpose(1, 2).contiguous().transpose(1, 2),
        "strided columns": lambda f: torch.stack([f, f], dim=3).flatten(2)[:, :, ::2],
    }
    for name, view in views.items():
        probe = view(inputs[0])
        assert not probe.is_contiguous() and torch.equal(probe, inputs[0]), name
        _check(backend, inputs, grad, torch.float32, iterations=5, prepare=view)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's 0 / 0
@pytest.mark.parametrize("backend", ["torch", *FAST])
def test_zero_feature_node(backend, seed):
    _skip_unless_available(backend)
    inputs, grad = _inputs(1, 4, 8, torch.float32, seed)
    inputs[0][0, 1] = 0.0
    # eps > 0: cos with a zero vector is 0, values and gradients finite, equal to the reference.
    _check(backend, inputs, grad, torch.float32, iterations=3)
    # eps = 0 (the published 64^3 model): 0 / 0 makes every logit NaN, on every backend alike.
    out = meanfield_crf(*inputs, iterations=3, eps=0.0, backend=backend)
    assert torch.isnan(out).all()


@pytest.mark.parametrize("backend", FAST)
def test_double_backward_raises_naming_the_backend(backend, seed):
    _skip_unless_available(backend)
    inputs, grad = _inputs(1, 6, 20, torch.float32, seed)
    leaves = [t.requires_grad_() for t in inputs]
    out = meanfield_crf(*leaves, iterations=4, backend=backend)
    first = torch.autograd.grad((out * grad).sum(), leaves, create_graph=True)
    plain = torch.autograd.grad((meanfield_crf(*leaves, iterations=4, backend=backend) * grad).sum(), leaves)
    for g, p in zip(first, plain):  # create_graph changes nothing in the first derivatives
        assert torch.equal(g, p)
    for g in first:
        for leaf in leaves:
            with pytest.raises(RuntimeError, match=f"backend '{backend}' does not support double backward.*"
                                                   "backend='torch'"):
                torch.autograd.grad(g.square().sum(), leaf, retain_graph=True)
    # The reference differentiates twice (gradgradcheck below); here: it runs.
    ref = meanfield_crf(*leaves, iterations=4, backend="torch")
    (g_feats,) = torch.autograd.grad((ref * grad).sum(), leaves[0], create_graph=True)
    assert torch.autograd.grad(g_feats.square().sum(), leaves[2])[0].abs().sum() > 0


@pytest.mark.gpu
@pytest.mark.parametrize("self_pairs", [True, False])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES + [(2, 64, 100_003, 10), (1, 128, 4099, 4), (8, 33, 65_537, 10),
                                            PRODUCTION[256], PRODUCTION[512]], ids=str)
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_backend_matches_float64_reference(backend, shape, dtype, self_pairs, seed):
    B, N, F, T = shape
    inputs, grad = _inputs(B, N, F, dtype, seed, device="cuda")
    _check(backend, inputs, grad, dtype, iterations=T, self_pairs=self_pairs)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_non_contiguous_and_double_backward(backend, seed):
    inputs, grad = _inputs(2, 9, 50, torch.float32, seed, device="cuda")
    _check(backend, inputs, grad, torch.float32, iterations=5, prepare=lambda f: f.transpose(1, 2).contiguous()
           .transpose(1, 2))
    leaves = [t.requires_grad_() for t in inputs]
    (g,) = torch.autograd.grad(meanfield_crf(*leaves, backend=backend).sum(), leaves[0], create_graph=True)
    with pytest.raises(RuntimeError, match=f"backend '{backend}' does not support double backward"):
        torch.autograd.grad(g.sum(), leaves[0])


def test_reference_gradcheck(seed):
    inputs, _ = _inputs(2, 5, 7, torch.float64, seed)
    leaves = [t.requires_grad_() for t in inputs]
    for self_pairs in (True, False):
        assert torch.autograd.gradcheck(
            lambda f, u, w: meanfield_crf_reference(f, u, w, iterations=4, self_pairs=self_pairs), leaves)
        assert torch.autograd.gradgradcheck(
            lambda f, u, w: meanfield_crf_reference(f, u, w, iterations=2, self_pairs=self_pairs), leaves)


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


def test_cpp_op_checks_eps():
    _skip_unless_available("cpp")
    feats, unary, compat = torch.randn(1, 3, 4), torch.randn(1, 3), torch.randn(3, 3)
    with pytest.raises(RuntimeError, match="eps must be >= 0"):
        torch.ops.medvol.meanfield_crf_forward(feats, unary, compat, 2, True, -1.0)

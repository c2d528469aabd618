"""The patch-wise mean-field CRF of CRF-GAN: one function, four backends.

Nodes i = 1..N carry features f_i (a row of ``feats``) and unary logits u_i. With the learned
compatibility W and Wsym = (W + W^T) / 2, the pair potentials follow the published CRF-GAN:

    cos_ij = f_i.f_j / (|f_i| |f_j| + eps),   P_ij = cos_ij * Wsym_ij,

self-pairs included (P_ii = Wsym_ii cos_ii, so ``compat``'s diagonal is learned), eps = 1e-6 by
default (the published 64^3 model uses eps = 0). ``self_pairs=False`` zeroes the diagonal of P
(medvol's former choice: a node sends no message to itself). Mean field runs T iterations from
l = u:  q = sigmoid(l);  l <- u + P (2q - 1).  The result is l.

Fast backends compute the raw Gram G = F F^T in one pass over ``feats`` (norms n_i = sqrt(G_ii)
from its diagonal, no normalised copy of feats), run the iterations on N x N matrices, and save for
backward only G and the T logit vectors entering each iteration. Backward walks the iterations
back, forms dP = sum_t g_t m_{t-1}^T, chains it through P = C * Wsym (diagonal masked without
self-pairs) and C = G / (n n^T + eps) into Gsym = dG + dG^T, and gives dL/dF = Gsym F in a second
pass over feats.

Backends: ``torch`` (the reference below, any float dtype, double backward works), ``triton``
(kernels/meanfield_crf.py), ``cpp`` (csrc/cpu, ATen GEMMs over column blocks), ``cuda``
(csrc/cuda). Every backend computes both forms (``self_pairs`` True or False, any ``eps >= 0``).
The fast backends take float32, bfloat16 or float16 ``feats`` and accumulate in float32; N <= 128
for ``triton``/``cuda``. Their backward is one fused kernel, not differentiable: differentiating
through it again (double backward) raises a RuntimeError naming the backend.
"""

from __future__ import annotations

import functools

import torch

from medvol.errors import MedvolError
from medvol.ops import _dispatch, _loader

BACKENDS = ("torch", "triton", "cpp", "cuda")
MAX_NODES_GPU = 128
_FAST_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_options(self_pairs: bool, eps: float) -> None:
    if not isinstance(self_pairs, bool):
        raise MedvolError(f"meanfield_crf: self_pairs must be True or False, got {self_pairs!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise MedvolError(f"meanfield_crf: eps must be a number >= 0, got {eps!r}")


def meanfield_crf_reference(feats: torch.Tensor, unary: torch.Tensor, compat: torch.Tensor,
                            iterations: int = 10, *, self_pairs: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Plain-PyTorch mean-field CRF, written for clarity: the ground truth of the tests.

    Computes in float32 (float64 if any input is float64) and returns ``unary.dtype``.

    Args:
        feats: [B, N, F] node features.
        unary: [B, N] unary logits.
        compat: [N, N] compatibility (symmetrised inside).
        iterations: number of mean-field updates T >= 0.
        self_pairs: keep P_ii = Wsym_ii cos_ii (published); False zeroes the diagonal of P.
        eps: >= 0, added to |f_i| |f_j| in the cosine's denominator (0: a zero feature vector
            gives NaN, as in the published 64^3 model).

    Returns:
        [B, N] node logits.
    """
    _check_options(self_pairs, eps)
    dtype = torch.promote_types(torch.promote_types(feats.dtype, unary.dtype),
                                torch.promote_types(compat.dtype, torch.float32))
    f, u, w = feats.to(dtype), unary.to(dtype), compat.to(dtype)
    norm = f.norm(dim=-1)
    cos = (f @ f.transpose(1, 2)) / (norm.unsqueeze(-1) * norm.unsqueeze(-2) + eps)
    return _mean_field(cos, u, w, iterations, self_pairs).to(unary.dtype)


def _mean_field(cos: torch.Tensor, u: torch.Tensor, w: torch.Tensor, iterations: int,
                self_pairs: bool) -> torch.Tensor:
    """T mean-field updates from cosines [B, N, N], unaries [B, N] and compatibility [N, N]."""
    wsym = (w + w.t()) / 2
    if not self_pairs:
        wsym = wsym * (1.0 - torch.eye(w.shape[0], dtype=wsym.dtype, device=w.device))
    pot = cos * wsym
    logits = u
    for _ in range(iterations):
        logits = u + (pot @ (2 * torch.sigmoid(logits) - 1).unsqueeze(-1)).squeeze(-1)
    return logits


def _forward_fake(feats, unary, compat, iterations, self_pairs, eps):
    B, N, _ = feats.shape
    return (feats.new_empty(B, N, dtype=torch.float32), feats.new_empty(B, N, N, dtype=torch.float32),
            feats.new_empty(iterations, B, N, dtype=torch.float32))


def _backward_fake(grad, feats, compat, gram, saved, self_pairs, eps):
    N = feats.shape[1]
    return (feats.new_empty(feats.shape), grad.new_empty(grad.shape, dtype=torch.float32),
            compat.new_empty(N, N, dtype=torch.float32))


def _setup_context(ctx, inputs, output):
    feats, unary, compat, _, self_pairs, eps = inputs
    _, gram, saved = output
    ctx.save_for_backward(feats, compat, gram, saved)
    ctx.dtypes = (unary.dtype, compat.dtype)
    ctx.form = (self_pairs, eps)


def _no_second_derivative(backend: str, grads: tuple, graph_inputs: tuple) -> tuple:
    """The gradients, made to raise if anything differentiates through them (double backward).

    Under ``create_graph=True`` autograd would otherwise treat the fused backward as a constant and
    return zeros for second derivatives (with only a warning). As in
    ``torch.autograd.function.once_differentiable``, the gradients become outputs of an autograd
    node that raises when reached; unlike there, that node also takes the backward's own inputs
    (``graph_inputs``: feats, compat, the incoming gradient, the forward's outputs), so that every
    second derivative, with respect to any of them, passes through it.
    """
    message = (f"meanfield_crf: backend {backend!r} does not support double backward (its backward is a"
               " fused kernel); use backend='torch' to differentiate through the CRF twice")
    error = torch._C._functions.DelayedError(message.encode(), len(grads) + len(graph_inputs))
    return error(*[g.detach().requires_grad_() for g in grads], *graph_inputs)[:len(grads)]


def _make_backward(backward_op, backend_of):
    def backward(ctx, grad_logits, _grad_gram, _grad_saved):
        feats, compat, gram, saved = ctx.saved_tensors
        with torch.no_grad():
            if grad_logits is None:
                grad_logits = gram.new_zeros(gram.shape[:2])
            grad_feats, grad_unary, grad_compat = backward_op(grad_logits, feats, compat, gram, saved, *ctx.form)
            grads = (grad_feats, grad_unary.to(ctx.dtypes[0]), grad_compat.to(ctx.dtypes[1]))
        if torch.is_grad_enabled():  # create_graph=True
            grads = _no_second_derivative(backend_of(feats), grads, (grad_logits, feats, compat, gram, saved))
        return (*grads, None, None, None)

    return backward
@functools.lru_cache(maxsize=None)
def _extension_op():
    """torch.ops.medvol.meanfield_crf_forward with its fake impl and autograd (needs medvol._C)."""
    _loader.ops_registered()  # loads medvol._C if the dispatch has not yet
    forward = torch.ops.medvol.meanfield_crf_forward
    backward = torch.ops.medvol.meanfield_crf_backward
    torch.library.register_fake("medvol::meanfield_crf_forward")(_forward_fake)
    torch.library.register_fake("medvol::meanfield_crf_backward")(_backward_fake)
    torch.library.register_autograd("medvol::meanfield_crf_forward",
                                    _make_backward(backward, lambda t: "cuda" if t.is_cuda else "cpp"),
                                    setup_context=_setup_context)
    return forward


@functools.lru_cache(maxsize=None)
def _triton_op():
    """The Triton launchers wrapped as the custom op medvol_triton::meanfield_crf_forward.

    Being a custom op with a fake impl, it traces under FakeTensorMode like the C++ op.
    """
    from medvol.kernels import meanfield_crf as kernels

    @torch.library.custom_op("medvol_triton::meanfield_crf_forward", mutates_args=())
    def forward(feats: torch.Tensor, unary: torch.Tensor, compat: torch.Tensor, iterations: int,
                self_pairs: bool, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return kernels.meanfield_crf_forward(feats, unary, compat, iterations, self_pairs, eps)

    @torch.library.custom_op("medvol_triton::meanfield_crf_backward", mutates_args=())
    def backward(grad: torch.Tensor, feats: torch.Tensor, compat: torch.Tensor, gram: torch.Tensor,
                 saved: torch.Tensor, self_pairs: bool,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return kernels.meanfield_crf_backward(grad, feats, compat, gram, saved, self_pairs, eps)

    forward.register_fake(_forward_fake)
    backward.register_fake(_backward_fake)
    forward.register_autograd(_make_backward(backward, lambda _: "triton"), setup_context=_setup_context)
    return forward


def _unavailable(backend: str, feats: torch.Tensor) -> str | None:
    fake = _dispatch.is_fake(feats)
    if backend == "torch":
        return None
    if feats.dtype not in _FAST_DTYPES:
        return f"it takes float32, bfloat16 or float16 feats, got {feats.dtype} (use backend='torch')"
    if backend in ("triton", "cuda") and feats.shape[1] > MAX_NODES_GPU:
        return f"it handles N <= {MAX_NODES_GPU} nodes, got N = {feats.shape[1]}"
    if backend == "triton":
        # On fake tensors only the custom op's fake impl runs: any device will do.
        return _loader._import_triton() if fake else _loader.triton_status(feats.device)
    if backend == "cpp":
        if not fake and feats.device.type != "cpu":
            return f"it runs on CPU tensors, got a {feats.device.type} tensor"
        return _loader.cpp_status()
    if fake:
        return None if _loader.ops_registered() else _loader.cpp_status()
    if feats.device.type != "cuda":
        return f"it runs on CUDA tensors, got a {feats.device.type} tensor"
    return _loader.cuda_status()


def _auto_order(feats: torch.Tensor) -> tuple[str, ...]:
    if feats.device.type == "cpu":
        # The interpreted Triton path is for tests only; never picked automatically on the CPU.
        return ("cpp", "torch")
    # CUDA: Triton first (tensor-core Gram), then the CUDA kernels (CUDA-core Gram).
    # Fake and meta tensors get the same order: both fast backends have the same fake impl.
    return ("triton", "cuda", "torch")


_dispatch.register("meanfield_crf", BACKENDS, _unavailable, _auto_order)


def meanfield_crf(feats: torch.Tensor, unary: torch.Tensor, compat: torch.Tensor, iterations: int = 10, *,
                  self_pairs: bool = True, eps: float = 1e-6, backend: str = "auto") -> torch.Tensor:
    """Mean-field CRF over N nodes with cosine-similarity pair potentials (module docstring).

    Args:
        feats: [B, N, F] node features (float32, bfloat16 or float16; any float for ``torch``).
            F may be millions; the fast backends read it once forward and once backward.
        unary: [B, N] unary logits.
        compat: [N, N] learned compatibility; symmetrised inside (its diagonal is used only
            with ``self_pairs``).
        iterations: T >= 0 mean-field updates (10 in CRF-GAN).
        self_pairs: keep P_ii = Wsym_ii cos_ii (published CRF-GAN); False zeroes P's diagonal.
        eps: >= 0, added to |f_i| |f_j| in the cosine's denominator (1e-6; 0 in the published
            64^3 model, where a zero feature vector gives NaN).
        backend: ``"auto"`` (see :func:`medvol.ops.selected_backend`), ``"torch"``, ``"triton"``,
            ``"cpp"`` or ``"cuda"``.

    Returns:
        [B, N] logits in ``unary.dtype``. Differentiable w.r.t. feats, unary and compat on every
        backend; gradients come back in each input's dtype. Double backward works with ``torch``
        only: on a fast backend, differentiating the gradients again raises a RuntimeError.

    Raises:
        MedvolError: bad shapes or options (eps < 0), or a named backend that cannot run here
            (with the reason).

    Example:
        >>> feats, unary, compat = torch.randn(2, 16, 4096), torch.randn(2, 16), torch.randn(16, 16)
        >>> meanfield_crf(feats, unary, compat, iterations=10).shape
        torch.Size([2, 16])
    """
    if feats.dim() != 3:
        raise MedvolError(f"meanfield_crf: feats must be [B, N, F], got shape {tuple(feats.shape)}")
    B, N, _ = feats.shape
    if tuple(unary.shape) != (B, N):
        raise MedvolError(f"meanfield_crf: unary must be [B, N] = [{B}, {N}], got {tuple(unary.shape)}")
    if tuple(compat.shape) != (N, N):
        raise MedvolError(f"meanfield_crf: compat must be [N, N] = [{N}, {N}], got {tuple(compat.shape)}")
    if iterations < 0:
        raise MedvolError(f"meanfield_crf: iterations must be >= 0, got {iterations}")
    _check_options(self_pairs, eps)
    chosen = _dispatch.choose("meanfield_crf", backend, feats)
    if chosen == "torch":
        return meanfield_crf_reference(feats, unary, compat, iterations, self_pairs=self_pairs, eps=eps)
    op = _triton_op() if chosen == "triton" else _extension_op()
    logits, _, _ = op(feats, unary, compat, int(iterations), self_pairs, float(eps))
    return logits.to(unary.dtype)

"""Triton kernels of the mean-field CRF (see medvol/ops/meanfield_crf.py for the maths).

Four kernels, two per direction; the launchers allocate outputs and pick block sizes:

forward   ``_gram_partial``  split-K raw Gram: program (s, b) computes F_b[:, chunk s] F_b[:, chunk s]^T
                             with ``tl.dot`` (one read of feats in total);
          ``_crf_forward``   program b sums the S partials in a fixed order (deterministic), normalises
                             with the diagonal (cos = G_ij / (n_i n_j + eps), self-pairs kept or
                             dropped by the constexpr SELF_PAIRS) and runs the T iterations, saving
                             the T logit vectors.
backward  ``_crf_backward``  program b walks the iterations back (dP accumulated as outer products)
                             and writes Gsym = dG + dG^T, dWsym per batch item and grad_unary;
          ``_gram_apply``    grad_F = Gsym F, one read of feats and one write of grad_F.

Tiles are widened to fp32 in registers and multiplied on tensor cores: ``tf32x3`` for fp32 feats
(about fp32 accuracy), plain ``tf32`` for bf16/fp16 feats, whose values tf32 holds exactly, so
their products are exact and accumulate in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_NODES = 128


@triton.jit
def _gram_partial(F, P, N, K, stride_fb, stride_fn, chunk, S,
                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    s = tl.program_id(0)
    b = tl.program_id(1)
    rn = tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_N), dtype=tl.float32)
    k_start = s * chunk
    base = F + b.to(tl.int64) * stride_fb + rn[:, None].to(tl.int64) * stride_fn
    for kk in range(0, chunk, BLOCK_K):
        ks = k_start + kk + rk
        x = tl.load(base + ks[None, :], mask=(rn[:, None] < N) & (ks[None, :] < K), other=0.0).to(tl.float32)
        acc += tl.dot(x, tl.trans(x), input_precision=PRECISION)
    out = P + ((b * S + s) * N + rn[:, None]).to(tl.int64) * N + rn[None, :]
    tl.store(out, acc, mask=(rn[:, None] < N) & (rn[None, :] < N))


@triton.jit
def _potentials(g, W, N, eps, SELF_PAIRS: tl.constexpr, BLOCK_N: tl.constexpr):
    """From the raw Gram tile g: norms n, cosines C = g / (n n^T + eps), the masked Wsym (zero
    diagonal without self-pairs) and potentials P = C Wsym; all zero outside the N x N block."""
    rn = tl.arange(0, BLOCK_N)
    i = rn[:, None]
    j = rn[None, :]
    inside = (i < N) & (j < N)
    # The diagonal can only be >= 0; the clamp keeps rounding from making a NaN.
    nrm = tl.sqrt(tl.maximum(tl.sum(tl.where(i == j, g, 0.0), axis=1), 0.0))
    denom = tl.where(inside, nrm[:, None] * nrm[None, :] + eps, 1.0)  # no 0 / 0 in the padding
    cos = tl.where(inside, g / denom, 0.0)
    pairs = inside if SELF_PAIRS else inside & (i != j)
    wsym = 0.5 * (tl.load(W + i * N + j, mask=pairs, other=0.0) + tl.load(W + j * N + i, mask=pairs, other=0.0))
    return nrm, denom, cos, wsym, pairs, cos * wsym


@triton.jit
def _crf_forward(P, S, U, W, G, L, SV, B, N, T, eps, SELF_PAIRS: tl.constexpr, BLOCK_N: tl.constexpr):
    b = tl.program_id(0)
    rn = tl.arange(0, BLOCK_N)
    i = rn[:, None]
    j = rn[None, :]
    inside = (i < N) & (j < N)
    g = tl.zeros((BLOCK_N, BLOCK_N), dtype=tl.float32)
    for s in range(S):
        g += tl.load(P + ((b * S + s) * N + i) * N + j, mask=inside, other=0.0)
    g = 0.5 * (g + tl.trans(g))  # tf32x3 dots round G_ij and G_ji differently; the backward needs P = P^T
    tl.store(G + (b * N + i) * N + j, g, mask=inside)
    _, _, _, _, _, pot = _potentials(g, W, N, eps, SELF_PAIRS, BLOCK_N)
    valid = rn < N
    u = tl.load(U + b * N + rn, mask=valid, other=0.0)
    lg = u
    for t in range(T):
        tl.store(SV + (t * B + b) * N + rn, lg, mask=valid)
        m = tl.where(valid, 2.0 * tl.sigmoid(lg) - 1.0, 0.0)
        lg = u + tl.sum(pot * m[None, :], axis=1)
    tl.store(L + b * N + rn, lg, mask=valid)


@triton.jit
def _crf_backward(GO, W, G, SV, DU, GS, DW, B, N, T, eps, SELF_PAIRS: tl.constexpr, BLOCK_N: tl.constexpr):
    b = tl.program_id(0)
    rn = tl.arange(0, BLOCK_N)
    i = rn[:, None]
    j = rn[None, :]
    inside = (i < N) & (j < N)
    valid = rn < N
    gram = tl.load(G + (b * N + i) * N + j, mask=inside, other=0.0)
    nrm, denom, cos, wsym, pairs, pot = _potentials(gram, W, N, eps, SELF_PAIRS, BLOCK_N)
    g = tl.load(GO + b * N + rn, mask=valid, other=0.0)
    du = g
    dp = tl.zeros((BLOCK_N, BLOCK_N), dtype=tl.float32)
    # g holds dL/dl_t while walking back; l_t = u + P m(l_{t-1}) and dP = sum_t g_t m_{t-1}^T.
    for tt in range(T):
        t = T - 1 - tt
        q = tl.sigmoid(tl.load(SV + (t * B + b) * N + rn, mask=valid, other=0.0))
        m = tl.where(valid, 2.0 * q - 1.0, 0.0)
        dp += g[:, None] * m[None, :]
        g = tl.where(valid, tl.sum(pot * g[None, :], axis=1) * 2.0 * q * (1.0 - q), 0.0)
        du += g
    # Through P = C Wsym: dWsym = dP C (masked). Through C_ij = G_ij / (n_i n_j + eps), G taken
    # with independent entries: Gsym = dG + dG^T has (dP_ij + dP_ji) Wsym_ij / (n_i n_j + eps)
    # everywhere, and the diagonal adds the path through n_i = sqrt(G_ii):
    # -(1 / n_i) sum_j Gsym_ij C_ij n_j (none for a zero node).
    gs = tl.where(inside, (dp + tl.trans(dp)) * wsym / denom, 0.0)
    srow = tl.sum(gs * cos * nrm[None, :], axis=1)
    gdiag = tl.where(nrm > 0.0, -srow / tl.where(nrm > 0.0, nrm, 1.0), 0.0)
    gs = tl.where(i == j, gs + gdiag[:, None], gs)
    tl.store(GS + (b * N + i) * N + j, gs, mask=inside)
    tl.store(DW + (b * N + i) * N + j, tl.where(pairs, dp * cos, 0.0), mask=inside)
    tl.store(DU + b * N + rn, du, mask=valid)


@triton.jit
def _gram_apply(GS, F, O, N, K, stride_fb, stride_fn,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    kb = tl.program_id(0)
    b = tl.program_id(1)
    rn = tl.arange(0, BLOCK_N)
    ks = kb * BLOCK_K + tl.arange(0, BLOCK_K)
    gs = tl.load(GS + (b * N + rn[:, None]) * N + rn[None, :],
                 mask=(rn[:, None] < N) & (rn[None, :] < N), other=0.0)
    mask = (rn[:, None] < N) & (ks[None, :] < K)
    rows = b.to(tl.int64) * stride_fb + rn[:, None].to(tl.int64) * stride_fn + ks[None, :]
    x = tl.load(F + rows, mask=mask, other=0.0).to(tl.float32)
    out = tl.dot(gs, x, input_precision=PRECISION)
    orow = (b.to(tl.int64) * N + rn[:, None]) * K + ks[None, :]
    tl.store(O + orow, out.to(O.dtype.element_ty), mask=mask)


def _block_n(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _warps(block_n: int) -> int:
    # The per-batch-item kernels hold several BLOCK_N x BLOCK_N fp32 tiles in registers.
    return {128: 16, 64: 8}.get(block_n, 4)


def _rows_last_contiguous(feats: torch.Tensor) -> torch.Tensor:
    # Rows may be strided (a view of a larger embedding) as long as F is contiguous.
    return feats if feats.stride(-1) == 1 else feats.contiguous()


def _split_k(feats: torch.Tensor, block_k: int) -> tuple[int, int]:
    """(S, chunk): about four programs per SM in total, chunks a whole number of BLOCK_K."""
    B, _, K = feats.shape
    tiles = max(1, triton.cdiv(K, block_k))
    if feats.device.type == "cuda":
        target = 4 * torch.cuda.get_device_properties(feats.device).multi_processor_count
    else:  # the interpreter: few programs keep CPU tests fast
        target = 2 * B
    S = min(tiles, max(1, triton.cdiv(target, B)))
    chunk = triton.cdiv(tiles, S) * block_k
    return triton.cdiv(max(K, 1), chunk), chunk


def meanfield_crf_forward(feats: torch.Tensor, unary: torch.Tensor, compat: torch.Tensor, iterations: int,
                          self_pairs: bool, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launcher. Returns (logits [B, N], gram [B, N, N], saved [T, B, N]), all float32."""
    feats = _rows_last_contiguous(feats)
    unary = unary.to(torch.float32).contiguous()
    compat = compat.to(torch.float32).contiguous()
    B, N, K = feats.shape
    BLOCK_N = _block_n(N)
    BLOCK_K = 64 if BLOCK_N <= 64 else 32
    S, chunk = _split_k(feats, BLOCK_K)
    opts = dict(device=feats.device, dtype=torch.float32)
    partial = torch.empty(B, S, N, N, **opts)
    gram = torch.empty(B, N, N, **opts)
    logits = torch.empty(B, N, **opts)
    saved = torch.empty(iterations, B, N, **opts)
    if B == 0:
        return logits, gram, saved
    prec = "tf32x3" if feats.dtype == torch.float32 else "tf32"
    _gram_partial[(S, B)](feats, partial, N, K, feats.stride(0), feats.stride(1), chunk, S,
                          BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, PRECISION=prec, num_warps=8 if BLOCK_N >= 128 else 4)
    _crf_forward[(B,)](partial, S, unary, compat, gram, logits, saved, B, N, iterations, float(eps),
                       SELF_PAIRS=self_pairs, BLOCK_N=BLOCK_N, num_warps=_warps(BLOCK_N))
    return logits, gram, saved


def meanfield_crf_backward(grad: torch.Tensor, feats: torch.Tensor, compat: torch.Tensor, gram: torch.Tensor,
                           saved: torch.Tensor, self_pairs: bool,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launcher. Returns (grad_feats in feats' dtype, grad_unary float32, grad_compat float32)."""
    feats = _rows_last_contiguous(feats)
    grad = grad.to(torch.float32).contiguous()
    compat = compat.to(torch.float32).contiguous()
    B, N, K = feats.shape
    T = saved.shape[0]
    BLOCK_N = _block_n(N)
    opts = dict(device=feats.device, dtype=torch.float32)
    grad_unary = torch.empty(B, N, **opts)
    gsym = torch.empty(B, N, N, **opts)
    dws = torch.empty(B, N, N, **opts)
    grad_feats = torch.empty(B, N, K, device=feats.device, dtype=feats.dtype)
    if B == 0:
        return grad_feats, grad_unary, torch.zeros(N, N, **opts)
    _crf_backward[(B,)](grad, compat, gram.contiguous(), saved.contiguous(), grad_unary, gsym, dws, B, N, T,
                        float(eps), SELF_PAIRS=self_pairs, BLOCK_N=BLOCK_N, num_warps=_warps(BLOCK_N))
    if K > 0:
        BLOCK_K = 64 if BLOCK_N <= 64 else 32
        # tf32x3 keeps fp32 gradients at about fp32 accuracy; tf32 is exact enough for bf16/fp16 outputs.
        prec = "tf32x3" if feats.dtype == torch.float32 else "tf32"
        _gram_apply[(triton.cdiv(K, BLOCK_K), B)](gsym, feats, grad_feats, N, K, feats.stride(0), feats.stride(1),
                                                  BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, PRECISION=prec,
                                                  num_warps=8 if BLOCK_N >= 128 else 4)
    dw = dws.sum(0)
    return grad_feats, grad_unary, (dw + dw.t()) * 0.5

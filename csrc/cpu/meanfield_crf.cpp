// Mean-field CRF on the CPU. See medvol/ops/meanfield_crf.py for the maths.
//
// The heavy parts are the raw Gram G = F F^T (forward) and grad_F = Gsym F (backward), each one
// pass over feats cut into blocks of kBlockK columns. Every block is one float32 GEMM through ATen
// (MKL or OpenBLAS, single-threaded inside at::parallel_for, which spreads the blocks over the
// threads); a bf16/fp16 block is first widened into a per-task buffer, a float32 block is used in
// place (rows may be strided). The T iterations and their backward are N x N work per batch item.
//
// The former hand-written micro-kernels were replaced by the GEMMs: GCC 12 vectorised the AVX-512
// clone of the Gram kernel with loads of three rows past the current one, reading past the end of
// its buffer (a segfault at N = 33, F = 1500, B = 2 and at N = 128, F = 4096).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../meanfield_crf.h"

namespace medvol {
namespace {

// Columns per block: float32 sums within a block, float64 across blocks.
constexpr int64_t kBlockK = 1024;
// Per batch item the blocks are cut into at most this many groups, each summed into its own
// float64 partial Gram; the partials are added in a fixed order, so the result does not depend on
// the number of threads.
constexpr int64_t kMaxGroups = 64;

// Columns [k0, k0 + len) of x [N, K] as float32: a view for float32 x, else widened into buf.
at::Tensor float_block(const at::Tensor& x, int64_t k0, int64_t len, const at::Tensor& buf) {
  auto block = x.narrow(1, k0, len);
  if (x.scalar_type() == at::kFloat) return block;
  auto wide = buf.narrow(1, 0, len);
  wide.copy_(block);
  return wide;
}

// gram[b] = F_b F_b^T, float32 out of float64 sums of float32 block products, exactly symmetric.
at::Tensor gram_cpu(const at::Tensor& feats) {
  const int64_t B = feats.size(0), N = feats.size(1), K = feats.size(2);
  const int64_t nblocks = (K + kBlockK - 1) / kBlockK;
  const int64_t groups = std::min(nblocks, kMaxGroups);
  const auto f32 = feats.options().dtype(at::kFloat);
  if (groups == 0) return at::zeros({B, N, N}, f32);
  auto partial = at::zeros({B, groups, N, N}, feats.options().dtype(at::kDouble));
  at::parallel_for(0, B * groups, 1, [&](int64_t begin, int64_t end) {
    const auto buf = at::empty({N, kBlockK}, f32);
    auto prod = at::empty({N, N}, f32);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / groups, g = item % groups;
      const auto x = feats.select(0, b);
      auto part = partial.select(0, b).select(0, g);
      for (int64_t blk = g * nblocks / groups; blk < (g + 1) * nblocks / groups; ++blk) {
        const int64_t k0 = blk * kBlockK;
        const auto xb = float_block(x, k0, std::min(kBlockK, K - k0), buf);
        at::mm_out(prod, xb, xb.t());
        part.add_(prod);
      }
    }
  });
  auto total = partial.select(1, 0).clone();
  for (int64_t g = 1; g < groups; ++g) total.add_(partial.select(1, g));
  return ((total + total.transpose(1, 2)) * 0.5).to(at::kFloat);
}

// out[b] = gsym[b] @ F_b, contiguous, in feats' dtype.
at::Tensor gram_apply_cpu(const at::Tensor& gsym, const at::Tensor& feats) {
  const int64_t B = feats.size(0), N = feats.size(1), K = feats.size(2);
  const int64_t nblocks = (K + kBlockK - 1) / kBlockK;
  auto out = at::empty(feats.sizes(), feats.options());
  const bool wide = feats.scalar_type() == at::kFloat;
  const auto f32 = feats.options().dtype(at::kFloat);
  at::parallel_for(0, B * nblocks, 1, [&](int64_t begin, int64_t end) {
    const auto buf = at::empty({N, kBlockK}, f32);
    const auto prod = at::empty({N, kBlockK}, f32);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / nblocks, k0 = (item % nblocks) * kBlockK;
      const int64_t len = std::min(kBlockK, K - k0);
      const auto xb = float_block(feats.select(0, b), k0, len, buf);
      auto o = out.select(0, b).narrow(1, k0, len);
      if (wide) {
        at::mm_out(o, gsym.select(0, b), xb);  // straight into the strided rows of out
      } else {
        auto p = prod.narrow(1, 0, len);
        at::mm_out(p, gsym.select(0, b), xb);
        o.copy_(p);
      }
    }
  });
  return out;
}

// Per batch item, from the raw Gram G [N, N] and W: norms n, cosines C = G / (n n^T + eps), the
// masked symmetric compatibility Wm = Wsym (zero diagonal without self-pairs) and P = C Wm.
struct PairTerms {
  std::vector<float> nrm, cos, wm, pot;
  explicit PairTerms(int64_t N) : nrm(N), cos(N * N), wm(N * N), pot(N * N) {}

  void compute(const float* G, const float* W, int64_t N, bool self_pairs, float eps) {
    for (int64_t i = 0; i < N; ++i) nrm[i] = crf_norm(G[i * N + i]);
    for (int64_t i = 0; i < N; ++i) {
      for (int64_t j = 0; j < N; ++j) {
        const int64_t ij = i * N + j;
        cos[ij] = G[ij] / (nrm[i] * nrm[j] + eps);
        wm[ij] = (self_pairs || i != j) ? 0.5f * (W[ij] + W[j * N + i]) : 0.f;
        pot[ij] = cos[ij] * wm[ij];
      }
    }
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> meanfield_crf_forward_cpu(
    const at::Tensor& feats_in, const at::Tensor& unary_in, const at::Tensor& compat_in, int64_t iterations,
    bool self_pairs, double eps) {
  check_crf_forward_args(feats_in, unary_in, compat_in, iterations, eps);
  TORCH_CHECK(feats_in.device().is_cpu(), "meanfield_crf_forward_cpu: feats must be on the CPU");
  // Detached: the block GEMMs are out= ATen calls, which refuse inputs that require grad (this
  // kernel runs below autograd, but its ATen calls, on the worker threads too, start above it).
  const auto feats = feats_in.detach();
  const auto unary = unary_in.to(at::kFloat).contiguous();
  const auto compat = compat_in.to(at::kFloat).contiguous();
  const int64_t B = feats.size(0), N = feats.size(1), T = iterations;
  auto opts = feats.options().dtype(at::kFloat);
  const auto gram = gram_cpu(feats).contiguous();
  auto logits = at::empty({B, N}, opts);
  auto saved = at::empty({T, B, N}, opts);
  const float* W = compat.data_ptr<float>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    PairTerms terms(N);
    std::vector<float> l(N), m(N);
    for (int64_t b = b0; b < b1; ++b) {
      terms.compute(gram.data_ptr<float>() + b * N * N, W, N, self_pairs, static_cast<float>(eps));
      const float* u = unary.data_ptr<float>() + b * N;
      std::copy(u, u + N, l.begin());
      for (int64_t t = 0; t < T; ++t) {
        float* s = saved.data_ptr<float>() + (t * B + b) * N;
        for (int64_t i = 0; i < N; ++i) {
          s[i] = l[i];
          m[i] = std::tanh(0.5f * l[i]);  // 2 sigmoid(l) - 1
        }
        for (int64_t i = 0; i < N; ++i) {
          float acc = 0.f;
          for (int64_t j = 0; j < N; ++j) acc += terms.pot[i * N + j] * m[j];
          l[i] = u[i] + acc;
        }
      }
      std::copy(l.begin(), l.end(), logits.data_ptr<float>() + b * N);
    }
  });
  return {logits, gram, saved};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> meanfield_crf_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& feats_in, const at::Tensor& compat_in,
    const at::Tensor& gram_in, const at::Tensor& saved_in, bool self_pairs, double eps) {
  check_crf_backward_args(grad_in, feats_in, compat_in, gram_in, saved_in, eps);
  TORCH_CHECK(feats_in.device().is_cpu(), "meanfield_crf_backward_cpu: feats must be on the CPU");
  const auto feats = feats_in.detach();  // as in the forward
  const auto grad = grad_in.to(at::kFloat).contiguous();
  const auto compat = compat_in.to(at::kFloat).contiguous();
  const auto gram = gram_in.contiguous();
  const auto saved = saved_in.contiguous();
  const int64_t B = feats.size(0), N = feats.size(1), T = saved.size(0);
  auto opts = feats.options().dtype(at::kFloat);
  auto grad_unary = at::empty({B, N}, opts);
  auto gsym = at::empty({B, N, N}, opts);
  auto dws = at::empty({B, N, N}, opts);
  const float* W = compat.data_ptr<float>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    PairTerms terms(N);
    std::vector<float> g(N), gn(N), du(N), gs(T * N), ms(T * N), dp(N * N);
    for (int64_t b = b0; b < b1; ++b) {
      terms.compute(gram.data_ptr<float>() + b * N * N, W, N, self_pairs, static_cast<float>(eps));
      for (int64_t i = 0; i < N; ++i) g[i] = du[i] = grad.data_ptr<float>()[b * N + i];
      // Walk the iterations back: g holds dL/dl_t; l_t = u + P m(l_{t-1}), m = tanh(l / 2).
      for (int64_t t = T; t >= 1; --t) {
        const float* s = saved.data_ptr<float>() + ((t - 1) * B + b) * N;
        for (int64_t i = 0; i < N; ++i) {
          ms[(t - 1) * N + i] = std::tanh(0.5f * s[i]);
          gs[(t - 1) * N + i] = g[i];
        }
        for (int64_t i = 0; i < N; ++i) {
          float acc = 0.f;  // (P^T g)_i, P symmetric
          for (int64_t j = 0; j < N; ++j) acc += terms.pot[i * N + j] * g[j];
          const float mi = ms[(t - 1) * N + i];
          gn[i] = acc * 0.5f * (1.f - mi * mi);
        }
        for (int64_t i = 0; i < N; ++i) {
          g[i] = gn[i];
          du[i] += gn[i];
        }
      }
      // dP = sum_t g_t m_{t-1}^T.
      std::fill(dp.begin(), dp.end(), 0.f);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < N; ++i)
          for (int64_t j = 0; j < N; ++j) dp[i * N + j] += gs[t * N + i] * ms[t * N + j];
      // Through P = C Wm: dWsym = dP C (masked). Through C_ij = G_ij / (n_i n_j + eps), G taken
      // with independent entries: Gsym = dG + dG^T has (dP_ij + dP_ji) Wm_ij / (n_i n_j + eps)
      // everywhere, and the diagonal adds the path through n_i = sqrt(G_ii):
      // -(1 / n_i) sum_j Gsym_ij C_ij n_j (none for a zero node).
      float* gsb = gsym.data_ptr<float>() + b * N * N;
      float* dwb = dws.data_ptr<float>() + b * N * N;
      const float* nrm = terms.nrm.data();
      for (int64_t i = 0; i < N; ++i) {
        float r = 0.f;
        for (int64_t j = 0; j < N; ++j) {
          const int64_t ij = i * N + j;
          gsb[ij] = (dp[ij] + dp[j * N + i]) * terms.wm[ij] / (nrm[i] * nrm[j] + static_cast<float>(eps));
          dwb[ij] = (self_pairs || i != j) ? dp[ij] * terms.cos[ij] : 0.f;
          r += gsb[ij] * terms.cos[ij] * nrm[j];
        }
        if (nrm[i] > 0.f) gsb[i * N + i] -= r / nrm[i];
        grad_unary.data_ptr<float>()[b * N + i] = du[i];
      }
    }
  });
  auto dwsum = dws.sum(0);
  auto grad_compat = (dwsum + dwsum.t()) * 0.5;
  const auto grad_feats = gram_apply_cpu(gsym, feats);
  return {grad_feats, grad_unary, grad_compat};
}

}  // namespace

TORCH_LIBRARY_IMPL(medvol, CPU, m) {
  m.impl("meanfield_crf_forward", &meanfield_crf_forward_cpu);
  m.impl("meanfield_crf_backward", &meanfield_crf_backward_cpu);
}

}  // namespace medvol

// Mean-field CRF on the CPU (OpenMP). See medvol/ops/meanfield_crf.py for the maths.
//
// The heavy parts are the raw Gram G = F F^T (forward) and grad_F = Gsym F (backward), both one
// streaming pass over feats split along F into blocks that stay in cache; the T iterations and
// their backward work on N x N matrices and are negligible.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../meanfield_crf.h"

namespace medvol {
namespace {

// Columns of F per block: N rows x 1024 floats stays in L2 for N <= 128.
constexpr int64_t kBlockK = 1024;
// Register tile of the micro-kernels: MR rows x NR columns of float accumulators.
constexpr int64_t kMR = 4;
constexpr int64_t kNR = 16;

// x86-64 builds carry AVX-512 and AVX2+FMA clones of the micro-kernels, picked at load time, next
// to the baseline SSE2 version: the wheel stays portable and the kernels use the machine's width.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MEDVOL_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MEDVOL_CLONES
#endif

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Widens block [N, len] of feats (row stride ld) to float, transposed to k-major [len, NP] with
// rows N..NP zero: the Gram micro-kernel then reads one contiguous node vector per k.
template <typename scalar_t>
void load_transposed(const scalar_t* src, int64_t ld, int64_t N, int64_t NP, int64_t len, float* xt) {
  for (int64_t k = 0; k < len; ++k) {
    float* row = xt + k * NP;
    for (int64_t i = 0; i < N; ++i) row[i] = static_cast<float>(src[i * ld + k]);
    for (int64_t i = N; i < NP; ++i) row[i] = 0.f;
  }
}

// Widens block [N, len] of feats to float, row-major [NP, kBlockK] with rows N..NP zero.
template <typename scalar_t>
void load_rows(const scalar_t* src, int64_t ld, int64_t N, int64_t NP, int64_t len, float* x) {
  for (int64_t i = 0; i < NP; ++i) {
    for (int64_t k = 0; k < len; ++k) x[i * kBlockK + k] = i < N ? static_cast<float>(src[i * ld + k]) : 0.f;
  }
}

// pb[i, j] += sum_k xt[k, i] xt[k, j] for the lower triangle j <= i (fp32 sums within the block).
MEDVOL_CLONES
void gram_block(const float* __restrict xt, int64_t len, int64_t N, int64_t NP, double* __restrict pb) {
  for (int64_t i0 = 0; i0 < N; i0 += kMR) {
    for (int64_t j0 = 0; j0 <= i0 + kMR - 1 && j0 < N; j0 += kNR) {
      float acc[kMR][kNR] = {};
      for (int64_t k = 0; k < len; ++k) {
        const float* row = xt + k * NP;
        // Fully unrolled so that acc lives in vector registers (18x faster than without).
#pragma GCC unroll 4
        for (int64_t r = 0; r < kMR; ++r) {
          const float a = row[i0 + r];
#pragma GCC unroll 16
          for (int64_t c = 0; c < kNR; ++c) acc[r][c] += a * row[j0 + c];
        }
      }
      for (int64_t r = 0; r < kMR && i0 + r < N; ++r)
        for (int64_t c = 0; c < kNR && j0 + c <= i0 + r; ++c) pb[(i0 + r) * N + j0 + c] += acc[r][c];
    }
  }
}

// out[i, k] = sum_j g[i, j] x[j, k] for a block of kNR-wide column strips.
MEDVOL_CLONES
void apply_block(const float* __restrict g, const float* __restrict x, int64_t N, int64_t NP, int64_t len,
                 float* __restrict out) {
  for (int64_t i0 = 0; i0 < NP; i0 += kMR) {
    for (int64_t k0 = 0; k0 < len; k0 += kNR) {
      float acc[kMR][kNR] = {};
      for (int64_t j = 0; j < N; ++j) {
        const float* xj = x + j * kBlockK + k0;
#pragma GCC unroll 4
        for (int64_t r = 0; r < kMR; ++r) {
          const float s = g[(i0 + r) * NP + j];
#pragma GCC unroll 16
          for (int64_t c = 0; c < kNR; ++c) acc[r][c] += s * xj[c];
        }
      }
      for (int64_t r = 0; r < kMR; ++r)
        for (int64_t c = 0; c < kNR; ++c) out[(i0 + r) * kBlockK + k0 + c] = acc[r][c];
    }
  }
}

// gram[b] = F_b F_b^T in float32 (fp32 products and fp32 sums within a block, blocks summed in
// double), exploiting symmetry.
template <typename scalar_t>
void gram_cpu(const scalar_t* feats, int64_t B, int64_t N, int64_t K, float* gram) {
  const int64_t NP = round_up(std::max<int64_t>(N, 1), kNR);
  const int64_t nblocks = (K + kBlockK - 1) / kBlockK;
  const int64_t items = B * nblocks;
  std::vector<double> total(B * N * N, 0.0);
#pragma omp parallel num_threads(at::get_num_threads())
  {
    std::vector<double> part(B * N * N, 0.0);
    std::vector<float> xt(kBlockK * NP);
#pragma omp for schedule(static)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t b = it / nblocks, k0 = (it % nblocks) * kBlockK;
      const int64_t len = std::min(kBlockK, K - k0);
      load_transposed(feats + b * N * K + k0, K, N, NP, len, xt.data());
      gram_block(xt.data(), len, N, NP, part.data() + b * N * N);
    }
#pragma omp critical
    for (size_t e = 0; e < total.size(); ++e) total[e] += part[e];
  }
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < N; ++i) {
      for (int64_t j = 0; j <= i; ++j) {
        const float v = static_cast<float>(total[(b * N + i) * N + j]);
        gram[(b * N + i) * N + j] = v;
        gram[(b * N + j) * N + i] = v;
      }
    }
  }
}

// out[b] = gsym[b] @ F_b, written in feats' dtype.
template <typename scalar_t>
void gram_apply_cpu(const float* gsym, const scalar_t* feats, int64_t B, int64_t N, int64_t K,
                    scalar_t* out) {
  const int64_t NP = round_up(std::max<int64_t>(N, 1), kMR);
  const int64_t nblocks = (K + kBlockK - 1) / kBlockK;
  const int64_t items = B * nblocks;
  // gsym padded to [NP, NP] per batch item so that the micro-kernel needs no row bounds.
  std::vector<float> gpad(B * NP * NP, 0.f);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < N; ++j) gpad[(b * NP + i) * NP + j] = gsym[(b * N + i) * N + j];
#pragma omp parallel num_threads(at::get_num_threads())
  {
    std::vector<float> x(NP * kBlockK), acc(NP * kBlockK);
#pragma omp for schedule(static)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t b = it / nblocks, k0 = (it % nblocks) * kBlockK;
      const int64_t len = std::min(kBlockK, K - k0);
      const int64_t padded = round_up(len, kNR);  // zero columns past len keep strips whole
      load_rows(feats + b * N * K + k0, K, N, NP, len, x.data());
      for (int64_t i = 0; i < NP; ++i) std::fill(x.data() + i * kBlockK + len, x.data() + i * kBlockK + padded, 0.f);
      apply_block(gpad.data() + b * NP * NP, x.data(), N, NP, padded, acc.data());
      for (int64_t i = 0; i < N; ++i) {
        scalar_t* o = out + (b * N + i) * K + k0;
        for (int64_t k = 0; k < len; ++k) o[k] = static_cast<scalar_t>(acc[i * kBlockK + k]);
      }
    }
  }
}

inline float pair_potential(const float* G, const float* W, const float* nrm, int64_t N, int64_t i,
                            int64_t j) {
  // Self-pairs are excluded: a node does not send a message to itself.
  if (i == j) return 0.f;
  return G[i * N + j] / (nrm[i] * nrm[j]) * 0.5f * (W[i * N + j] + W[j * N + i]);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> meanfield_crf_forward_cpu(
    const at::Tensor& feats_in, const at::Tensor& unary_in, const at::Tensor& compat_in,
    int64_t iterations) {
  check_crf_forward_args(feats_in, unary_in, compat_in, iterations);
  TORCH_CHECK(feats_in.device().is_cpu(), "meanfield_crf_forward_cpu: feats must be on the CPU");
  const auto feats = feats_in.contiguous();
  const auto unary = unary_in.to(at::kFloat).contiguous();
  const auto compat = compat_in.to(at::kFloat).contiguous();
  const int64_t B = feats.size(0), N = feats.size(1), K = feats.size(2), T = iterations;
  auto opts = feats.options().dtype(at::kFloat);
  auto gram = at::empty({B, N, N}, opts);
  auto logits = at::empty({B, N}, opts);
  auto saved = at::empty({T, B, N}, opts);
  MEDVOL_DISPATCH_FEATS(feats.scalar_type(), "meanfield_crf_gram", [&] {
    gram_cpu<scalar_t>(feats.data_ptr<scalar_t>(), B, N, K, gram.data_ptr<float>());
  });
  const float* W = compat.data_ptr<float>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> nrm(N), l(N), m(N);
    for (int64_t b = b0; b < b1; ++b) {
      const float* G = gram.data_ptr<float>() + b * N * N;
      const float* u = unary.data_ptr<float>() + b * N;
      for (int64_t i = 0; i < N; ++i) {
        nrm[i] = std::sqrt(std::max(G[i * N + i], kCrfEps2));
        l[i] = u[i];
      }
      for (int64_t t = 0; t < T; ++t) {
        float* s = saved.data_ptr<float>() + (t * B + b) * N;
        for (int64_t i = 0; i < N; ++i) {
          s[i] = l[i];
          m[i] = std::tanh(0.5f * l[i]);  // 2 sigmoid(l) - 1
        }
        for (int64_t i = 0; i < N; ++i) {
          float acc = 0.f;
          for (int64_t j = 0; j < N; ++j) acc += pair_potential(G, W, nrm.data(), N, i, j) * m[j];
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
    const at::Tensor& gram_in, const at::Tensor& saved_in) {
  check_crf_backward_args(grad_in, feats_in, compat_in, gram_in, saved_in);
  TORCH_CHECK(feats_in.device().is_cpu(), "meanfield_crf_backward_cpu: feats must be on the CPU");
  const auto feats = feats_in.contiguous();
  const auto grad = grad_in.to(at::kFloat).contiguous();
  const auto compat = compat_in.to(at::kFloat).contiguous();
  const auto gram = gram_in.contiguous();
  const auto saved = saved_in.contiguous();
  const int64_t B = feats.size(0), N = feats.size(1), K = feats.size(2), T = saved.size(0);
  auto opts = feats.options().dtype(at::kFloat);
  auto grad_unary = at::empty({B, N}, opts);
  auto gsym = at::empty({B, N, N}, opts);
  auto dws = at::zeros({B, N, N}, opts);
  const float* W = compat.data_ptr<float>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> nrm(N), g(N), gn(N), du(N), gs(T * N), ms(T * N), S(N);
    for (int64_t b = b0; b < b1; ++b) {
      const float* G = gram.data_ptr<float>() + b * N * N;
      for (int64_t i = 0; i < N; ++i) {
        nrm[i] = std::sqrt(std::max(G[i * N + i], kCrfEps2));
        g[i] = du[i] = grad.data_ptr<float>()[b * N + i];
      }
      // Walk the iterations backwards: g holds dL/dl_t; l_t = u + P m(l_{t-1}).
      for (int64_t t = T; t >= 1; --t) {
        const float* s = saved.data_ptr<float>() + ((t - 1) * B + b) * N;
        for (int64_t i = 0; i < N; ++i) {
          ms[(t - 1) * N + i] = std::tanh(0.5f * s[i]);
          gs[(t - 1) * N + i] = g[i];
        }
        for (int64_t i = 0; i < N; ++i) {
          float acc = 0.f;  // (P^T g)_i, P symmetric
          for (int64_t j = 0; j < N; ++j) acc += pair_potential(G, W, nrm.data(), N, i, j) * g[j];
          const float mi = ms[(t - 1) * N + i];
          gn[i] = acc * 0.5f * (1.f - mi * mi);
        }
        for (int64_t i = 0; i < N; ++i) {
          g[i] = gn[i];
          du[i] += gn[i];
        }
      }
      // dP_ij = sum_t g_t[i] m_{t-1}[j]; chain through P = C * Wsym and C = G / (n n^T).
      float* gsb = gsym.data_ptr<float>() + b * N * N;
      float* dwb = dws.data_ptr<float>() + b * N * N;
      std::fill(S.begin(), S.end(), 0.f);
      for (int64_t i = 0; i < N; ++i) {
        for (int64_t j = 0; j < N; ++j) {
          if (i == j) continue;
          float dpij = 0.f, dpji = 0.f;
          for (int64_t t = 0; t < T; ++t) {
            dpij += gs[t * N + i] * ms[t * N + j];
            dpji += gs[t * N + j] * ms[t * N + i];
          }
          const float inv = 1.f / (nrm[i] * nrm[j]);
          const float c = G[i * N + j] * inv;
          const float dcs = (dpij + dpji) * 0.5f * (W[i * N + j] + W[j * N + i]);
          gsb[i * N + j] = dcs * inv;
          S[i] += dcs * c;
          dwb[i * N + j] = dpij * c;
        }
      }
      for (int64_t i = 0; i < N; ++i) {
        gsb[i * N + i] = G[i * N + i] > kCrfEps2 ? -S[i] / (nrm[i] * nrm[i]) : 0.f;
        grad_unary.data_ptr<float>()[b * N + i] = du[i];
      }
    }
  });
  auto dwsum = dws.sum(0);
  auto grad_compat = (dwsum + dwsum.t()) * 0.5;
  auto grad_feats = at::empty_like(feats);
  MEDVOL_DISPATCH_FEATS(feats.scalar_type(), "meanfield_crf_gram_apply", [&] {
    gram_apply_cpu<scalar_t>(gsym.data_ptr<float>(), feats.data_ptr<scalar_t>(), B, N, K,
                             grad_feats.data_ptr<scalar_t>());
  });
  return {grad_feats, grad_unary, grad_compat};
}

}  // namespace

TORCH_LIBRARY_IMPL(medvol, CPU, m) {
  m.impl("meanfield_crf_forward", &meanfield_crf_forward_cpu);
  m.impl("meanfield_crf_backward", &meanfield_crf_backward_cpu);
}

}  // namespace medvol

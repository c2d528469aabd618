// Mean-field CRF on CUDA. See medvol/ops/meanfield_crf.py for the maths.
//
// Forward: (1) split-K partial Grams, grid (S, B), each block accumulating F[:, chunk] F[:, chunk]^T
// for all node pairs from a shared-memory tile (one read of feats in total); (2) one block per
// batch item sums the S partials (a fixed order: deterministic), normalises with the diagonal and
// runs all T iterations, saving only the T logit vectors. Backward: (3) one block per batch item
// walks the iterations back and builds Gsym = dG + dG^T; (4) grad_F = Gsym F in one pass.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include "../meanfield_crf.h"

namespace medvol {
namespace {

constexpr int kTileK = 32;      // columns of F per shared-memory tile
constexpr int kGramThreads = 256;  // 16 x 16 threads, each owning an R x R block of G
constexpr int kIterThreads = 256;
constexpr int kApplyCols = 256;  // columns of F per block in grad_F = Gsym F
constexpr int kApplyRows = 16;   // rows of Gsym held in shared memory at a time
constexpr int kMaxNodes = 128;

template <typename scalar_t, int R>
__global__ void gram_partial_kernel(const scalar_t* __restrict__ feats, int64_t N, int64_t K,
                                    int64_t chunk, int S, float* __restrict__ partial) {
  constexpr int NP = 16 * R;
  __shared__ float tile[NP][kTileK + 1];  // +1: threads reading one column hit distinct banks
  const int s = blockIdx.x, b = blockIdx.y;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const scalar_t* fb = feats + static_cast<int64_t>(b) * N * K;
  const int64_t k0 = static_cast<int64_t>(s) * chunk;
  const int64_t k1 = min(K, k0 + chunk);
  float acc[R][R];
#pragma unroll
  for (int a = 0; a < R; ++a)
#pragma unroll
    for (int c = 0; c < R; ++c) acc[a][c] = 0.f;
  for (int64_t kb = k0; kb < k1; kb += kTileK) {
    for (int idx = threadIdx.x; idx < NP * kTileK; idx += kGramThreads) {
      const int r = idx / kTileK, c = idx % kTileK;
      const int64_t k = kb + c;
      tile[r][c] = (r < N && k < k1) ? static_cast<float>(fb[r * K + k]) : 0.f;
    }
    __syncthreads();
#pragma unroll 8
    for (int c = 0; c < kTileK; ++c) {
      float x[R], y[R];
#pragma unroll
      for (int a = 0; a < R; ++a) {
        x[a] = tile[ty + 16 * a][c];
        y[a] = tile[tx + 16 * a][c];
      }
#pragma unroll
      for (int a = 0; a < R; ++a)
#pragma unroll
        for (int e = 0; e < R; ++e) acc[a][e] = fmaf(x[a], y[e], acc[a][e]);
    }
    __syncthreads();
  }
  float* out = partial + (static_cast<int64_t>(b) * S + s) * N * N;
#pragma unroll
  for (int a = 0; a < R; ++a)
#pragma unroll
    for (int e = 0; e < R; ++e) {
      const int i = ty + 16 * a, j = tx + 16 * e;
      if (i < N && j < N) out[i * N + j] = acc[a][e];
    }
}

// C_ij = G_ij / (n_i n_j + eps).
__device__ __forceinline__ float cosine(const float* G, const float* nrm, int N, int i, int j, float eps) {
  return G[i * N + j] / (nrm[i] * nrm[j] + eps);
}

// Wm_ij = (W_ij + W_ji) / 2, zero on the diagonal without self-pairs.
__device__ __forceinline__ float masked_wsym(const float* W, int N, int i, int j, bool self_pairs) {
  return (self_pairs || i != j) ? 0.5f * (W[i * N + j] + W[j * N + i]) : 0.f;
}

// P_ij = C_ij Wm_ij.
__device__ __forceinline__ float pair_potential(const float* G, const float* W, const float* nrm, int N, int i,
                                                int j, bool self_pairs, float eps) {
  return cosine(G, nrm, N, i, j, eps) * masked_wsym(W, N, i, j, self_pairs);
}

__global__ void crf_forward_kernel(const float* __restrict__ partial, int S,
                                   const float* __restrict__ unary, const float* __restrict__ compat,
                                   int B, int N, int T, bool self_pairs, float eps, float* __restrict__ gram,
                                   float* __restrict__ logits, float* __restrict__ saved) {
  __shared__ float nrm[kMaxNodes], u[kMaxNodes], l[kMaxNodes], m[kMaxNodes];
  const int b = blockIdx.x;
  float* G = gram + static_cast<int64_t>(b) * N * N;
  for (int idx = threadIdx.x; idx < N * N; idx += blockDim.x) {
    float acc = 0.f;
    for (int s = 0; s < S; ++s) acc += partial[(static_cast<int64_t>(b) * S + s) * N * N + idx];
    G[idx] = acc;
  }
  __syncthreads();  // G (global) is visible to the whole block after the barrier
  for (int i = threadIdx.x; i < N; i += blockDim.x) {
    nrm[i] = crf_norm(G[i * N + i]);
    u[i] = l[i] = unary[b * N + i];
  }
  __syncthreads();
  for (int t = 0; t < T; ++t) {
    for (int i = threadIdx.x; i < N; i += blockDim.x) {
      saved[(static_cast<int64_t>(t) * B + b) * N + i] = l[i];
      m[i] = tanhf(0.5f * l[i]);  // 2 sigmoid(l) - 1
    }
    __syncthreads();
    for (int i = threadIdx.x; i < N; i += blockDim.x) {
      float acc = 0.f;
      for (int j = 0; j < N; ++j) acc += pair_potential(G, compat, nrm, N, i, j, self_pairs, eps) * m[j];
      l[i] = u[i] + acc;
    }
    __syncthreads();
  }
  for (int i = threadIdx.x; i < N; i += blockDim.x) logits[b * N + i] = l[i];
}

__global__ void crf_backward_kernel(const float* __restrict__ grad, const float* __restrict__ compat,
                                    const float* __restrict__ gram, const float* __restrict__ saved,
                                    int B, int N, int T, bool self_pairs, float eps, float* __restrict__ gbuf,
                                    float* __restrict__ mbuf, float* __restrict__ grad_unary,
                                    float* __restrict__ gsym, float* __restrict__ dws) {
  __shared__ float nrm[kMaxNodes], g[kMaxNodes], gn[kMaxNodes], du[kMaxNodes];
  const int b = blockIdx.x;
  const float* G = gram + static_cast<int64_t>(b) * N * N;
  float* gb = gbuf + static_cast<int64_t>(b) * T * N;
  float* mb = mbuf + static_cast<int64_t>(b) * T * N;
  for (int i = threadIdx.x; i < N; i += blockDim.x) {
    nrm[i] = crf_norm(G[i * N + i]);
    g[i] = du[i] = grad[b * N + i];
  }
  __syncthreads();
  // g holds dL/dl_t while walking back; l_t = u + P m(l_{t-1}).
  for (int t = T; t >= 1; --t) {
    for (int i = threadIdx.x; i < N; i += blockDim.x) {
      const float mi = tanhf(0.5f * saved[(static_cast<int64_t>(t - 1) * B + b) * N + i]);
      mb[(t - 1) * N + i] = mi;
      gb[(t - 1) * N + i] = g[i];
      float acc = 0.f;  // (P^T g)_i, P symmetric
      for (int j = 0; j < N; ++j) acc += pair_potential(G, compat, nrm, N, i, j, self_pairs, eps) * g[j];
      gn[i] = acc * 0.5f * (1.f - mi * mi);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < N; i += blockDim.x) {
      g[i] = gn[i];
      du[i] += gn[i];
    }
    __syncthreads();
  }
  // dP_ij = sum_t g_t[i] m_{t-1}[j]. Through P = C Wm: dWsym = dP C (masked). Through
  // C_ij = G_ij / (n_i n_j + eps), G taken with independent entries: Gsym = dG + dG^T has
  // (dP_ij + dP_ji) Wm_ij / (n_i n_j + eps) everywhere, and the diagonal adds the path through
  // n_i = sqrt(G_ii): -(1 / n_i) sum_j Gsym_ij C_ij n_j (none for a zero node).
  float* gs = gsym + static_cast<int64_t>(b) * N * N;
  float* dw = dws + static_cast<int64_t>(b) * N * N;
  for (int idx = threadIdx.x; idx < N * N; idx += blockDim.x) {
    const int i = idx / N, j = idx % N;
    float dpij = 0.f, dpji = 0.f;
    for (int t = 0; t < T; ++t) {
      dpij += gb[t * N + i] * mb[t * N + j];
      dpji += gb[t * N + j] * mb[t * N + i];
    }
    gs[idx] = (dpij + dpji) * masked_wsym(compat, N, i, j, self_pairs) / (nrm[i] * nrm[j] + eps);
    dw[idx] = (self_pairs || i != j) ? dpij * cosine(G, nrm, N, i, j, eps) : 0.f;
  }
  __syncthreads();  // gs (global) is visible to the whole block after the barrier
  // Row i is read and its diagonal written by one thread only: a fixed order, no atomics.
  for (int i = threadIdx.x; i < N; i += blockDim.x) {
    float r = 0.f;
    for (int j = 0; j < N; ++j) r += gs[i * N + j] * cosine(G, nrm, N, i, j, eps) * nrm[j];
    if (nrm[i] > 0.f) gs[i * N + i] -= r / nrm[i];
    grad_unary[b * N + i] = du[i];
  }
}

template <typename scalar_t>
__global__ void gram_apply_kernel(const float* __restrict__ gsym, const scalar_t* __restrict__ feats,
                                  int N, int64_t K, scalar_t* __restrict__ out) {
  __shared__ float gs[kApplyRows][kMaxNodes];
  const int b = blockIdx.y;
  const int64_t k = static_cast<int64_t>(blockIdx.x) * kApplyCols + threadIdx.x;
  const scalar_t* fb = feats + static_cast<int64_t>(b) * N * K;
  scalar_t* ob = out + static_cast<int64_t>(b) * N * K;
  const float* g = gsym + static_cast<int64_t>(b) * N * N;
  for (int i0 = 0; i0 < N; i0 += kApplyRows) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < kApplyRows * N; idx += blockDim.x) {
      const int r = idx / N, j = idx % N;
      gs[r][j] = (i0 + r < N) ? g[(i0 + r) * N + j] : 0.f;
    }
    __syncthreads();
    if (k >= K) continue;
    float acc[kApplyRows];
#pragma unroll
    for (int r = 0; r < kApplyRows; ++r) acc[r] = 0.f;
    for (int j = 0; j < N; ++j) {
      const float f = static_cast<float>(fb[j * K + k]);
#pragma unroll
      for (int r = 0; r < kApplyRows; ++r) acc[r] = fmaf(gs[r][j], f, acc[r]);
    }
#pragma unroll
    for (int r = 0; r < kApplyRows; ++r)
      if (i0 + r < N) ob[(i0 + r) * K + k] = static_cast<scalar_t>(acc[r]);
  }
}

template <typename scalar_t>
void launch_gram(const scalar_t* feats, int64_t B, int64_t N, int64_t K, int64_t chunk, int S,
                 float* partial, cudaStream_t stream) {
  const dim3 grid(S, B);
  switch ((N + 15) / 16) {
#define MEDVOL_GRAM_CASE(R)                                                                      \
  case R:                                                                                        \
    gram_partial_kernel<scalar_t, R><<<grid, kGramThreads, 0, stream>>>(feats, N, K, chunk, S, \
                                                                         partial);            \
    break;
    MEDVOL_GRAM_CASE(1)
    MEDVOL_GRAM_CASE(2)
    MEDVOL_GRAM_CASE(3)
    MEDVOL_GRAM_CASE(4)
    MEDVOL_GRAM_CASE(5)
    MEDVOL_GRAM_CASE(6)
    MEDVOL_GRAM_CASE(7)
    MEDVOL_GRAM_CASE(8)
#undef MEDVOL_GRAM_CASE
    default:
      TORCH_CHECK(false, "meanfield_crf (cuda): N must be <= ", kMaxNodes);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> meanfield_crf_forward_cuda(
    const at::Tensor& feats_in, const at::Tensor& unary_in, const at::Tensor& compat_in,
    int64_t iterations, bool self_pairs, double eps) {
  check_crf_forward_args(feats_in, unary_in, compat_in, iterations, eps);
  TORCH_CHECK(feats_in.is_cuda(), "meanfield_crf_forward_cuda: feats must be a CUDA tensor");
  TORCH_CHECK(feats_in.size(1) <= kMaxNodes, "meanfield_crf (cuda): N must be <= ", kMaxNodes,
              ", got ", feats_in.size(1));
  const c10::cuda::CUDAGuard guard(feats_in.device());
  const auto feats = feats_in.contiguous();
  const auto unary = unary_in.to(at::kFloat).contiguous();
  const auto compat = compat_in.to(at::kFloat).contiguous();
  const int64_t B = feats.size(0), N = feats.size(1), K = std::max<int64_t>(feats.size(2), 1);
  auto opts = feats.options().dtype(at::kFloat);
  auto logits = at::empty({B, N}, opts);
  auto gram = at::empty({B, N, N}, opts);
  auto saved = at::empty({iterations, B, N}, opts);
  if (B == 0) return {logits, gram, saved};
  // About four blocks per SM in total, each chunk a whole number of tiles.
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, feats.get_device()));
  const int64_t tiles = (K + kTileK - 1) / kTileK;
  int64_t S = std::min<int64_t>(tiles, std::max<int64_t>(1, (4 * sms + B - 1) / B));
  const int64_t chunk = ((tiles + S - 1) / S) * kTileK;
  S = (K + chunk - 1) / chunk;
  auto partial = at::empty({B, S, N, N}, opts);
  auto stream = c10::cuda::getCurrentCUDAStream();
  MEDVOL_DISPATCH_FEATS(feats.scalar_type(), "meanfield_crf_gram_cuda", [&] {
    launch_gram<scalar_t>(feats.data_ptr<scalar_t>(), B, N, feats.size(2), chunk, S,
                          partial.data_ptr<float>(), stream);
  });
  crf_forward_kernel<<<B, kIterThreads, 0, stream>>>(
      partial.data_ptr<float>(), S, unary.data_ptr<float>(), compat.data_ptr<float>(), B, N,
      iterations, self_pairs, static_cast<float>(eps), gram.data_ptr<float>(), logits.data_ptr<float>(), saved.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {logits, gram, saved};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> meanfield_crf_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& feats_in, const at::Tensor& compat_in,
    const at::Tensor& gram_in, const at::Tensor& saved_in, bool self_pairs, double eps) {
  check_crf_backward_args(grad_in, feats_in, compat_in, gram_in, saved_in, eps);
  TORCH_CHECK(feats_in.is_cuda(), "meanfield_crf_backward_cuda: feats must be a CUDA tensor");
  TORCH_CHECK(feats_in.size(1) <= kMaxNodes, "meanfield_crf (cuda): N must be <= ", kMaxNodes);
  const c10::cuda::CUDAGuard guard(feats_in.device());
  const auto feats = feats_in.contiguous();
  const auto grad = grad_in.to(at::kFloat).contiguous();
  const auto compat = compat_in.to(at::kFloat).contiguous();
  const auto gram = gram_in.contiguous();
  const auto saved = saved_in.contiguous();
  const int64_t B = feats.size(0), N = feats.size(1), K = feats.size(2), T = saved.size(0);
  auto opts = feats.options().dtype(at::kFloat);
  auto grad_unary = at::empty({B, N}, opts);
  auto gsym = at::empty({B, N, N}, opts);
  auto dws = at::empty({B, N, N}, opts);
  auto gbuf = at::empty({B, T, N}, opts);
  auto mbuf = at::empty({B, T, N}, opts);
  auto grad_feats = at::empty_like(feats);
  if (B == 0) return {grad_feats, grad_unary, at::zeros({N, N}, opts)};
  auto stream = c10::cuda::getCurrentCUDAStream();
  crf_backward_kernel<<<B, kIterThreads, 0, stream>>>(
      grad.data_ptr<float>(), compat.data_ptr<float>(), gram.data_ptr<float>(),
      saved.data_ptr<float>(), B, N, T, self_pairs, static_cast<float>(eps), gbuf.data_ptr<float>(), mbuf.data_ptr<float>(),
      grad_unary.data_ptr<float>(), gsym.data_ptr<float>(), dws.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (K > 0) {
    const dim3 grid((K + kApplyCols - 1) / kApplyCols, B);
    MEDVOL_DISPATCH_FEATS(feats.scalar_type(), "meanfield_crf_apply_cuda", [&] {
      gram_apply_kernel<scalar_t><<<grid, kApplyCols, 0, stream>>>(
          gsym.data_ptr<float>(), feats.data_ptr<scalar_t>(), N, K, grad_feats.data_ptr<scalar_t>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  auto dwsum = dws.sum(0);
  auto grad_compat = (dwsum + dwsum.t()) * 0.5;
  return {grad_feats, grad_unary, grad_compat};
}

}  // namespace

TORCH_LIBRARY_IMPL(medvol, CUDA, m) {
  m.impl("meanfield_crf_forward", &meanfield_crf_forward_cuda);
  m.impl("meanfield_crf_backward", &meanfield_crf_backward_cuda);
}

}  // namespace medvol

// Shared argument checks of the mean-field CRF op (the schema lives in register.cpp).
#pragma once

#include <ATen/ATen.h>

#include <math.h>

// feats come in float32, bfloat16 or float16 (always accumulated in float32).
#define MEDVOL_DISPATCH_FEATS(TYPE, NAME, ...)                     \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__))

namespace medvol {

// The node norm n_i = sqrt(G_ii) from the Gram diagonal (which can only be >= 0; the clamp keeps
// rounding from making a NaN). A zero node has n_i = 0 and gets no gradient through its norm, as
// torch.linalg.vector_norm gives at 0.
#if defined(__CUDACC__)
__host__ __device__
#endif
inline float crf_norm(float gram_ii) { return sqrtf(fmaxf(gram_ii, 0.f)); }

inline void check_crf_options(double eps) {
  TORCH_CHECK(eps >= 0, "meanfield_crf: eps must be >= 0, got ", eps);  // NaN fails too
}

inline void check_crf_forward_args(const at::Tensor& feats, const at::Tensor& unary,
                                   const at::Tensor& compat, int64_t iterations, double eps) {
  check_crf_options(eps);
  TORCH_CHECK(feats.dim() == 3, "meanfield_crf: feats must be [B, N, F], got ", feats.sizes());
  const auto B = feats.size(0), N = feats.size(1);
  TORCH_CHECK(unary.dim() == 2 && unary.size(0) == B && unary.size(1) == N,
              "meanfield_crf: unary must be [B, N] = [", B, ", ", N, "], got ", unary.sizes());
  TORCH_CHECK(compat.dim() == 2 && compat.size(0) == N && compat.size(1) == N,
              "meanfield_crf: compat must be [N, N] = [", N, ", ", N, "], got ", compat.sizes());
  TORCH_CHECK(iterations >= 0, "meanfield_crf: iterations must be >= 0, got ", iterations);
  const auto dt = feats.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
              "meanfield_crf: feats must be float32, bfloat16 or float16, got ", dt);
  TORCH_CHECK(at::isFloatingType(unary.scalar_type()) && at::isFloatingType(compat.scalar_type()),
              "meanfield_crf: unary and compat must be floating point");
  TORCH_CHECK(unary.device() == feats.device() && compat.device() == feats.device(),
              "meanfield_crf: feats, unary and compat must be on one device");
}

inline void check_crf_backward_args(const at::Tensor& grad, const at::Tensor& feats,
                                    const at::Tensor& compat, const at::Tensor& gram,
                                    const at::Tensor& saved, double eps) {
  check_crf_options(eps);
  TORCH_CHECK(feats.dim() == 3, "meanfield_crf_backward: feats must be [B, N, F]");
  const auto B = feats.size(0), N = feats.size(1);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == B && grad.size(1) == N,
              "meanfield_crf_backward: grad must be [B, N], got ", grad.sizes());
  TORCH_CHECK(compat.dim() == 2 && compat.size(0) == N && compat.size(1) == N,
              "meanfield_crf_backward: compat must be [N, N], got ", compat.sizes());
  TORCH_CHECK(gram.dim() == 3 && gram.size(0) == B && gram.size(1) == N && gram.size(2) == N &&
                  gram.scalar_type() == at::kFloat,
              "meanfield_crf_backward: gram must be float32 [B, N, N], got ", gram.sizes());
  TORCH_CHECK(saved.dim() == 3 && saved.size(1) == B && saved.size(2) == N &&
                  saved.scalar_type() == at::kFloat,
              "meanfield_crf_backward: saved must be float32 [T, B, N], got ", saved.sizes());
  const auto dt = feats.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
              "meanfield_crf_backward: feats must be float32, bfloat16 or float16, got ", dt);
  for (const auto* t : {&grad, &compat, &gram, &saved}) {
    TORCH_CHECK(t->device() == feats.device(), "meanfield_crf_backward: tensors on different devices");
  }
}

}  // namespace medvol

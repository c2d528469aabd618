// The one place where medvol's custom op schemas are declared; each backend registers its
// kernels in its own file (cpu/, cuda/), the fake (meta) kernels and autograd live in
// medvol/ops/meanfield_crf.py (torch.library), next to the Python dispatch.
#include <torch/library.h>

TORCH_LIBRARY(medvol, m) {
  // Returns (logits [B, N] float32, gram [B, N, N] float32 raw F F^T, saved [T, B, N] float32:
  // the logits entering each iteration, which is all the backward needs besides gram).
  // self_pairs keeps P_ii; eps >= 0 is added to |f_i| |f_j| in the cosine's denominator.
  m.def("meanfield_crf_forward(Tensor feats, Tensor unary, Tensor compat, int iterations,"
        " bool self_pairs, float eps) -> (Tensor, Tensor, Tensor)");
  // Returns (grad_feats [B, N, F] in feats' dtype, grad_unary [B, N] float32,
  // grad_compat [N, N] float32).
  m.def("meanfield_crf_backward(Tensor grad_logits, Tensor feats, Tensor compat, Tensor gram,"
        " Tensor saved, bool self_pairs, float eps) -> (Tensor, Tensor, Tensor)");
}

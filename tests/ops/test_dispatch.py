"""Backend choice, errors naming what is missing, and tracing on fake tensors."""

import logging

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from medvol.errors import MedvolError
from medvol.ops import _loader, available_backends, meanfield_crf, selected_backend, upsample_conv3d

CPP_BUILT = _loader.cpp_status() is None


def _crf_inputs(B=2, N=6, F=10, dtype=torch.float32):
    return torch.randn(B, N, F, dtype=dtype), torch.randn(B, N, dtype=dtype), torch.randn(N, N, dtype=dtype)


@pytest.mark.parametrize("form", [{}, dict(self_pairs=False), dict(self_pairs=True, eps=0.0)], ids=str)
def test_auto_on_cpu_picks_cpp_when_built_else_torch(caplog, form):
    # The fused kernels hold both forms: auto takes them for the published one (the default) too.
    feats, unary, compat = _crf_inputs()
    expected = "cpp" if CPP_BUILT else "torch"
    assert selected_backend("meanfield_crf", feats) == expected
    with caplog.at_level(logging.DEBUG, logger="medvol.ops"):
        meanfield_crf(feats, unary, compat, **form)
    assert f"auto picked backend '{expected}'" in caplog.text


def test_auto_takes_torch_for_float64():
    feats, _, _ = _crf_inputs(dtype=torch.float64)
    assert selected_backend("meanfield_crf", feats) == "torch"


def test_auto_upsample_conv_takes_the_decomposition_where_it_stores_less():
    with FakeTensorMode():
        assert selected_backend("upsample_conv3d", torch.empty(2, 32, 16, 128, 128), 1) == "decomposed"
        assert selected_backend("upsample_conv3d", torch.empty(2, 128, 32, 32, 32), 64) == "decomposed"
        assert selected_backend("upsample_conv3d", torch.empty(2, 512, 4, 4, 4), 512) == "torch"
        assert selected_backend("upsample_conv3d", torch.empty(2, 512, 8, 8, 8), 256) == "torch"
    # Real CPU tensors follow the same rule.
    assert selected_backend("upsample_conv3d", torch.zeros(1, 32, 4, 8, 8), 1) == "decomposed"
    assert selected_backend("upsample_conv3d", torch.zeros(1, 64, 8, 32, 32), 32) == "decomposed"
    assert selected_backend("upsample_conv3d", torch.zeros(1, 512, 4, 4, 4), 512) == "torch"


def test_named_unavailable_backend_raises_with_reason():
    feats, unary, compat = _crf_inputs()
    with pytest.raises(MedvolError, match="backend 'cuda' is unavailable: it runs on CUDA tensors"):
        meanfield_crf(feats, unary, compat, backend="cuda")
    with pytest.raises(MedvolError, match="unknown backend 'fast'"):
        meanfield_crf(feats, unary, compat, backend="fast")
    with pytest.raises(MedvolError, match="float32, bfloat16 or float16"):
        meanfield_crf(feats.double(), unary, compat, backend="cpp")
    reasons = available_backends("meanfield_crf", feats)
    assert reasons["torch"] is None and "CUDA" in reasons["cuda"]


def test_bad_shapes_raise():
    feats, unary, compat = _crf_inputs()
    with pytest.raises(MedvolError, match="unary"):
        meanfield_crf(feats, unary[:, :3], compat)
    with pytest.raises(MedvolError, match="compat"):
        meanfield_crf(feats, unary, compat[:3])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_cuda_status_names_the_missing_device():
    assert "no CUDA device" in _loader.cuda_status()


@pytest.mark.skipif(not CPP_BUILT, reason="medvol._C not built")
def test_cpp_op_schema_and_fake_impl():
    feats, unary, compat = _crf_inputs(B=3, N=5, F=7)
    meanfield_crf(feats, unary, compat, backend="cpp")  # registers the fake impl and autograd
    for form in ((True, 1e-6), (False, 0.0)):
        torch.library.opcheck(torch.ops.medvol.meanfield_crf_forward.default, (feats, unary, compat, 4, *form),
                              test_utils=("test_schema", "test_faketensor"))


def test_fake_tensor_mode_traces_forward_and_backward_at_crfgan_256_size():
    """CRF-GAN 256^3: N = 64 slabs of the 64-channel 64^3 embedding (F = 64 * 64^3 / 64)."""
    B, N = 2, 64
    F = 64 * 64 ** 3 // N
    with FakeTensorMode():
        feats = torch.empty(B, N, F, dtype=torch.bfloat16, requires_grad=True)
        unary = torch.empty(B, N, requires_grad=True)
        compat = torch.empty(N, N, requires_grad=True)
        backend = selected_backend("meanfield_crf", feats)
        out = meanfield_crf(feats, unary, compat, iterations=10)
        out.sum().backward()
        assert out.shape == (B, N) and out.dtype == torch.float32
        assert feats.grad.shape == feats.shape and feats.grad.dtype == torch.bfloat16
        assert compat.grad.shape == (N, N) and unary.grad.shape == (B, N)
    assert backend == ("cpp" if CPP_BUILT else "torch")


@pytest.mark.parametrize("backend", ["triton", "cpp"])
def test_fake_tensor_mode_traces_named_fast_backends(backend):
    if backend == "cpp" and not CPP_BUILT:
        pytest.skip("medvol._C not built")
    with FakeTensorMode():
        feats = torch.empty(3, 12, 1000, requires_grad=True)
        out = meanfield_crf(feats, torch.empty(3, 12), torch.empty(12, 12), backend=backend)
        out.sum().backward()
        assert out.shape == (3, 12) and feats.grad.shape == feats.shape


def test_fake_tensor_mode_auto_on_cuda_tensors_routes_to_a_traceable_op():
    with FakeTensorMode(allow_non_fake_inputs=True):
        feats = torch.empty(2, 64, 4096, device="cuda")
        assert selected_backend("meanfield_crf", feats) in ("triton", "cuda")
        out = meanfield_crf(feats, torch.empty(2, 64, device="cuda"), torch.empty(64, 64, device="cuda"))
        assert out.shape == (2, 64) and out.device.type == "cuda"


def test_fake_tensor_mode_upsample_conv_at_generator_last_stage():
    """The 128^3 -> 256^3 stage (32 -> 1 channels) traces without allocating."""
    with FakeTensorMode():
        x = torch.empty(2, 32, 128, 128, 128, requires_grad=True)
        w = torch.empty(1, 32, 3, 3, 3, requires_grad=True)
        out = upsample_conv3d(x, w, torch.empty(1))
        out.sum().backward()
        assert out.shape == (2, 1, 256, 256, 256) and x.grad.shape == x.shape


def test_missing_extension_names_what_is_missing(monkeypatch):
    monkeypatch.setattr(_loader.importlib.util, "find_spec", lambda name: None)
    reason = _loader._load_installed.__wrapped__()
    assert "medvol._C is not built" in reason and "pip install --no-build-isolation -e ." in reason

"""The published training step: which sub-networks each sub-step updates, mode agreement, AMP."""

import contextlib
import copy

import pytest
import torch

from medvol.errors import MedvolError
from medvol.models import crf_weight

# The published CRF-GAN iteration updates W right after G, before the encoder step.
SUBSTEPS = {"crfgan": ["D", "G", "crf", "E"], "hagan": ["D", "G", "E", "sub_E"]}


def _snapshot(system):
    return {name: [p.detach().clone() for p in net.parameters()] for name, net in system.groups().items()}


def _changed(before, after):
    return {name for name in before if any(not torch.equal(a, b) for a, b in zip(before[name], after[name]))}


@pytest.mark.parametrize("name", ["crfgan", "hagan"])
def test_each_substep_updates_only_its_network(tiny, name, volume):
    system = tiny(name)
    optimizers = system.make_optimizers()
    seen = []

    @contextlib.contextmanager
    def substep(step):
        before = _snapshot(system)
        yield
        seen.append((step, _changed(before, _snapshot(system))))

    generator = torch.Generator().manual_seed(0)
    losses = system.train_step(volume(2, 32), optimizers, 0, substep=substep, generator=generator)
    assert seen == [(step, {step}) for step in SUBSTEPS[name]]
    assert all(v.dim() == 0 and not v.requires_grad and torch.isfinite(v) for v in losses.values())
    expected = {"D", "D_real", "D_fake", "G", "E", *SUBSTEPS[name]}
    assert expected <= set(losses)
    # Parameters record gradients again after the step (the trainer and optimisers see normal modules).
    assert all(p.requires_grad for p in system.parameters())


def test_crf_weight_schedule():
    assert crf_weight(0) == 0.5
    assert crf_weight(30_000) == pytest.approx(0.25)
    assert crf_weight(60_000) == 0.0 and crf_weight(10**6) == 0.0


def test_crf_blend_enters_generator_loss(tiny, volume):
    # Same state and randomness: the generator loss differs only through the CRF's share. The
    # published W starts at zeros, where the CRF's output equals its unary (the D logit) and every
    # blend is the same number, so W is made non-zero first.
    system = tiny("crfgan")
    with torch.no_grad():
        system.crf.compat.copy_(torch.randn(system.crf.compat.shape, generator=torch.Generator().manual_seed(3)))
    losses = {}
    for iteration in (0, 60_000):
        clone = copy.deepcopy(system)
        generator = torch.Generator().manual_seed(1)
        out = clone.train_step(volume(2, 32), clone.make_optimizers(), iteration, generator=generator)
        losses[iteration] = out
        assert out["crf_weight"].item() == crf_weight(iteration)
    assert torch.equal(losses[0]["D"], losses[60_000]["D"])
    assert not torch.equal(losses[0]["G"], losses[60_000]["G"])


def _step(system, real, mode, amp_dtype=None, channels_last=False):
    system = copy.deepcopy(system).set_mode(mode, channels_last=channels_last)
    generator = torch.Generator().manual_seed(7)
    return system.train_step(real, system.make_optimizers(), 0, amp_dtype=amp_dtype, generator=generator)


@pytest.mark.parametrize("name,size", [("hagan", 32), ("crfgan", 64)])
def test_modes_agree(tiny, volume, name, size):
    system, real = tiny(name, size), volume(2, size, seed=3)
    reference = _step(system, real, "reference")
    optimized = _step(system, real, "optimized")
    optimized_bf16 = _step(system, real, "optimized", torch.bfloat16)
    assert reference.keys() == optimized.keys() == optimized_bf16.keys()
    for key in reference:
        torch.testing.assert_close(optimized[key], reference[key], rtol=1e-4, atol=1e-5, msg=key)
        # bf16 autocast: ~3 significant digits per op, a few ops deep.
        torch.testing.assert_close(optimized_bf16[key], reference[key], rtol=5e-2, atol=2e-2, msg=key)


def test_optimized_mode_layout_and_back(tiny):
    system = tiny("crfgan").set_mode("optimized")
    stage = system.G.trunk[1]
    # The layout stays contiguous unless asked for (see set_mode).
    assert stage.optimized and not stage.channels_last and stage.conv.weight.is_contiguous()
    # channels_last is refused on the CPU (oneDNN bf16 channels_last conv3d bug) and in reference.
    with pytest.raises(MedvolError, match="channels_last: not on the CPU"):
        system.set_mode("optimized", channels_last=True)
    with pytest.raises(MedvolError, match="only with the optimized mode"):
        system.set_mode("reference", channels_last=True)
    state = {k: v.clone() for k, v in system.state_dict().items()}
    system.set_mode("reference")
    assert not stage.optimized and system.crf.optimized is False
    assert all(torch.equal(state[k], v) for k, v in system.state_dict().items())


def test_channels_last_layout_off_the_cpu():
    from medvol.models import build

    with torch.device("meta"):
        system = build("hagan", 64, base_width=8, latent_dim=64).set_mode("optimized", channels_last=True)
    weight = system.G.trunk[1].conv.weight
    assert system.channels_last and weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert system.D.high.channels_last and system.G.head[0].channels_last
    system.set_mode("reference")
    assert weight.is_contiguous() and not system.channels_last


def test_grad_scaler_and_grad_sync(tiny, volume):
    system = tiny("hagan")
    calls = []
    system.grad_sync = lambda group, params: calls.append((group, len(params)))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    generator = torch.Generator().manual_seed(0)
    losses = system.train_step(volume(2, 32), system.make_optimizers(), 0, scaler=scaler, generator=generator)
    assert [c[0] for c in calls] == ["D", "G", "E", "sub_E"]
    assert all(n > 0 for _, n in calls)
    assert all(torch.isfinite(v) for v in losses.values())


def test_train_step_is_reproducible(tiny, volume):
    system = tiny("crfgan")
    a, b = copy.deepcopy(system), copy.deepcopy(system)
    for s in (a, b):
        s.train_step(volume(2, 32), s.make_optimizers(), 0, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("name,mode,channels_last", [
    ("crfgan", "optimized", False), ("hagan", "reference", False), ("hagan", "optimized", True),
])
def test_step_traces_on_fake_tensors(name, mode, channels_last):
    # The profiler traces whole steps under FakeTensorMode (memory at any size without a GPU).
    from torch._subclasses.fake_tensor import FakeTensorMode

    from medvol.models import build

    with torch.device("meta"):
        system = build(name, 64, base_width=8, latent_dim=64).set_mode(mode, channels_last=channels_last)
    with FakeTensorMode():
        for module in system.modules():
            for table in (module._parameters, module._buffers):
                for key, tensor in list(table.items()):
                    new = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype)
                    table[key] = torch.nn.Parameter(new) if isinstance(tensor, torch.nn.Parameter) else new
        amp = torch.bfloat16 if mode == "optimized" else None
        losses = system.train_step(torch.empty(2, 1, 64, 64, 64), system.make_optimizers(), 0, amp_dtype=amp)
    assert all(v.shape == () for v in losses.values())


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["crfgan", "hagan"])
def test_modes_agree_on_cuda(tiny, volume, name):
    # On CUDA the optimized mode runs the GPU backends of the ops, and channels_last_3d on request.
    system, real = tiny(name, 64).cuda(), volume(2, 64, seed=3).cuda()
    reference = _step(system, real, "reference")
    for channels_last in (False, True):
        optimized = _step(system, real, "optimized", torch.bfloat16, channels_last=channels_last)
        for key in reference:
            torch.testing.assert_close(optimized[key], reference[key], rtol=5e-2, atol=2e-2, msg=key)


def test_optimized_norms_keep_the_autocast_dtype():
    # Optimized mode under autocast: GroupNorm returns the activation dtype (CUDA's autocast would
    # return float32 twice the size), the ReLU after it works in place, and the latent linear runs
    # in float32 without a bf16 copy of its weight. Reference mode stays plain PyTorch.
    from medvol.models.blocks import ConvStage, full_precision

    stage = ConvStage(8, 8, upsample=False)
    x = torch.randn(2, 8, 4, 4, 4)
    stage.norm.weight.data.uniform_(0.5, 1.5)
    stage.norm.bias.data.uniform_(-0.5, 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = stage(x)
        for module in stage.modules():
            module.optimized = True
        y = stage.conv(x)
        normed = stage.norm(y)
        assert y.dtype == normed.dtype == torch.bfloat16
        out = stage.relu(normed)
        assert out.data_ptr() == normed.data_ptr() and bool((out >= 0).all())
        optimized = stage(x)
    assert optimized.dtype == torch.bfloat16
    torch.testing.assert_close(optimized.float(), reference.float(), rtol=2e-2, atol=2e-2)

    linear = torch.nn.Linear(16, 32)
    z = torch.randn(2, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert full_precision(linear, z, optimized=False).dtype == torch.bfloat16
        exact = full_precision(linear, z, optimized=True)
    assert exact.dtype == torch.float32
    torch.testing.assert_close(exact, linear(z))


def test_crf_head_does_not_depend_on_the_embedding_layout():
    # PatchCRF flattens each node as a view of a channels_last_3d embedding and as (C, H, W) of a
    # contiguous one: cosine similarities, hence the CRF's output and gradients, are the same.
    from medvol.models.crfgan import PatchCRF

    torch.manual_seed(0)
    crf = PatchCRF(8)
    with torch.no_grad():
        crf.compat.normal_()
    emb = torch.randn(2, 6, 8, 5, 3)
    unary = torch.randn(2, 1)
    results = []
    for layout in (torch.contiguous_format, torch.channels_last_3d):
        leaf = emb.clone().to(memory_format=layout).requires_grad_()
        out = crf(leaf, unary)
        (grad,) = torch.autograd.grad(out.sum(), leaf)
        results.append((out, grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)


def _published_crf_float64(emb, unary, w, iterations, eps):
    # The published CRF written out from its equations: nodes are rows of the contiguous embedding's
    # first N depth slices reshaped to [B, N, -1]; cos = dot / (|f_i||f_j| + eps), self-pairs kept.
    b, n = emb.shape[0], w.shape[0]
    f = emb[:, :, :n].contiguous().reshape(b, n, -1).double()
    norms = f.norm(dim=2, keepdim=True)
    cos = (f @ f.transpose(1, 2)) / (norms @ norms.transpose(1, 2) + eps)
    pot = cos * (w.double() + w.double().t()) / 2
    u = unary.double().reshape(b, 1, 1).expand(b, n, 1)
    logits = u
    for _ in range(iterations):
        q = logits.sigmoid().transpose(1, 2)
        logits = u + (q * pot - (1 - q) * pot).sum(dim=2, keepdim=True)
    return logits.mean(dim=1)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d])
def test_crf_head_computes_the_published_crf(layout):
    from medvol.models.crfgan import PatchCRF

    torch.manual_seed(3)
    crf = PatchCRF(8, eps=1e-6)
    assert torch.count_nonzero(crf.compat) == 0  # published init: W = 0
    with torch.no_grad():
        crf.compat.normal_()
    emb = torch.randn(2, 6, 9, 5, 3).to(memory_format=layout)
    unary = torch.randn(2, 1)
    expected = _published_crf_float64(emb, unary, crf.compat.detach(), crf.iterations, 1e-6)
    torch.testing.assert_close(crf(emb, unary).double(), expected, rtol=1e-5, atol=1e-6)
    # The former depth-slab layout without self-pairs is a different function.
    slab = PatchCRF(8, eps=1e-6, self_pairs=False, layout="depth")
    slab.load_state_dict(crf.state_dict())
    assert not torch.allclose(slab(emb, unary).double(), expected, atol=1e-3)


def test_crf_head_rejects_unknown_layout_and_short_embeddings():
    from medvol.errors import MedvolError
    from medvol.models.crfgan import PatchCRF

    with pytest.raises(MedvolError, match="layout"):
        PatchCRF(4, layout="slices")
    with pytest.raises(MedvolError, match="depth slices"):
        PatchCRF(8)(torch.randn(1, 4, 6, 2, 2), torch.zeros(1, 1))

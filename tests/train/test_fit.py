"""The fit loop for auxiliary networks (``medvol.train.fit``): seeding, bit-exact resume (weights,
optimiser, the loop's generator, torch's RNG and MONAI augmentation states), the resume rules, and
that its checkpoints are medvol checkpoints that a generator loader refuses by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medvol.errors import MedvolError
from medvol.train import fit as F


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _labelled_set(n=6, side=8, seed=0):
    from medvol.study.downstream.data import LabelledSet

    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (n, side, side)).astype(np.float32)
    labels = (images > 0.3).astype(np.uint8)
    return LabelledSet("toy", 2, [f"item{i}" for i in range(n)], lambda i: (images[i], labels[i]))


def _unet(out=None, resume=None, iterations=4, **options):
    from medvol.study.downstream.segment import train_unet

    pytest.importorskip("monai")
    settings = dict(classes=1, dims=2, batch=2, lr=1e-2, seed=5, augment=True, channels=(2, 4))
    settings.update(options)
    return train_unet([_labelled_set()], iterations=iterations, out=out, resume=resume, **settings)


def test_unet_resume_is_bit_exact_with_augmentation(tmp_path):
    """4 iterations at once equal 2, then a resume to 4: the augmentation's random states, the
    batch generator and torch's RNG all come back from the checkpoint."""
    whole_net, whole = _unet()
    path = tmp_path / "unet.pt"
    _, first = _unet(out=path, iterations=2)
    assert path.is_file() and (tmp_path / "unet.pt.sha256").is_file()
    net, resumed = _unet(out=path, resume="auto", iterations=4)
    assert resumed == whole and first == whole[:2]
    for (name, a), (_, b) in zip(whole_net.state_dict().items(), net.state_dict().items()):
        assert torch.equal(a, b), name
    state = F.read_auxiliary(path, "downstream-unet")
    assert state["iteration"] == 4 and [h["event"] for h in state["auxiliary"]["history"]] == ["start", "resume"]


def test_transform_states_round_trip():
    """Restoring a MONAI transform's states makes it repeat its draws; a transform built otherwise
    is refused."""
    from monai.transforms import Compose, RandAffined, RandFlipd

    make = lambda: Compose([RandFlipd(["image"], prob=0.5), RandAffined(["image"], prob=0.5, rotate_range=0.3)])
    transform = make()
    transform.set_random_state(seed=1)
    image = {"image": torch.arange(64.0).reshape(1, 8, 8)}
    transform(dict(image))
    saved = F.transform_states(transform)
    after = [transform(dict(image))["image"].as_tensor() for _ in range(3)]
    other = make()
    F.set_transform_states(other, saved)
    again = [other(dict(image))["image"].as_tensor() for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(after, again))
    with pytest.raises(MedvolError, match="augmentation random states"):
        F.set_transform_states(Compose([RandFlipd(["image"], prob=0.5)]), saved)


def _toy(tmp_path, **options):
    def step(net, iteration, rng):
        x = torch.from_numpy(rng.normal(size=(4, 3)).astype(np.float32))
        return (net(x) - x.sum(1, keepdim=True)).pow(2).mean()

    options = {"task": "toy", "iterations": 3, "lr": 0.05, "seed": 0, **options}
    return F.fit(lambda: torch.nn.Linear(3, 1), step, **options)


def test_seed_decides_and_the_loss_falls(tmp_path):
    a, b, c = _toy(tmp_path, iterations=40), _toy(tmp_path, iterations=40), _toy(tmp_path, iterations=40, seed=1)
    assert a.losses == b.losses and a.losses != c.losses
    assert np.mean(a.losses[-5:]) < 0.5 * np.mean(a.losses[:5])
    assert not a.net.training and a.path is None


def test_resume_rules(tmp_path):
    out = tmp_path / "toy.pt"
    _toy(tmp_path, out=out, settings={"width": 3})
    with pytest.raises(MedvolError, match=r"other settings \(width 3 -> 4\)"):
        _toy(tmp_path, out=out, resume="auto", iterations=5, settings={"width": 4})
    changed = _toy(tmp_path, out=out, resume="auto", iterations=5, settings={"width": 4}, allow_changes=True)
    assert changed.history[-1]["changes"] == {"width": [3, 4]} and changed.history[-1]["event"] == "resume"
    fork = _toy(tmp_path, out=tmp_path / "fork.pt", resume=str(out), iterations=6, lr=0.01, settings={"width": 4})
    assert fork.history[-1]["event"] == "fork" and fork.history[-1]["changes"] == {"lr": [0.05, 0.01]}
    assert len(fork.losses) == 6 and fork.losses[:5] == changed.losses
    with pytest.raises(MedvolError, match="at iteration 5, beyond the 4 asked"):
        _toy(tmp_path, out=out, resume="auto", iterations=4, settings={"width": 4})
    with pytest.raises(MedvolError, match="checkpoint of 'toy', not of 'other'"):
        _toy(tmp_path, out=out, resume="auto", task="other", settings={"width": 4})
    fresh = _toy(tmp_path, out=tmp_path / "new.pt", resume="auto")  # nothing to continue: a start
    assert [h["event"] for h in fresh.history] == ["start"]


def test_generator_loaders_refuse_an_auxiliary_checkpoint(tmp_path):
    from medvol.train.checkpoint import load_checkpoint

    out = tmp_path / "toy.pt"
    _toy(tmp_path, out=out)
    with pytest.raises(MedvolError, match="checkpoint of an auxiliary network \\(toy\\), not of a generative model"):
        load_checkpoint(out)


def test_non_finite_loss_and_bad_options(tmp_path):
    def bad(net, iteration, rng):
        return net(torch.ones(1, 3)).sum() * (float("nan") if iteration == 2 else 1.0)

    with pytest.raises(MedvolError, match="toy training diverged at iteration 2"):
        F.fit(lambda: torch.nn.Linear(3, 1), bad, task="toy", iterations=5, lr=0.1, seed=0)
    with pytest.raises(MedvolError, match="iterations 0"):
        _toy(tmp_path, iterations=0)
    with pytest.raises(MedvolError, match="learning rate"):
        _toy(tmp_path, lr=0.0)


def test_torch_draws_resume_bit_exactly(tmp_path):
    """A step that draws from torch's global RNG (dropout, noise) continues its stream on resume."""
    def step(net, iteration, rng):
        x = torch.randn(4, 3)
        return (net(x) - x.sum(1, keepdim=True)).pow(2).mean()

    def run(**options):
        return F.fit(lambda: torch.nn.Linear(3, 1), step, task="toy", lr=0.05, seed=0, **options).losses

    whole = run(iterations=4)
    run(iterations=2, out=tmp_path / "t.pt")
    assert run(iterations=4, out=tmp_path / "t.pt", resume="auto") == whole

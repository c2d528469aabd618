"""The GAN objective points the right way, for both models: one D step separates real from fake,
one G step raises D's score of the fakes, one E step lowers the reconstruction error, D reads the
crop position, and a 2-rank data-parallel step equals one process on the concatenated batch.

Each test fails for a known mutation: D's targets swapped, G trained towards "fake", E's L1
negated, a constant crop position, gradients summed over ranks instead of averaged.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ddp_step_worker import run_step

MODELS = ["hagan", "crfgan"]


def _state(system, real, seed=0):
    """A prepared step (crop drawn) and a copy of its RNG, to replay the latents a sub-step draws."""
    generator = torch.Generator().manual_seed(seed)
    state = system._prepare_step(real, None, system.make_optimizers(), 0, None, None, generator)
    return state


def _replay(state):
    g = torch.Generator()
    g.set_state(state.generator.get_state())
    return g


def _run(system, name, state):
    system._train_only(name)
    try:
        getattr(system, f"_step_{name}")(state)
    finally:
        system._unfreeze()


@torch.no_grad()
def _d_scores(system, state, fake):
    system.eval()
    try:
        real, _ = system.D(*system._real_inputs(state), state.position)
        fake, _ = system.D(*fake, state.position)
    finally:
        system.train()
    return real.float().mean().item(), fake.float().mean().item()


@pytest.mark.parametrize("name", MODELS)
def test_a_d_step_scores_real_higher_and_fake_lower(tiny, volume, name):
    for seed in range(3):
        system = tiny(name)
        state = _state(system, volume(2, 32, seed=seed), seed)
        with torch.no_grad():
            z = system.sample_latent(state.batch, _replay(state))
            fake = system._fake_inputs(z, None, state.start)
        real_before, fake_before = _d_scores(system, state, fake)
        _run(system, "D", state)
        real_after, fake_after = _d_scores(system, state, fake)
        assert real_after > real_before and fake_after < fake_before, (seed, real_before, real_after,
                                                                      fake_before, fake_after)


@pytest.mark.parametrize("name", MODELS)
def test_a_g_step_raises_d_of_the_fakes(tiny, volume, name):
    for seed in range(3):
        system = tiny(name)
        state = _state(system, volume(2, 32, seed=seed), seed)
        z = system.sample_latent(state.batch, _replay(state))  # what the G step will draw

        def score():
            with torch.no_grad():
                return _d_scores(system, state, system._fake_inputs(z, None, state.start))[1]

        before = score()
        _run(system, "G", state)
        assert score() > before, seed


@pytest.mark.parametrize("name", MODELS)
def test_an_e_step_lowers_the_reconstruction_error(tiny, volume, name):
    for seed in range(3):
        system = tiny(name)
        state = _state(system, volume(2, 32, seed=seed), seed)

        @torch.no_grad()
        def error():
            system.eval()
            try:
                return F.l1_loss(system.G.render(system.E(state.real_crop)), state.real_crop).item()
            finally:
                system.train()

        before = error()
        _run(system, "E", state)
        assert error() < before, seed


@pytest.mark.parametrize("name", MODELS)
def test_d_reads_the_crop_position_and_the_step_feeds_the_drawn_one(tiny, volume, name):
    system = tiny(name)
    state = _state(system, volume(2, 32))
    inputs = system._real_inputs(state)
    with torch.no_grad():
        first, _ = system.D(*inputs, torch.zeros_like(state.position))
        last, _ = system.D(*inputs, torch.ones_like(state.position))
    assert (first - last).abs().max() > 1e-4
    # The position is the drawn start's: different starts, different positions.
    positions = {}
    for seed in range(20):
        s = _state(system, volume(2, 32), seed)
        positions[s.start] = float(s.position[0, 0])
        assert s.position.shape == (2, 1) and torch.all(s.position == s.position[0, 0])
    assert len(positions) > 3
    assert all(pos == pytest.approx(start / (32 - 4)) for start, pos in positions.items())


@pytest.mark.parametrize("name", MODELS)
def test_two_ranks_equal_one_process_on_the_concatenated_batch(name, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = Path(__file__).with_name("ddp_step_worker.py")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(worker), name, str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    torch.set_num_threads(1)
    alone = run_step(name)

    assert set(ranks[0]["grads"]) == set(alone["grads"]) == set(system_groups(name))
    for group, grads in alone["grads"].items():
        for mine, theirs in zip(ranks[0]["grads"][group], grads):
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6, msg=group)
    for key, value in alone["losses"].items():
        if key in ("crf_weight",):
            continue
        averaged = (ranks[0]["losses"][key] + ranks[1]["losses"][key]) / 2
        assert averaged == pytest.approx(value, rel=1e-4, abs=1e-6), key
    for key, value in alone["params"].items():
        assert torch.equal(ranks[0]["params"][key], ranks[1]["params"][key]), key
        torch.testing.assert_close(ranks[0]["params"][key], value, rtol=1e-4, atol=1e-6, msg=key)


def system_groups(name):
    return {"hagan": ["D", "G", "E", "sub_E"], "crfgan": ["D", "G", "crf", "E"]}[name]

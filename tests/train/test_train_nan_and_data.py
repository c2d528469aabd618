"""A NaN loss stops the run (exit 2, last good checkpoint kept); the data stream and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medvol import cli
from medvol.config import load_config, save_config
from medvol.errors import MedvolError
from medvol.train import checkpoint as ckpt
from medvol.train.data import StreamSampler, build_dataset


def test_nan_loss_stops_with_exit_2_and_keeps_last_good_checkpoint(tiny, tmp_path, on_step, capsys):
    def third_iteration_diverges(iteration, losses):
        if iteration == 2:
            losses["G"] = torch.tensor(float("nan"))

    on_step(third_iteration_diverges)
    cfg = tiny(iterations=4)
    config_path = save_config(cfg, tmp_path / "cfg.yaml")
    assert cli.main(["train", "--config", str(config_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite loss at iteration 3" in err[0] and "G=nan" in err[0]
    assert "ckpt_0000002.pt" in err[0]
    found = ckpt.list_checkpoints(f"{cfg.train.out}/checkpoints")
    assert [i for i, _ in found] == [2]
    state = ckpt.read_checkpoint(found[0][1])
    assert all(torch.isfinite(v).all() for v in state["system"].values() if v.is_floating_point())


def test_stream_sampler_resumes_and_shards():
    straight = StreamSampler(5, seed=3)
    first = [i for _, i in zip(range(23), straight)]
    resumed = StreamSampler(5, seed=3, start=9)
    assert [i for _, i in zip(range(14), resumed)] == first[9:]
    assert sorted(first[:5]) == list(range(5)) and first[:5] != first[5:10]
    ranks = [StreamSampler(5, seed=3, rank=r, world_size=2) for r in (0, 1)]
    epoch = [ranks[0].epoch_indices(0), ranks[1].epoch_indices(0)]
    assert len(epoch[0]) == len(epoch[1]) == 3
    assert set(epoch[0]) | set(epoch[1]) == set(range(5))


def test_data_errors_are_one_line(tmp_path, capsys):
    cfg = load_config(None, ["--model.size", "32", "--data.source", str(tmp_path / "missing")])
    with pytest.raises(MedvolError, match="no such folder"):
        build_dataset(cfg.data, 32)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MedvolError):
        build_dataset(load_config(None, ["--data.source", str(empty)]).data, 32)
    config_path = save_config(load_config(None, ["--model.size", "32", "--data.source", str(empty),
                                                 "--train.out", str(tmp_path / "run")]), tmp_path / "c.yaml")
    assert cli.main(["train", "--config", str(config_path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_cache_of_another_size_is_refused(phantom_cache):
    cfg = load_config(None, ["--data.source", str(phantom_cache), "--data.split", "train"])
    dataset = build_dataset(cfg.data, 32)
    assert len(dataset) == 3 and np.isfinite(dataset.spacing).all()
    with pytest.raises(MedvolError, match="model.size 64"):
        build_dataset(cfg.data, 64)

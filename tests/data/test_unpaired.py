"""The unpaired dataset of cyclegan (two image caches, independent seeded orders) and the checks
of data.cache_b: bad input is one line naming the key, exit 2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medvol.cli import main
from medvol.config import DataConfig, load_config
from medvol.data.unpaired import UnpairedImageDataset
from medvol.errors import MedvolError
from medvol.train.data import build_dataset, make_loader


def _set(n: int, offset: float, channels: int = 1, side: int = 4) -> list[dict]:
    """Images whose every pixel is their id (offset + index), so a drawn item names its images."""
    return [{"image": torch.full((channels, side, side), offset + i)} for i in range(n)]


def _ids(item: dict) -> tuple[int, int]:
    return int(item["image"][0, 0, 0]), int(item["image"][1, 0, 0]) - 1000


def test_pairing_is_deterministic_per_seed_and_seed_dependent():
    a, b = _set(40, 0), _set(40, 1000)
    first = [_ids(item) for item in UnpairedImageDataset(a, b, seed=3)]
    assert first == [_ids(item) for item in UnpairedImageDataset(a, b, seed=3)]
    assert first != [_ids(item) for item in UnpairedImageDataset(a, b, seed=4)]


def test_a_and_b_orders_are_independent_shuffles():
    a, b = _set(40, 0), _set(40, 1000)
    dataset = UnpairedImageDataset(a, b, seed=3)
    loader = make_loader(dataset, DataConfig(batch=8, workers=0), seed=11)
    batches = iter(loader)
    drawn = [_ids({"image": image}) for _ in range(5) for image in next(batches)["image"]]  # one epoch
    a_order, b_order = [i for i, _ in drawn], [j for _, j in drawn]
    assert sorted(a_order) == list(range(40)) and sorted(b_order) == list(range(40))  # each seen once
    assert a_order != list(range(40)) and b_order != list(range(40))  # both shuffled
    assert sum(i == j for i, j in drawn) <= 4  # B's shuffle is not A's (a fixed point ~ 1 expected)
    assert abs(np.corrcoef(a_order, b_order)[0, 1]) < 0.4
    # The same training seed gives the same stream; another gives another A order.
    again = iter(make_loader(dataset, DataConfig(batch=8, workers=0), seed=11))
    assert torch.equal(next(again)["image"], next(iter(make_loader(dataset, DataConfig(batch=8, workers=0),
                                                                    seed=11)))["image"])
    other = next(iter(make_loader(dataset, DataConfig(batch=8, workers=0), seed=12)))["image"]
    assert [int(x[0, 0, 0]) for x in other] != a_order[:8]


def test_sets_of_different_sizes_cover_the_larger_once_per_epoch():
    dataset = UnpairedImageDataset(_set(3, 0), _set(7, 1000), seed=0)
    assert len(dataset) == 7
    pairs = [_ids(item) for item in dataset]
    assert sorted(j for _, j in pairs) == list(range(7))
    counts = np.bincount([i for i, _ in pairs], minlength=3)
    assert counts.min() >= 2 and counts.max() <= 3


@pytest.mark.parametrize("b, match", [(_set(5, 1000, channels=3), "3 channels"), (_set(5, 1000, side=8), "same side"),
                                      ([], "no images")])
def test_bad_second_domain_is_named(b, match):
    with pytest.raises(MedvolError, match=match):
        UnpairedImageDataset(_set(5, 0), b, names=("A", "data.cache_b X"))


# ----------------------------------------------------------------------------------------- caches
def _cfg(source, cache_b, *extra):
    return load_config(None, ["--model.name", "cyclegan", "--model.size", "32", "--model.base_width", "4",
                              "--data.source", str(source), *(["--data.cache_b", str(cache_b)] if cache_b else []),
                              *extra])


def test_two_caches_give_unpaired_two_channel_items(unpaired_caches):
    cfg = _cfg(unpaired_caches["A"], unpaired_caches["B"])
    dataset = build_dataset(cfg.data, 32, dims=2, channels=2, seed=0)
    item = dataset[0]["image"]
    assert item.shape == (2, 32, 32)
    i, j = dataset.indices(0)
    assert torch.equal(item[0], dataset.domain_a[i]["image"][0])
    assert torch.equal(item[1], dataset.domain_b[j]["image"][0])
    assert not torch.equal(item[0], item[1])


def _small_cache(folder, side: int):
    from medvol.data.image_cache import build_image_cache
    from medvol.data.image_prep import ImageParams
    from medvol.data.phantom import write_phantoms

    write_phantoms(1, 32, folder / "volumes", seed=5)
    params = ImageParams(size=side, source="slices", window=(-1024.0, 600.0))
    build_image_cache(folder / "volumes", folder / "cache", params, labels=False)
    return folder / "cache"


def test_bad_second_cache_is_one_line_exit_2(tmp_path, unpaired_caches, capsys):
    a, b = unpaired_caches["A"], unpaired_caches["B"]
    with pytest.raises(MedvolError, match="data.cache_b: cyclegan translates between two image caches"):
        _cfg(a, None)
    with pytest.raises(MedvolError, match="data.cache_b: a second domain is only for cyclegan, not dcgan"):
        load_config(None, ["--model.name", "dcgan", "--data.cache_b", str(b)])
    (tmp_path / "empty").mkdir()
    small, large = _small_cache(tmp_path / "s16", 16), _small_cache(tmp_path / "s64", 64)
    cases = [
        (b, tmp_path / "missing", "data.cache_b .*missing: no such folder"),
        (a, a, "the same cache as data.source"),
        (a, tmp_path / "empty", "data.cache_b .*empty: not a 2D image cache"),
        ("phantom", b, "data.source phantom: no such folder"),
        (a, small, "data.cache_b .*s16/cache: size: images of side 32 cannot be pooled from the cache's 16"),
        (a, large, "data.cache_b .*images of side 64, data.source's are 32; preprocess both"),
    ]
    for source, cache_b, match in cases:
        with pytest.raises(MedvolError, match=match):
            build_dataset(_cfg(source, cache_b).data, 32, dims=2, channels=2)
    # Through the CLI: one line on stderr, exit 2, no run folder.
    out = tmp_path / "run"
    code = main(["train", "--config", "cyclegan_tiny", "--data.source", str(a), "--data.cache_b", str(a),
                 "--data.workers", "0", "--train.iterations", "1",
                 "--train.device", "cpu", "--train.out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "the same cache as data.source" in err and len(err.splitlines()) == 1
    assert not out.exists()

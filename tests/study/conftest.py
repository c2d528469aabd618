"""Phantom reader studies for the study tests: tiny (32³) volumes, a few pairs; one torch thread
for the downstream tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def phantom_sources(tmp_path_factory) -> dict[str, Path]:
    """Folders of 32³ phantoms: ``real`` (6 volumes), ``fakeA`` (4), ``fakeB`` (4), other seeds (enough that
    no study below shows a volume twice)."""
    from medvol.data.phantom import write_phantoms

    root = tmp_path_factory.mktemp("reader_sources")
    write_phantoms(6, 32, root / "real_scans", seed=0)
    write_phantoms(4, 32, root / "gen_alpha_folder", seed=5)
    write_phantoms(4, 32, root / "gen_beta_folder", seed=9)
    return {"real": root / "real_scans", "fakeA": root / "gen_alpha_folder", "fakeB": root / "gen_beta_folder"}


@pytest.fixture(scope="session")
def rvf_study(tmp_path_factory, phantom_sources) -> Path:
    """A real-vs-fake study of 6 pairs against two fakes named ``alphaGAN`` and ``betaGAN``."""
    from medvol.study.reader.make import make_study

    out = tmp_path_factory.mktemp("studies") / "rvf"
    return make_study(out, [f"alphaGAN={phantom_sources['fakeA']}", f"betaGAN={phantom_sources['fakeB']}"],
                      str(phantom_sources["real"]), pairs=6, seed=3)


@pytest.fixture(scope="session")
def mvm_study(tmp_path_factory, phantom_sources) -> Path:
    """A model-vs-model study of 4 pairs, alphaGAN vs betaGAN."""
    from medvol.study.reader.make import make_study

    out = tmp_path_factory.mktemp("studies") / "mvm"
    return make_study(out, [f"alphaGAN={phantom_sources['fakeA']}", f"betaGAN={phantom_sources['fakeB']}"],
                      pairs=4, mode="model-vs-model", seed=1, planes="axial,coronal")


@pytest.fixture(scope="session")
def phantom_cache(tmp_path_factory, phantom_sources) -> Path:
    """A 32³ cache of the ``real`` phantoms (one of the three in the validation fold)."""
    from medvol.data.cache import build_cache
    from medvol.data.preprocess import PreprocessParams

    cache = tmp_path_factory.mktemp("reader_cache") / "cache"
    build_cache(phantom_sources["real"], cache, PreprocessParams(size=32), val_fraction=0.34)
    return cache


@pytest.fixture
def one_thread():
    """One torch thread (the downstream tests ask for it): on a shared two-core machine a second one
    makes a step of their tiny networks many times slower (threads spinning on a busy core), not faster."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

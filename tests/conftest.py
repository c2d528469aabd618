"""Shared test setup: Triton runs in its interpreter where there is no GPU; GPU tests skip cleanly."""

import locale
import os
import shutil

# Must be set before triton is imported anywhere: without a GPU, Triton kernels run interpreted.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen" if not os.environ.get("DISPLAY") else "xcb")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


#: The locale this test process started in: every test ends in it.
_START_LOCALE = locale.setlocale(locale.LC_ALL)


@pytest.fixture(autouse=True)
def _keep_locale(request):
    """A library that calls ``setlocale`` (GDCM's DICOM writer sets "C"; Qt sets the
    environment's) can leave this process in another locale, and "C" turns the default text
    codec into ASCII for every later test. After each test (its fixtures included), go back to
    the locale the session started in and warn with the test's name, so the culprit shows in the
    summary (a module-scoped fixture's change shows at its module's first test)."""
    import warnings

    yield
    now = locale.setlocale(locale.LC_ALL)
    if now != _START_LOCALE:
        locale.setlocale(locale.LC_ALL, _START_LOCALE)
        warnings.warn(f"{request.node.nodeid} left the locale {now!r} (the session's is {_START_LOCALE!r}); restored")


@pytest.fixture
def medvol_with_file_limit():
    """``run(argv, limit)``: ``python -m medvol.cli *argv`` in a child whose files cannot grow
    past ``limit`` bytes; returns the ``CompletedProcess`` (text output).

    ``RLIMIT_FSIZE`` with SIGXFSZ ignored makes a write past the limit fail in the kernel (EFBIG),
    where the C++ writers of ITK and torch meet it exactly as they meet a full disk (ENOSPC):
    a short write. That is a full filesystem without root or a tmpfs.
    """
    import os
    import resource
    import signal
    import subprocess
    import sys

    def run(argv, limit: int, script: str | None = None):
        def limit_files():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

        command = ["-c", script] if script is not None else ["-m", "medvol.cli"]
        env = dict(os.environ, PYTHONUTF8="0", LC_ALL="C", PYTHONDONTWRITEBYTECODE="1")
        return subprocess.run([sys.executable, *command, *map(str, argv)], capture_output=True, text=True,
                              encoding="utf-8", errors="replace", env=env, preexec_fn=limit_files,
                              timeout=600)

    return run


@pytest.fixture(scope="session")
def tiny_dcgan_run():
    """``make(out, iterations, ckpt_every, sample_every)``: train configs/dcgan_tiny.yaml narrowed
    to a few seconds (base width 4, latent 8, 2 phantoms, batch 4) on 32^2 phantom slices into
    ``out``; returns ``out``. The 2D checkpoints of the evaluate and reader tests."""
    from pathlib import Path

    from medvol.config import load_config
    from medvol.train.trainer import train

    def make(out, iterations: int, ckpt_every: int, sample_every: int):
        cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "dcgan_tiny.yaml", [
            "--model.base_width", "4", "--model.latent_dim", "8", "--data.phantom_n", "2", "--data.batch", "4",
            "--train.iterations", str(iterations), "--train.ckpt_every", str(ckpt_every),
            "--train.sample_every", str(sample_every), "--train.log_every", "2", "--train.out", str(out)])
        train(cfg)
        return out

    return make


@pytest.fixture(scope="session")
def unpaired_caches(tmp_path_factory):
    """Two tiny 2D image caches, domains A and B of ``cyclegan``: the 32 axial 32x32 slices of one
    32^3 phantom each, from different seeds (unpaired). ``{"A": folder, "B": folder}``."""
    from medvol.data.image_cache import build_image_cache
    from medvol.data.image_prep import ImageParams
    from medvol.data.phantom import write_phantoms

    root = tmp_path_factory.mktemp("unpaired")
    caches = {}
    for domain, seed in (("A", 1), ("B", 2)):
        write_phantoms(1, 32, root / f"volumes_{domain}", seed=seed)
        build_image_cache(root / f"volumes_{domain}", root / f"cache_{domain}",
                          ImageParams(size=32, source="slices", window=(-1024.0, 600.0)), labels=False)
        caches[domain] = root / f"cache_{domain}"
    return caches

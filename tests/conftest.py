"""Shared test setup: Triton runs in its interpreter where there is no GPU; GPU tests skip cleanly."""

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

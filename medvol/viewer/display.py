"""A display for headless screenshots, and the Triton/OpenGL import order.

napari draws with OpenGL through Qt and reads screenshots back from the window's framebuffer,
which holds a picture only while the window is shown on some X screen (a hidden canvas reads back
black). So ``medvol view --screenshot`` shows its window on a private Xvfb, the X server that
``xvfb-run`` starts, for the life of the process: nothing appears on the user's desktop, and no
display is needed at all. Without Xvfb installed, ``DISPLAY`` is used (the window shows briefly).
Qt's ``offscreen`` platform is replaced by ``xcb``: it borrows its OpenGL context from an X server
as well, but unreliably (measured: 4 of 6 concurrent screenshots got no OpenGL context under
``offscreen``, 0 of 6 under ``xcb``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import subprocess
import sys

from medvol.errors import MedvolError

log = logging.getLogger("medvol.viewer")

_XVFB: subprocess.Popen | None = None


def ensure_display() -> str | None:
    """Point Qt at a private Xvfb (or the current display) before Qt starts.

    Does nothing once this process has a QApplication (inside napari or a test run): Qt's
    platform is fixed by then.

    Returns:
        the ``DISPLAY`` in use, or None on platforms without X (macOS, Windows, Wayland).

    Raises:
        MedvolError: on Linux with neither ``Xvfb`` installed nor ``DISPLAY`` set.
    """
    global _XVFB
    if not sys.platform.startswith("linux") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    if _qt_started() or _XVFB is not None:
        return os.environ.get("DISPLAY")
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        if os.environ.get("DISPLAY"):
            return os.environ["DISPLAY"]
        raise MedvolError("--screenshot needs a display: install Xvfb or run under xvfb-run")
    read_fd, write_fd = os.pipe()
    # -displayfd makes Xvfb pick a free display and write its number once it accepts clients,
    # so there is no race with other Xvfb instances and no sleep.
    _XVFB = subprocess.Popen(
        [xvfb, "-displayfd", str(write_fd), "-screen", "0", "1920x1200x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    with os.fdopen(read_fd) as handle:
        number = handle.readline().strip()
    if not number.isdigit():
        _stop_xvfb()
        raise MedvolError("--screenshot: Xvfb failed to start; run under xvfb-run instead")
    atexit.register(_stop_xvfb)
    os.environ["DISPLAY"] = f":{number}"
    os.environ.pop("XAUTHORITY", None)  # the private server takes no authentication
    return os.environ["DISPLAY"]


def _qt_started() -> bool:
    """True when this process already has a QApplication (e.g. inside napari or a test run)."""
    if "qtpy" not in sys.modules and "PyQt5" not in sys.modules:
        return False
    from qtpy.QtWidgets import QApplication

    return QApplication.instance() is not None


def _stop_xvfb() -> None:
    global _XVFB
    if _XVFB is not None:
        _XVFB.terminate()
        _XVFB.wait(timeout=10)
        _XVFB = None


def guard_triton() -> None:
    """Import Triton before OpenGL starts, or keep it out once that is too late.

    Mesa's software OpenGL (llvmpipe: Xvfb, VMs, CI) and Triton each bring their own LLVM; when
    Triton is imported after an OpenGL context exists, the process crashes (segmentation fault
    in ``libtriton``). ``medvol view`` calls this before creating its viewer, so Triton loads
    first (0.1 s). Inside a napari started elsewhere, llvmpipe may already be loaded: then
    ``import triton`` is made to fail, so torch and medvol treat Triton as absent; generating
    in the widget does not need it (plain PyTorch ops on the CPU).
    """
    if "triton" in sys.modules:
        return
    if _mesa_llvm_loaded():
        sys.modules["triton"] = None  # makes `import triton` raise ImportError
        log.warning("Triton disabled in this process: OpenGL (llvmpipe) already loaded its own LLVM")
        return
    with contextlib.suppress(ImportError):
        import triton  # noqa: F401


def _mesa_llvm_loaded() -> bool:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return any("libLLVM" in line for line in maps)
    except OSError:  # not Linux: no /proc, and no llvmpipe/Triton clash known there
        return False

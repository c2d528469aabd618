"""What a run reports while it trains: TensorBoard scalars and images, a progress bar, memory.

TensorBoard and tqdm are optional: where they are not installed (the bare GPU images have only
torch, triton, numpy and pyyaml) the run goes on with plain log lines instead. The bar is drawn
only on a terminal: written to a log file, each of its redraws would be one more line there.

TensorBoard writes its event file from a thread of its own and raises that thread's ``OSError``
(a full disk) on the next call here; it becomes one :class:`MedvolError` naming ``run_dir/tb``.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import sys
import threading
from pathlib import Path

import torch

from medvol.errors import MedvolError
from medvol.utils import write_failure

log = logging.getLogger("medvol.train")


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process so far: CUDA max allocated on a GPU, else peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is KiB on Linux, bytes on macOS.
    return int(peak if sys.platform == "darwin" else peak * 1024)


def mid_slices(volume: torch.Tensor) -> torch.Tensor:
    """Axial, coronal and sagittal mid-slices of ``volume[B,C,S,S,S]`` side by side (a row per
    channel: the image, then a paired model's mask channels); for the images ``[B,C,S,S]`` of a 2D
    model, their C channels side by side.

    Returns:
        ``[B, 1, C*S, 3*S]`` (2D: ``[B, 1, S, C*S]``) float32 in [0, 1] (input assumed in [-1, 1]).
    """
    v = volume.detach().float().cpu()
    if v.dim() == 4:
        return ((torch.cat(v.unbind(1), dim=-1)[:, None] + 1) / 2).clamp(0, 1)
    s = v.shape[-1] // 2
    planes = torch.cat([v[:, :, s], v[:, :, :, s], v[:, :, :, :, s]], dim=-1)  # [B, C, S, 3S]
    return ((torch.cat(planes.unbind(1), dim=-2)[:, None] + 1) / 2).clamp(0, 1)


class Monitor:
    """TensorBoard writer plus progress bar for the main rank; silent on the others.

    Args:
        run_dir: TensorBoard events go to ``run_dir/tb``.
        total: iterations of the whole run; ``start``: iterations already done (resume).
        enabled: False on non-main ranks.
        progress: show a tqdm bar when stderr is a terminal (else a log line every ``log_every``).
    """

    def __init__(self, run_dir: Path, total: int, start: int, enabled: bool = True, progress: bool = True):
        self.enabled = enabled
        self.writer = None
        self.bar = None
        self.tb_dir = Path(run_dir) / "tb"
        self._thread_hook = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            with self._tensorboard():
                self.writer = SummaryWriter(log_dir=str(self.tb_dir), purge_step=start)
            self._thread_hook = threading.excepthook
            threading.excepthook = self._writer_thread_failed
        except ImportError:
            log.warning("tensorboard is not installed: no TensorBoard logs for this run"
                        " (pip install 'medvol[log]')")
        if progress and sys.stderr.isatty():
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, initial=start, unit="it", dynamic_ncols=True,
                                mininterval=1.0, desc="train")
            except ImportError:
                self.bar = None

    def _writer_thread_failed(self, args) -> None:
        # The event writer's OSError comes back on the next call in the training thread and is
        # reported there in one line; the thread's own traceback would only repeat it.
        if isinstance(args.exc_value, OSError) and type(args.thread).__module__.startswith("tensorboard"):
            return
        self._thread_hook(args)

    @contextlib.contextmanager
    def _tensorboard(self):
        try:
            yield
        except OSError as error:
            self.writer = None  # a failed writer raises the same error on every later call
            raise MedvolError(f"cannot write TensorBoard logs in {self.tb_dir}: "
                              f"{write_failure(error, self.tb_dir)}") from None

    def scalars(self, iteration: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            with self._tensorboard():
                for name, value in values.items():
                    self.writer.add_scalar(name, value, iteration)

    def images(self, iteration: int, tag: str, volume: torch.Tensor) -> None:
        """Mid-slices of each volume in ``volume[B,1,S,S,S]``, or the images ``[B,C,S,S]`` of a 2D
        model (channels side by side), as one TensorBoard image grid."""
        if self.writer is not None:
            with self._tensorboard():
                self.writer.add_images(tag, mid_slices(volume), iteration, dataformats="NCHW")

    def preview(self, iteration: int, tag: str, image) -> None:
        """A labelled preview (uint8 ``(H, W)`` grey, :mod:`medvol.preview`) as one image."""
        if self.writer is not None:
            with self._tensorboard():
                self.writer.add_image(tag, image[None], iteration, dataformats="CHW")

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def report(self, iteration: int, total: int, losses: dict[str, float], rate: float) -> None:
        """Show the latest losses and speed (bar postfix, or one log line without a bar)."""
        if not self.enabled:
            return
        short = {k.replace("loss_", ""): f"{v:.3g}" for k, v in losses.items()}
        if self.bar is not None:
            self.bar.set_postfix(short, refresh=False)
        else:
            eta = (total - iteration) / rate if rate > 0 else float("inf")
            text = " ".join(f"{k}={v}" for k, v in short.items())
            log.info("it %d/%d %s %.2f it/s eta %.0fs", iteration, total, text, rate, eta)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            log.info(text)

    def close(self, quiet: bool = False) -> None:
        """Close the bar and flush the TensorBoard events.

        Args:
            quiet: drop a failure to flush (the run is already stopping on another error).
        """
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        writer, self.writer = self.writer, None
        try:
            if writer is not None:
                with contextlib.suppress(MedvolError) if quiet else contextlib.nullcontext():
                    with self._tensorboard():
                        writer.close()  # flushes first
        finally:
            if self._thread_hook is not None:
                threading.excepthook, self._thread_hook = self._thread_hook, None

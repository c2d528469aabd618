"""The training loop: one ``train_step`` of the model contract per iteration, plus everything around it.

Around the model's published step the trainer adds: the data stream (``data.py``), the precision
and memory mode (``reference``: fp32 plain ops; ``optimized``: autocast, activation checkpointing,
fused ops, bf16 group norms, optional ``torch.compile``), data-parallel gradient averaging under
``torchrun`` (``distributed.py``), checkpoints that resume bit-exactly (``checkpoint.py``),
TensorBoard and a progress bar (``monitor.py``), and a stop on the first NaN/inf loss.

Nothing of a run is lost or mixed: one run per folder, locked while it trains (``runfolder.py``);
``--resume auto`` falls back past damaged checkpoints to the newest verified one; SIGINT/SIGTERM
checkpoint before exiting (``interrupt.py``); temporaries of killed writes are removed at start.
A resume from an older checkpoint or with changed settings needs ``--fork`` or ``--allow-changes``,
and every start is recorded in the run's history with its config file (``history.py``).

Example:
    >>> from medvol.config import load_config
    >>> run_dir = train(load_config("configs/demo.yaml", ["--train.iterations", "5"]))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medvol.config import TrainConfig, config_to_dict
from medvol.errors import MedvolError
from medvol.train import checkpoint as ckpt
from medvol.train import history
from medvol.train.data import build_dataset, data_meta, make_loader
from medvol.train.distributed import (DistInfo, all_finite, average_gradients, barrier, broadcast_module,
                                      broadcast_object, gather_objects, init_distributed, max_over_ranks)
from medvol.train.interrupt import StopSignals, TrainingInterrupted
from medvol.train.monitor import Monitor, mid_slices, peak_memory_bytes
from medvol.train.runfolder import RunFolderLock, existing_run, refuse_second_run
from medvol.utils import checked_write, cpu_has_native_bf16, resolve_amp, set_threads
from medvol.preview import training_preview, write_png

log = logging.getLogger("medvol.train")

_AMP = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


class TrainingDiverged(MedvolError):
    """A loss became NaN or inf; the run stopped without writing a checkpoint of that state."""


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_system(cfg: TrainConfig):
    """``medvol.models.build`` with the config's model options, ready to train."""
    from medvol.models import build_from_config

    system = build_from_config(cfg.model)
    system.prepare_training()  # a loss's weights file is checked before the run folder exists
    for name, source in system.pretrained().items():
        ckpt.load_submodule(system, name, source, f"pretrained {name} ({source})")
    return system


def amp_settings(cfg: TrainConfig) -> tuple[torch.dtype | None, bool]:
    """``(autocast dtype or None, use a GradScaler)``; the reference mode is always fp32."""
    if cfg.train.mode == "reference":
        return None, False
    dtype = _AMP[cfg.train.amp]
    return dtype, dtype is torch.float16


def apply_lr_overrides(optimizers: dict[str, torch.optim.Optimizer], lr: dict[str, float]) -> None:
    """Set ``lr[name]`` on every param group of optimiser ``name``."""
    for name, value in lr.items():
        if name not in optimizers:
            raise MedvolError(f"config key train.lr.{name}: no such optimiser "
                              f"(this model has {', '.join(sorted(optimizers))})")
        for group in optimizers[name].param_groups:
            group["lr"] = value


def apply_beta1_overrides(optimizers: dict[str, torch.optim.Optimizer], beta1: dict[str, float]) -> None:
    """Set Adam's first beta ``beta1[name]`` on every param group of optimiser ``name``."""
    for name, value in beta1.items():
        if name not in optimizers:
            raise MedvolError(f"config key train.beta1.{name}: no such optimiser "
                              f"(this model has {', '.join(sorted(optimizers))})")
        for group in optimizers[name].param_groups:
            if "betas" not in group:
                raise MedvolError(f"config key train.beta1.{name}: optimiser {name} "
                                  f"({type(optimizers[name]).__name__}) has no betas")
            group["betas"] = (value, group["betas"][1])


def resolve_resume(resume: str | None, run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint to start from, loaded and verified, or ``None`` for a fresh start.

    Args:
        resume: ``None`` (a new run: refused where a run already exists), ``"auto"`` (the newest
            verified checkpoint of ``run_dir``, if any) or a checkpoint file / run folder.
        run_dir: the run folder being trained into.

    Raises:
        MedvolError: a second run into ``run_dir``, or no usable checkpoint.
    """
    if resume == "auto":
        return ckpt.read_latest_verified(run_dir / "checkpoints")
    state = ckpt.read_checkpoint(resume) if resume is not None else None
    refuse_second_run(run_dir, Path(state["path"]) if state is not None else None)
    return state


class Trainer:
    """One training run; :func:`train` is the entry point.

    Args:
        cfg: the resolved config (``train.out`` is the folder trained into: a fork's new folder).
        info: rank, world size and device (from :func:`init_distributed`).
        fork_source: with ``--fork``, the folder ``--resume auto`` reads the checkpoint from.
        allow_changes: ``--allow-changes``: resume in place from an older checkpoint or with
            changed settings, recording them.
    """

    def __init__(self, cfg: TrainConfig, info: DistInfo, fork_source: Path | None = None,
                 allow_changes: bool = False):
        self.cfg = cfg
        self.info = info
        self.fork_source = fork_source
        self.allow_changes = allow_changes
        self.start: dict[str, Any] = {}  # what history.jsonl records of this start (main rank)
        self.device = info.device
        self.run_dir = Path(cfg.train.out)
        self.ckpt_dir = self.run_dir / "checkpoints"
        # What "auto" means here is decided once and written into the run's config.yaml (and its
        # checkpoints), with the thread count, so a run's record says how it was trained.
        amp, why = resolve_amp(cfg.train.amp, self.device)
        # 0: the process's own setting (the CLI has already applied --threads or medvol's default;
        # a library caller keeps control of its process).
        threads = set_threads(cfg.train.threads) if cfg.train.threads else torch.get_num_threads()
        if info.is_main:
            if cfg.train.mode == "optimized":
                log.info("train.amp %s -> %s (%s)", cfg.train.amp, amp, why)
            log.info("torch CPU threads: %d", threads)
        cfg = self.cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, amp=amp, threads=threads))
        self.amp_dtype, use_scaler = amp_settings(cfg)
        if self.device.type == "cuda" and self.amp_dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise MedvolError("train.amp bf16: this GPU has no bf16 support; use --train.amp fp16")
        if self.device.type == "cpu" and self.amp_dtype is torch.bfloat16 and not cpu_has_native_bf16():
            log.warning("train.amp bf16: this CPU (%s) has no native bf16, so autocast emulates it and can "
                        "be several times slower than fp32 (docs/performance.md); --train.amp none keeps "
                        "the rest of the optimized mode",
                        torch.backends.cpu.get_cpu_capability())

        # Same seed on every rank -> identical initial weights (broadcast below makes it certain).
        seed_everything(cfg.train.seed)
        self.system = build_system(cfg)
        self.system.to(self.device)
        self.system.set_mode(cfg.train.mode)
        self.optimizers = self.system.make_optimizers()
        if info.enabled:
            world = info.world_size
            self.system.grad_sync = lambda group, params: average_gradients(params, world)
        self.scaler = torch.amp.GradScaler(self.device.type) if use_scaler else None

        # Per-rank randomness from here on: crops, latents, anything the model draws.
        rank_seed = cfg.train.seed + 1_000_003 * info.rank
        seed_everything(rank_seed)
        self.generator = torch.Generator(device=self.device).manual_seed(rank_seed)
        self.iteration = 0
        self.last_checkpoint: Path | None = None
        self.saved_iteration: int | None = None
        self.lock: RunFolderLock | None = None  # the main rank's, while it runs
        self.dataset = None
        self.meta: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------
    def resume(self, state: dict[str, Any]) -> None:
        """Load networks, optimisers, scaler, RNG states and the iteration from a checkpoint dict
        (:func:`medvol.train.checkpoint.read_checkpoint`)."""
        path = state["path"]
        ckpt.check_compatible(state, self.cfg)
        ckpt.load_system_state(self.system, state)
        missing = set(self.optimizers) ^ set(state["optimizers"])
        if missing:
            raise MedvolError(f"checkpoint {path}: optimisers {sorted(missing)} do not match the model's")
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rngs = state["rng"]
        if len(rngs) == self.info.world_size:
            ckpt.restore_rng(rngs[self.info.rank], self.generator)
        else:
            log.warning("checkpoint %s was written by %d ranks, this run has %d: RNG states reseeded",
                        path, len(rngs), self.info.world_size)
        self.iteration = int(state["iteration"])
        self.last_checkpoint = Path(path)
        self.saved_iteration = self.iteration

    def save(self) -> Path:
        """Checkpoint the current state (every rank takes part: RNG states are gathered)."""
        rngs = gather_objects(ckpt.capture_rng(self.generator), self.info)
        path = self.ckpt_dir / ckpt.checkpoint_name(self.iteration)
        if self.info.is_main:
            ckpt.save_checkpoint(path, {
                "iteration": self.iteration,
                "config": config_to_dict(self.cfg),
                "system": self.system.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": rngs,
                "world_size": self.info.world_size,
                "data": {**self.meta, "consumed_per_rank": self.iteration * self.cfg.data.batch
                         * getattr(self.system, "real_batches", 1)},
            })
            ckpt.prune_checkpoints(self.ckpt_dir, self.cfg.train.keep_checkpoints)
        barrier(self.info)
        self.last_checkpoint = path
        self.saved_iteration = self.iteration
        return path

    # ------------------------------------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _labels(self, batch: dict[str, Any]) -> torch.Tensor | None:
        if self.cfg.model.num_classes <= 0:
            return None
        return torch.as_tensor(batch["label"], dtype=torch.long).to(self.device, non_blocking=True)

    def _sample_images(self, monitor: Monitor, real: torch.Tensor, fixed_z: torch.Tensor,
                       fixed_labels: torch.Tensor | None) -> None:
        was_training = self.system.training
        real = real[: fixed_z.shape[0]]
        with torch.no_grad(), self._autocast():
            fake = self.system.preview(fixed_z, real, fixed_labels)
        self.system.train(was_training)
        kind = "volumes" if self.system.dims == 3 else "images"
        monitor.images(self.iteration, f"{kind}/real", real)
        monitor.images(self.iteration, f"{kind}/generated", fake)
        # Mid-slices also land on disk (small, numpy only) for looking at without TensorBoard.
        path = self.run_dir / "samples" / f"slices_{self.iteration:07d}.npz"
        with checked_write(path, "sample slices") as tmp:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, real=mid_slices(real).numpy(), generated=mid_slices(fake).numpy())
        # ... and as a labelled PNG (central planes, every panel captioned), also in TensorBoard.
        preview = training_preview(real.detach().float().cpu().numpy(), fake.detach().float().cpu().numpy(),
                                   self.iteration, channel_names=getattr(self.system, "preview_channels", None))
        if preview is not None:
            write_png(preview, path.with_suffix(".png"))
            monitor.preview(self.iteration, f"{kind}/preview", preview)

    def _stop_on_nonfinite(self, losses: dict[str, torch.Tensor], monitor: Monitor) -> None:
        values = torch.stack([v.detach().float().reshape(()) for v in losses.values()])
        if all_finite(bool(torch.isfinite(values).all()), self.device):
            return
        bad = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items() if not math.isfinite(v.item())) \
            or "on another rank"
        kept = f"last good checkpoint: {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint written yet"
        raise TrainingDiverged(f"non-finite loss at iteration {self.iteration + 1} ({bad}); "
                               f"training stopped, {kept}")

    # ------------------------------------------------------------------------------------------
    def _start_state(self, resume: str | None) -> dict[str, Any] | None:
        """The main rank locks and cleans the folder and picks the checkpoint; every rank loads
        that one. A refusal reaches every rank, so none waits for a rank that gave up."""
        decision: dict[str, Any] = {}
        if self.info.is_main:
            try:
                # Only the main rank writes into the run folder, so its lock covers every writer.
                self.lock = RunFolderLock(self.run_dir)
                removed = ckpt.clean_temporaries(self.run_dir)
                if removed:
                    log.info("removed %d temporary file(s) of interrupted writes: %s", len(removed),
                             ", ".join(str(p.relative_to(self.run_dir)) for p in removed))
                state = self._pick_checkpoint(resume)
                decision = {"path": state["path"] if state is not None else None}
            except MedvolError as error:
                decision = {"error": str(error)}
        decision = broadcast_object(decision, self.info)
        if "error" in decision:
            raise MedvolError(decision["error"])
        if decision["path"] is None:
            return None
        return state if self.info.is_main else ckpt.read_checkpoint(decision["path"])

    def _pick_checkpoint(self, resume: str | None) -> dict[str, Any] | None:
        """:func:`resolve_resume` plus the checks of a fork or an in-place resume (main rank)."""
        if self.fork_source is not None:
            if resume is None:
                raise MedvolError("--fork needs --resume PATH|auto: the checkpoint the new run starts from")
            if resume == "auto":
                state = ckpt.read_latest_verified(self.fork_source / "checkpoints")
                if state is None:
                    raise MedvolError(f"--fork: no checkpoint in {self.fork_source} to start from")
            else:
                state = ckpt.read_checkpoint(resume)
            held = existing_run(self.run_dir)
            if held is not None:
                raise MedvolError(f"--fork {self.run_dir}: that folder already holds a run ({held}); fork into "
                                  f"a new folder, or continue that run with --resume auto --out {self.run_dir}")
            ckpt.check_compatible(state, self.cfg)
            self.start = {"event": "fork", "changes": history.changed_settings(ckpt.checkpoint_config(state),
                                                                                self.cfg)}
            return state
        state = resolve_resume(resume, self.run_dir)
        if state is None:
            self.start = {"event": "start", "changes": {}}
            return None
        changes = history.check_resume(state, self.cfg, self.run_dir, auto=resume == "auto",
                                       allow_changes=self.allow_changes)
        self.start = {"event": "resume", "changes": changes}
        return state

    def _record_start(self, path: str | None) -> None:
        """Write this start's config file and history record (main rank, before any training)."""
        record: dict[str, Any] = {"event": self.start["event"], "iteration": self.iteration}
        if path is not None:
            side = ckpt.checksum_path(path).read_text(encoding="utf-8").split()
            record.update(checkpoint=str(Path(path).resolve()), sha256=side[0] if side else None)
        if self.start["event"] == "fork":
            copy = history.copy_checkpoint(path, self.run_dir)
            record["copied_to"] = str(copy.relative_to(self.run_dir))
        elif self.start["event"] == "resume":
            aside = history.set_aside_newer(self.run_dir, self.iteration)
            if aside is not None:
                record["superseded"] = str(aside.relative_to(self.run_dir))
                log.warning("moved checkpoints and samples newer than iteration %d to %s", self.iteration, aside)
        config_file = history.record_config(self.run_dir, self.cfg)
        record["config"] = config_file.name
        if self.start["changes"]:
            record["changes"] = self.start["changes"]
            log.warning("%s with changed settings: %s (recorded in %s)", self.start["event"],
                        history.describe_changes(self.start["changes"], limit=50), history.HISTORY)
        history.append_history(self.run_dir, record)

    def run(self, resume: str | None = None) -> Path:
        """Train to ``cfg.train.iterations``; see :func:`train`."""
        ok = False
        try:
            run_dir = self._run(resume)
            ok = True
            return run_dir
        finally:
            if self.lock is not None:
                self.lock.release(remove_empty=not ok)
                self.lock = None

    def _run(self, resume: str | None) -> Path:
        cfg, info = self.cfg, self.info
        state = self._start_state(resume)
        if state is not None:
            self.resume(state)
            if info.is_main:
                log.info("resumed from %s at iteration %d", state["path"], self.iteration)
        elif resume == "auto" and info.is_main:
            log.info("no checkpoint in %s: starting from scratch", self.ckpt_dir)
        path = state["path"] if state is not None else None
        del state  # the loaded tensors now live in the model and optimisers
        # After the checkpoint check: a wrong --resume is named before any data is read.
        self.dataset = build_dataset(cfg.data, cfg.model.size, dims=self.system.dims,
                                     channels=self.system.channels, mask_channels=cfg.model.mask_channels,
                                     seed=cfg.train.seed)
        self.meta = data_meta(self.dataset, cfg.data)
        if info.enabled and path is None:
            broadcast_module(self.system)
        apply_lr_overrides(self.optimizers, cfg.train.lr)
        apply_beta1_overrides(self.optimizers, cfg.train.beta1)
        if cfg.train.compile and cfg.train.mode == "optimized":
            # In place: the modules keep their names, so checkpoints stay interchangeable. D stays
            # eager: its spectral norm updates its power-iteration buffers in place on each of the
            # two calls per step, and the compiled backward recomputes from the mutated buffer.
            for name in ("G", "E"):
                if name in self.system.groups():  # 2D models have no E
                    getattr(self.system, name).compile()
        elif cfg.train.compile:
            log.warning("train.compile is ignored in reference mode (plain eager PyTorch by definition)")
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._record_start(path)
        total = cfg.train.iterations
        monitor = Monitor(self.run_dir, total, min(self.iteration, total), enabled=info.is_main,
                          progress=cfg.train.progress)
        try:
            with StopSignals() as stop:
                self._loop(monitor, total, stop)
        except BaseException:
            monitor.close(quiet=True)  # the error that stopped the run is the one to report
            raise
        monitor.close()
        return self.run_dir

    def _stop_on_signal(self, stop: StopSignals) -> None:
        """Between two steps: on SIGINT/SIGTERM (on any rank) checkpoint, then stop."""
        signum = stop.signum or 0
        if self.info.enabled:
            signum = max_over_ranks(signum, self.device)
        if not signum:
            return
        path = self.last_checkpoint if self.saved_iteration == self.iteration else self.save()
        raise TrainingInterrupted(signum, self.iteration, path)

    def _loop(self, monitor: Monitor, total: int, stop: StopSignals) -> None:
        cfg, info = self.cfg, self.info
        if self.iteration >= total:
            monitor.message(f"already at iteration {self.iteration} of {total}: nothing to do")
            return
        loader = make_loader(self.dataset, cfg.data, seed=cfg.train.seed, rank=info.rank,
                             world_size=info.world_size, start_iteration=self.iteration,
                             pin_memory=self.device.type == "cuda",
                             batches_per_step=getattr(self.system, "real_batches", 1))
        batches = iter(loader)
        # Fixed latents (drawn from their own generator) so sample images are comparable over time;
        # a grid of up to 16 for 2D models (images are small), 2 volumes' mid-slices for 3D ones.
        n_show = min(2 if self.system.dims == 3 else 16, cfg.data.batch)
        fixed_z = self.system.sample_latent(n_show, generator=torch.Generator().manual_seed(cfg.train.seed),
                                            device=torch.device("cpu")).to(self.device)
        fixed_labels = (torch.arange(n_show, device=self.device) % cfg.model.num_classes
                        if cfg.model.num_classes > 0 else None)
        sums: dict[str, float] = {}
        wait = compute = 0.0
        window_start, window_iters = time.perf_counter(), 0
        self.system.train()
        while self.iteration < total:
            t0 = time.perf_counter()
            batch = next(batches)
            real = batch["image"].to(self.device, non_blocking=True)
            labels = self._labels(batch)
            t1 = time.perf_counter()
            losses = self.system.train_step(real, self.optimizers, self.iteration, labels=labels,
                                            amp_dtype=self.amp_dtype, scaler=self.scaler,
                                            generator=self.generator)
            self._stop_on_nonfinite(losses, monitor)
            if self.system.g_ema_half_life > 0:
                self.system.update_g_ema()
            t2 = time.perf_counter()
            self.iteration += 1
            wait += t1 - t0
            compute += t2 - t1
            window_iters += 1
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + float(value)
            monitor.advance()

            if self.iteration % cfg.train.log_every == 0 or self.iteration == total:
                elapsed = time.perf_counter() - window_start
                rate = window_iters / elapsed if elapsed > 0 else 0.0
                means = {k: v / window_iters for k, v in sums.items()}
                scalars = {f"loss/{k}": v for k, v in means.items()}
                scalars.update({
                    "speed/it_per_s": rate,
                    "speed/data_wait_s": wait / window_iters,
                    "speed/step_s": compute / window_iters,
                    "speed/data_wait_fraction": wait / max(elapsed, 1e-9),
                    "memory/peak_mb": peak_memory_bytes(self.device) / 2**20,
                })
                if self.scaler is not None:
                    scalars["amp/grad_scale"] = float(self.scaler.get_scale())
                for name, optimizer in self.optimizers.items():
                    scalars[f"lr/{name}"] = optimizer.param_groups[0]["lr"]
                monitor.scalars(self.iteration, scalars)
                monitor.report(self.iteration, total, means, rate)
                sums, wait, compute = {}, 0.0, 0.0
                window_start, window_iters = time.perf_counter(), 0
            if info.is_main and (self.iteration % cfg.train.sample_every == 0 or self.iteration == total):
                self._sample_images(monitor, real, fixed_z, fixed_labels)
            if self.iteration % cfg.train.ckpt_every == 0 or self.iteration == total:
                path = self.save()
                monitor.message(f"checkpoint {path}")
            self._stop_on_signal(stop)


def train(cfg: TrainConfig, resume: str | None = None, fork: str | Path | None = None,
          allow_changes: bool = False) -> Path:
    """Train ``cfg``; under ``torchrun`` every rank calls this and they train data-parallel.

    Args:
        cfg: resolved config (``medvol.config.load_config``).
        resume: ``None`` (a new run; refused if ``cfg.train.out`` already holds one), a
            checkpoint file/run folder, or ``"auto"`` (the newest verified checkpoint in
            ``cfg.train.out``, skipping damaged newer ones with a warning; fresh when there is none).
            An explicit checkpoint older than the run's newest, or settings that differ from the
            run's config (other than ``history.FREE_KEYS``), are refused unless ``fork`` or
            ``allow_changes``.
        fork: a new run folder that starts from the ``resume`` checkpoint (copied in; with
            ``"auto"``, the newest of ``cfg.train.out``); the source run is only read.
        allow_changes: continue in place anyway: changed settings are recorded in
            ``history.jsonl`` and newer checkpoints moved to ``superseded/N/``.

    Returns:
        The run folder: ``config.yaml`` (``config.N.yaml`` when a later start resolved to
        another config), ``history.jsonl``, ``checkpoints/ckpt_*.pt`` (+ ``.sha256``), ``tb/``.

    Raises:
        MedvolError: bad data/checkpoint/config, a second run into one folder, a failed
            checkpoint write; :class:`TrainingDiverged` on a NaN/inf loss.
        TrainingInterrupted: SIGINT/SIGTERM; a checkpoint of the last completed iteration was
            written first (``exit_code`` 130 or 143).
    """
    fork_source = None
    if fork is not None:
        if allow_changes:
            raise MedvolError("--fork and --allow-changes exclude each other: a fork is a new run, "
                              "its changes are recorded anyway")
        fork_source = Path(cfg.train.out)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, out=str(fork)))
        if Path(fork).resolve() == fork_source.resolve():
            raise MedvolError(f"--fork {fork}: that is the run being forked; fork into a new folder")
    info = init_distributed(cfg.train.device)
    ok = False
    try:
        run_dir = Trainer(cfg, info, fork_source=fork_source, allow_changes=allow_changes).run(resume)
        ok = True
        return run_dir
    finally:
        if info.owns_group:
            import torch.distributed as dist

            if ok:
                dist.barrier()
            dist.destroy_process_group()

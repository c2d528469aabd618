"""Time and memory of the published training iteration beside ``medvol profile``, as ratios.

The published HA-GAN and CRF-GAN code is a ``train.py`` whose ``main()`` builds the networks and
runs the training loop on a CUDA GPU. medvol ships none of it: this tool imports the ``train.py``
of the user's own clone (``--published PATH``, one per repository) and runs its real ``main()``
loop, unchanged, in a fresh process, with:

- ``.cuda()`` of tensors and modules mapped to ``--device`` (cpu or cuda), ``nn.DataParallel``
  made a pass-through (one device), and on the CPU the ``torch.cuda`` memory calls made no-ops;
- the logging and figure libraries (tensorboardX, nibabel, nilearn, matplotlib) replaced by inert
  stand-ins, always (they only log), and skimage/sklearn where they are not installed (the loop
  never calls them);
- the dataset replaced by uniform noise in [-1, 1] of the training shape ``[B, 1, S, S, S]``,
  made on the device between iterations, so data loading is excluded on both sides (medvol's
  ``--data synthetic`` does the same).

The loop is timed from batch to batch (synchronised on CUDA) and stopped after ``warmup + iters``
iterations. Peak memory is measured the way ``medvol profile`` measures it
(:class:`medvol.profile.measure.PeakCounter`, reset once the networks and optimizers are built):
peak RSS above the idle process on the CPU, ``torch.cuda.max_memory_allocated`` on CUDA.

For every configuration the repetitions are interleaved, each in a fresh process: published,
medvol reference, medvol optimized, published, ... so that drift of the machine affects both
sides alike. Reported: medians over repetitions, and medvol/published ratios.

    python tools/bench_vs_published.py --published ~/src/CRF-GAN --size 64,128 --batch 2 \\
        --device cpu --reps 3 --out vs_published/

Writes ``vs_published.md``, ``vs_published.csv`` and ``vs_published.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.machinery
import importlib.util
import io
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("medvol") is None:  # run from a source tree without installing
    sys.path.insert(0, str(ROOT))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

from medvol.errors import MedvolError  # noqa: E402

MIB = 2**20
NAMES = {"hagan": "HA-GAN", "crfgan": "CRF-GAN"}
#: How each published repository names its per-size model file (models/<prefix><S>.py).
MODEL_FILES = {"crfgan": "CRF_GAN_", "hagan": "Model_HA_GAN_"}
#: Imported by the published train.py only to log and draw figures: always replaced.
LOGGING_MODULES = ("tensorboardX", "nibabel", "nilearn", "nilearn.plotting", "matplotlib",
                   "matplotlib.pyplot")
#: Imported by the published utils/dataset modules but never used by the loop: replaced if absent.
UNUSED_MODULES = ("skimage", "skimage.transform", "sklearn", "sklearn.model_selection")
MODES = ("reference", "optimized")


# --------------------------------------------------------------------------- the published side

class _Inert:
    """Stands in for anything of a stubbed library: every attribute and call gives another one."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> "_Inert":
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Inert(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs) -> "_Inert":
        return _Inert(f"{self._name}()")

    def __repr__(self) -> str:
        return f"<inert {self._name}>"


class _InertModule(types.ModuleType):
    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Inert(f"{self.__name__}.{attr}")


def install_stubs() -> list[str]:
    """Put inert modules into ``sys.modules`` (see the module docstring); returns their names."""
    names = list(LOGGING_MODULES)
    for name in UNUSED_MODULES:
        try:
            present = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a parent that is itself missing
            present = False
        if not present:
            names.append(name)
    for name in names:
        module = _InertModule(name)
        # A spec and an empty package path: importlib.util.find_spec (torch._dynamo calls it on
        # module names) then sees an installed package with no submodules.
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        module.__path__ = []
        sys.modules[name] = module
    for name in names:  # `import a.b` binds b on a
        parent, _, child = name.rpartition(".")
        if parent in sys.modules and isinstance(sys.modules[parent], _InertModule):
            setattr(sys.modules[parent], child, sys.modules[name])
    return names


def dataset_module(size: int) -> types.ModuleType:
    """A ``volume_dataset`` module whose ``Volume_Dataset`` yields noise volumes ``[1, S, S, S]``.

    The timed loop never reads it (batches come from :class:`TimedBatches`); the published
    ``main()`` still constructs it and a ``DataLoader`` over it, so it keeps their interface.
    """
    import numpy as np

    module = types.ModuleType("volume_dataset")

    class Volume_Dataset:  # noqa: N801 - the published name
        def __init__(self, data_dir=None, mode="train", fold=0, num_class=0):
            self.num_class = num_class

        def __len__(self) -> int:
            return 64

        def __getitem__(self, index):
            rng = np.random.default_rng(index)
            return rng.uniform(-1, 1, (1, size, size, size)).astype(np.float32), -1

    module.Volume_Dataset = Volume_Dataset
    return module


class _Enough(Exception):
    """Raised from the batch source to leave the published loop after the wanted iterations."""


class TimedBatches:
    """The published loop's ``gen_load``: each ``__next__`` closes the previous iteration.

    Times run from the moment a batch is handed over to the next request (synchronised on CUDA),
    so the batch's own making is excluded; the peak counter is reset at the first request (the
    networks and optimizers are built by then) and folded at every later one.
    """

    def __init__(self, batch: int, size: int, device, iterations: int, counter):
        self.shape = (batch, 1, size, size, size)
        self.device = device
        self.iterations = iterations
        self.counter = counter
        self.times: list[float] = []
        self.started: float | None = None

    def _sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __iter__(self):
        return self

    def __next__(self):
        import torch

        self._sync()
        now = time.perf_counter()
        if self.started is None:
            self.counter.reset()
        else:
            self.times.append(now - self.started)
            self.counter.fold()
        if len(self.times) >= self.iterations:
            raise _Enough
        real = torch.rand(self.shape, device=self.device).mul_(2).sub_(1)
        labels = torch.full((self.shape[0],), -1, dtype=torch.long)
        self._sync()
        self.started = time.perf_counter()
        return real, labels


@contextlib.contextmanager
def device_patches(device, wrapped: list | None = None) -> "contextlib.AbstractContextManager[list[str]]":
    """Map ``.cuda()`` to ``device`` and make the CUDA-only calls safe there; undone on exit.

    ``wrapped``: a list that receives every module the published code wraps in ``nn.DataParallel``
    (its networks, in the order it builds them).
    """
    import torch
    from torch import nn

    saved: list[tuple[object, str, object]] = []
    names: list[str] = []

    def patch(owner, attr, value, label):
        saved.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, value)
        names.append(label)

    patch(torch.Tensor, "cuda", lambda self, *a, **k: self.to(device), "Tensor.cuda")
    patch(nn.Module, "cuda", lambda self, *a, **k: self.to(device), "Module.cuda")

    class PassThrough(nn.Module):
        """``nn.DataParallel`` on one device: call the module (what DataParallel does there)."""

        def __init__(self, module, *args, **kwargs):
            super().__init__()
            self.module = module
            if wrapped is not None:
                wrapped.append(module)

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    patch(nn, "DataParallel", PassThrough, "nn.DataParallel")
    if device.type != "cuda":
        for attr in ("reset_peak_memory_stats", "reset_max_memory_allocated", "synchronize",
                     "empty_cache"):
            patch(torch.cuda, attr, lambda *a, **k: None, f"torch.cuda.{attr}")
    try:
        yield names
    finally:
        for owner, attr, value in reversed(saved):
            setattr(owner, attr, value)


def run_published(config: dict) -> dict:
    """Run the published ``main()`` of ``config["repo"]`` in this process; never raises.

    Args:
        config: ``repo``, ``model``, ``size``, ``batch``, ``device``, ``iters``, ``warmup``, ``seed``.

    Returns:
        ``status`` (ok / OOM / error), ``step_s`` (timed iterations), ``step_s_median``,
        ``peak_bytes``, ``device_name``, ``stubbed`` and ``patched`` (what was replaced).
    """
    import numpy as np
    import torch

    from medvol.profile.measure import PeakCounter, _load_kernels
    from medvol.profile.worker import device_name, is_oom

    device = torch.device(config["device"])
    result: dict = {"side": "published", "config": config, "status": "ok", "pid": os.getpid(),
                    "device_name": device_name(config["device"])}
    start = time.perf_counter()
    repo = Path(config["repo"]).resolve()
    cwd = os.getcwd()
    try:
        if device.type == "cuda":
            if device.index is None:
                device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(device)
        else:
            _load_kernels()  # the same idle baseline as medvol's CPU measurement
        counter = PeakCounter(device)
        result["stubbed"] = install_stubs()
        sys.modules["volume_dataset"] = dataset_module(config["size"])
        sys.path.insert(0, str(repo))
        np.random.seed(config["seed"])
        workdir = tempfile.mkdtemp(prefix="medvol-published-")
        exp = "bench_vs_published"
        os.makedirs(os.path.join(workdir, "checkpoint", exp))  # the published code writes there
        os.chdir(workdir)
        iterations = config["warmup"] + config["iters"]
        sys.argv = ["train.py", "--batch-size", str(config["batch"]), "--img-size", str(config["size"]),
                    "--num-iter", str(iterations + 1), "--workers", "0", "--data-dir", workdir + "/",
                    "--exp-name", exp]
        batches = TimedBatches(config["batch"], config["size"], device, iterations, counter)
        with device_patches(device) as patched:
            result["patched"] = patched
            spec = importlib.util.spec_from_file_location("published_train", repo / "train.py")
            train = importlib.util.module_from_spec(spec)
            with contextlib.redirect_stdout(io.StringIO()):  # its per-iteration prints
                spec.loader.exec_module(train)
                train.inf_train_gen = lambda loader: batches
                try:
                    train.main()
                except _Enough:
                    pass
        if len(batches.times) < iterations:
            raise RuntimeError(f"the published main() returned after {len(batches.times)} of "
                               f"{iterations} iterations")
        timed = batches.times[config["warmup"]:]
        counter.fold()
        result.update(step_s=timed, step_s_median=statistics.median(timed), peak_bytes=int(counter.peak))
    except BaseException as error:  # noqa: BLE001 - the worker reports everything as a result
        if isinstance(error, KeyboardInterrupt):
            raise
        result["status"] = "OOM" if is_oom(error) else "error"
        result["error"] = f"{type(error).__name__}: {error}".splitlines()[0][:500]
        if result["status"] == "error":
            result["traceback"] = traceback.format_exc()[-4000:]
    finally:
        os.chdir(cwd)
    result["wall_s"] = time.perf_counter() - start
    return result


def published_in_subprocess(config: dict, *, timeout: float | None = None) -> dict:
    """:func:`run_published` in a fresh ``python tools/bench_vs_published.py --worker`` process."""
    with tempfile.TemporaryDirectory(prefix="medvol-vs-published-") as tmp:
        config_file, result_file = Path(tmp, "config.json"), Path(tmp, "result.json")
        config_file.write_text(json.dumps(config), encoding="utf-8")
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(config_file),
                   "--result", str(result_file)]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"side": "published", "config": config, "status": "error",
                    "error": f"timed out after {timeout:g} s"}
        if result_file.exists():
            return json.loads(result_file.read_text(encoding="utf-8"))
        tail = " | ".join((proc.stderr or "").strip().splitlines()[-5:])
        killed = proc.returncode in (-9, 137)
        return {"side": "published", "config": config, "status": "OOM" if killed else "error",
                "error": f"worker exited {proc.returncode} without a result: {tail}"}


# --------------------------------------------------------------------------- learning side by side
#
# ``--learn``: the published main() trains for real on the phantom cache's training split, beside
# ``medvol train --mode reference`` at the same size, widths, latent, learning rates, batch and
# iterations; both are then sampled and scored alike (docs/published_side_by_side.md).

#: Published network classes -> medvol's group names.
NET_NAMES = {"Generator": "G", "Discriminator": "D", "Encoder": "E", "CRF": "crf", "Sub_Encoder": "sub_E"}
#: Published loss tags -> the names medvol logs for the same quantity.
LOSS_NAMES = {"D": "D", "D_real": "D_real", "D_fake": "D_fake", "G_fake": "G", "E": "E", "CRF": "crf",
              "Sub_E": "sub_E"}


class _ScalarLog:
    """Stands in for ``tensorboardX.SummaryWriter``: keeps every ``add_scalar``, ignores the rest."""

    scalars: dict[str, list[tuple[int, float]]] = {}

    def __init__(self, *args, **kwargs):
        pass

    def add_scalar(self, tag, value, step=None, *args, **kwargs):
        _ScalarLog.scalars.setdefault(str(tag), []).append((int(step), float(value)))

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Inert(f"SummaryWriter.{attr}")


class _WatchedNets(list):
    """The networks the published code wraps, each watched by a forward hook that records the first
    iteration (the number of ``D`` scalars logged so far) at which its output was not finite."""

    def __init__(self):
        super().__init__()
        self.first_nonfinite: dict[str, int] = {}

    def append(self, net) -> None:
        import torch

        name = type(net).__name__

        def hook(module, args, output):
            outputs = output if isinstance(output, (tuple, list)) else (output,)
            if name not in self.first_nonfinite and any(
                    torch.is_tensor(o) and not bool(torch.isfinite(o).all()) for o in outputs):
                self.first_nonfinite[name] = len(_ScalarLog.scalars.get("D", []))

        net.register_forward_hook(hook)
        super().append(net)


def published_widths(model: str, width: int) -> dict[str, dict[str, int]]:
    """Constructor defaults that give the published networks medvol's widths at base width ``width``.

    The published classes take their widths as keyword defaults sized for c = 32: G ``channel`` c,
    D ``channel`` 16c, E ``channel`` 2c (its output is G's 2c-channel embedding); HA-GAN's
    sub-encoder and D^L 8c (published: 256, whatever G's width).
    """
    widths = {"Generator": {"channel": width}, "Discriminator": {"channel": 16 * width},
              "Encoder": {"channel": 2 * width}}
    if model == "hagan":
        widths.update(Sub_Encoder={"channel": 8 * width}, Sub_Discriminator={"channel": 8 * width})
    return widths


@contextlib.contextmanager
def width_patches(model: str, size: int, width: int):
    """Give the published model module's classes ``width`` (:func:`published_widths`); undone on exit.

    Each class's constructor is wrapped to default to the new widths (the published ``main()``
    builds every network with the default width, and the published ``Discriminator`` builds
    ``Sub_Discriminator`` likewise). The published
    generators also reshape the first linear's output with a literal ``view(-1, 512, 4, 4, 4)``
    (512 = 16 x 32); a torch function mode maps that one call to ``16 * width`` channels.
    """
    import torch
    from torch.overrides import TorchFunctionMode

    module = importlib.import_module(f"models.{MODEL_FILES[model]}{size}")
    saved = {}
    for name, defaults in published_widths(model, width).items():
        cls = getattr(module, name, None)
        if cls is None:
            continue

        def init(self, *args, _init=cls.__init__, _defaults=defaults, **kwargs):
            _init(self, *args, **{**_defaults, **kwargs})

        # On the class itself, not a subclass: the published constructors call super(Name, self).
        saved[cls] = cls.__init__
        cls.__init__ = init

    class ViewWidth(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.Tensor.view and tuple(args[1:]) == (-1, 512, 4, 4, 4):
                args = (args[0], -1, 16 * width, 4, 4, 4)
            return func(*args, **(kwargs or {}))

    mode = ViewWidth() if width != 32 else contextlib.nullcontext()
    try:
        with mode:
            yield module
    finally:
        for cls, init in saved.items():
            cls.__init__ = init


def cache_dataset_module(cache: str, size: int) -> types.ModuleType:
    """A ``volume_dataset`` module whose ``Volume_Dataset`` yields the training split of a medvol
    cache (``[1, S, S, S]`` in [-1, 1], label -1): the volumes ``medvol train`` reads from it."""
    module = types.ModuleType("volume_dataset")

    class Volume_Dataset:  # noqa: N801 - the published name
        def __init__(self, data_dir=None, mode="train", fold=0, num_class=0):
            import numpy as np

            from medvol.config import DataConfig
            from medvol.train.data import build_dataset

            self.np = np
            self.items = build_dataset(DataConfig(source=cache, split="train", workers=0), size, dims=3)

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, index):
            return self.np.asarray(self.items[index]["image"], dtype=self.np.float32), -1

    module.Volume_Dataset = Volume_Dataset
    return module


def learn_published(config: dict) -> dict:
    """Train the published ``main()`` of ``config["repo"]`` on a cache and sample it; never raises.

    Args:
        config: ``repo``, ``model``, ``size``, ``batch``, ``iterations``, ``width``, ``latent``,
            ``lr_g``, ``lr_d``, ``lr_e``, ``seed``, ``cache``, ``n`` (samples), ``sample_seed``,
            ``out`` (folder for ``samples.npy``).

    Returns:
        ``status``, ``curves`` (published tag -> ``[(iteration, value)]``, every iteration),
        ``cpu_s`` and ``wall_s`` of the training, ``samples`` (path), ``parameters`` (per network
        class the published code wrapped, its parameter count).
    """
    import numpy as np
    import torch

    result: dict = {"side": "published", "config": config, "status": "ok", "pid": os.getpid()}
    repo = Path(config["repo"]).resolve()
    cwd = os.getcwd()
    try:
        torch.set_num_threads(1)
        device = torch.device("cpu")
        result["stubbed"] = install_stubs()
        sys.modules["tensorboardX"].SummaryWriter = _ScalarLog
        sys.modules["volume_dataset"] = cache_dataset_module(config["cache"], config["size"])
        sys.path.insert(0, str(repo))
        workdir = tempfile.mkdtemp(prefix="medvol-published-")
        exp = "learn_vs_published"
        os.makedirs(os.path.join(workdir, "checkpoint", exp))
        os.chdir(workdir)
        sys.argv = ["train.py", "--batch-size", str(config["batch"]), "--img-size", str(config["size"]),
                    "--num-iter", str(config["iterations"]), "--workers", "0", "--data-dir", workdir + "/",
                    "--exp-name", exp, "--latent-dim", str(config["latent"]), "--log-iter", "1",
                    "--lr-g", str(config["lr_g"]), "--lr-d", str(config["lr_d"]), "--lr-e", str(config["lr_e"])]
        nets = _WatchedNets()
        with device_patches(device, nets) as patched, \
                width_patches(config["model"], config["size"], config["width"]):
            result["patched"] = patched
            spec = importlib.util.spec_from_file_location("published_train", repo / "train.py")
            train = importlib.util.module_from_spec(spec)
            with contextlib.redirect_stdout(io.StringIO()):
                spec.loader.exec_module(train)
                torch.manual_seed(config["seed"])  # train.py seeds 0 at import; the run's seed instead
                np.random.seed(config["seed"])  # its crop positions
                start = time.perf_counter()
                cpu0 = time.process_time()
                train.main()
                result["cpu_s"] = round(time.process_time() - cpu0, 1)
                result["wall_s"] = round(time.perf_counter() - start, 1)
            generator = next(net for net in nets if type(net).__name__ == "Generator")
            generator.mode = "eval"  # the published switch to whole volumes
            z = torch.randn(config["n"], config["latent"], generator=torch.Generator().manual_seed(config["sample_seed"]))
            with torch.no_grad():
                samples = torch.cat([generator(z[i:i + 4]) for i in range(0, config["n"], 4)])
        expected = (config["n"], 1, *(3 * [config["size"]]))
        if tuple(samples.shape) != expected:
            raise RuntimeError(f"the published generator gave samples of shape {tuple(samples.shape)}, "
                               f"expected {expected}")
        result["first_nonfinite"] = nets.first_nonfinite
        # The curves first: they hold the training even when the samples are not finite.
        with open(Path(config["out"]) / "curves.json", "w", encoding="utf-8") as f:
            json.dump(_ScalarLog.scalars, f)
        path = Path(config["out"]) / "samples.npy"
        np.save(path, samples.float().numpy())
        parameters = {type(net).__name__: sum(p.numel() for p in net.parameters()) for net in nets}
        result.update(curves=_ScalarLog.scalars, samples=str(path), parameters=parameters)
    except BaseException as error:  # noqa: BLE001 - the worker reports everything as a result
        if isinstance(error, KeyboardInterrupt):
            raise
        result["status"] = "error"
        result["error"] = f"{type(error).__name__}: {error}".splitlines()[0][:500]
        result["traceback"] = traceback.format_exc()[-4000:]
    finally:
        os.chdir(cwd)
    return result


def medvol_learn_config(config: dict) -> dict:
    """The ``medvol train`` config of the same training (reference mode, fp32, one thread)."""
    lr = {"G": config["lr_g"], "D": config["lr_d"], "E": config["lr_e"]}
    lr.update({"crf": config["lr_d"]} if config["model"] == "crfgan" else {"sub_E": config["lr_e"]})
    return {
        "model": {"name": config["model"], "size": config["size"], "base_width": config["width"],
                  "latent_dim": config["latent"], "num_classes": 0},
        "data": {"source": config["cache"], "split": "train", "workers": 0, "batch": config["batch"]},
        "train": {"iterations": config["iterations"], "mode": "reference", "amp": "none", "seed": config["seed"],
                  "device": "cpu", "threads": 1, "lr": lr, "ckpt_every": config["iterations"],
                  "keep_checkpoints": 1, "log_every": config["log_every"], "sample_every": config["iterations"],
                  "progress": False, "out": str(Path(config["out"]) / "run")},
    }


def learn_medvol(config: dict) -> dict:
    """``medvol train`` of :func:`medvol_learn_config`, then ``n`` samples of its last checkpoint."""
    import resource

    import numpy as np
    import yaml

    sys.path.insert(0, str(ROOT / "tools"))
    import learn_check

    out = Path(config["out"])
    (out / "config.yaml").write_text(yaml.safe_dump(medvol_learn_config(config), sort_keys=False), encoding="utf-8")
    command = [*learn_check.medvol_command(), "train", "--config", str(out / "config.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(out / "train.log", "w", encoding="utf-8") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = {"side": "medvol", "config": config, "command": " ".join(command),
              "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
              "wall_s": round(time.perf_counter() - start, 1)}
    if code != 0:
        return {**result, "status": "error", "error": f"medvol train exited {code}; see {out / 'train.log'}"}
    samples, _, iteration = learn_check.generate(out / "run", config["n"], config["sample_seed"])
    np.save(out / "samples.npy", samples)
    from medvol.models import build

    counts = build(config["model"], config["size"], base_width=config["width"], latent_dim=config["latent"]).param_counts()
    result["parameters"] = {k: v for k, v in counts.items() if k != "total"}
    curves = learn_check.losses_from_log(out / "train.log")
    return {**result, "status": "ok", "iteration": iteration, "samples": str(out / "samples.npy"),
            "curves": {k: v for k, v in curves.items() if k in LOSS_NAMES.values()}}


def window_means(points: list, every: int) -> list[tuple[int, float]]:
    """Per-iteration values ``[(iteration, value)]`` (iterations from 0) as medvol logs them: at
    iteration ``k * every`` (1-based) the mean of the ``every`` values since the last log."""
    by_it = dict(points)
    out = []
    for end in range(every, max(by_it, default=-1) + 2, every):
        window = [by_it[i] for i in range(end - every, end) if i in by_it]
        if len(window) == every:
            out.append((end, sum(window) / every))
    return out


def learn_scores(samples: dict, config: dict) -> dict:
    """learn_check's scores and the factor metric of each side's samples, against the same real sets."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "tools"))
    import compare_seeds
    import learn_check

    from medvol.config import load_config

    cfg = load_config(None, [f"--model.name={config['model']}", f"--model.size={config['size']}",
                             f"--data.source={config['cache']}", "--data.split=train"])
    real = learn_check.real_items(cfg, config["n"], config["eval_seed"])
    train_set = learn_check.real_items(cfg, config["n"], None)
    scores = {}
    for side, fake in samples.items():
        numbers = {**learn_check.scores(fake, real, train_set),
                   **compare_seeds.factor_numbers(fake, real, config["size"])}
        numbers.update(numbers["prdc_pooled"])
        scores[side] = numbers
    return {"scores": scores, "real": real[:4].astype(np.float32)}


def curves_figure(path: Path, title: str, curves: dict[str, dict], every: int) -> None:
    """One panel per side, the same loss in the same colour, on one y scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in dict.fromkeys(LOSS_NAMES.values()) if any(n in c for c in curves.values())]
    colours = {n: f"C{i}" for i, n in enumerate(names)}
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.2), sharey=True, squeeze=False)
    for ax, (side, side_curves) in zip(axes[0], curves.items()):
        for name in names:
            if name in side_curves and side_curves[name]:
                it, value = zip(*side_curves[name])
                ax.plot(it, value, lw=1, label=name, color=colours[name])
        ax.set_title(side, fontsize=9)
        ax.set_xlabel("iteration")
        ax.legend(fontsize=7, ncol=3)
    axes[0, 0].set_ylabel(f"loss (mean of {every} iterations)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def samples_montage(path: Path, title: str, rows: dict, k: int = 4) -> None:
    """Columns: each set's central axial, coronal and sagittal slices; rows: ``k`` volumes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(k, 3 * len(rows), figsize=(2.6 * len(rows) + 1, 1.05 * k + 0.6), squeeze=False)
    for b, (name, vols) in enumerate(rows.items()):
        for i in range(k):
            vol = vols[i, 0] if vols.ndim == 5 else vols[i]
            m = vol.shape[0] // 2
            for j, im in enumerate((vol[m], vol[:, m], vol[:, :, m])):
                ax = axes[i, 3 * b + j]
                ax.imshow(im, cmap="gray", vmin=-1, vmax=1, origin="upper" if j == 0 else "lower")
                ax.set_xticks([]), ax.set_yticks([])
                if i == 0:
                    ax.set_title(f"{name}\n{('axial', 'coronal', 'sagittal')[j]}" if j == 1 else
                                 ("axial", "coronal", "sagittal")[j], fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


LEARN_COLUMNS = (("iteration", "iterations", 0), ("cpu_s", "training CPU s", 0),
                 ("ssim_pairwise_fake", "SSIM pairs", 3), ("fake_std_over_samples", "std over samples", 3),
                 ("precision", "precision", 2), ("recall", "recall", 2), ("coverage", "coverage", 2),
                 ("nn_train_fake", "nearest training", 2), ("factor_w1_mean", "factor W1/std (mean)", 2),
                 ("factor_w1_anatomy", "factor W1/std (anatomy)", 2),
                 ("mode_coverage", "mode coverage", 2))


def learn_markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"- Command: `{meta['command']}`", f"- Device: {meta['device_name']}; one thread per training, "
             f"one training at a time; 1-minute load {meta['load']}", f"- Date: {meta['date']}; medvol "
             f"{meta.get('medvol_commit') or 'unknown'}; published: "
             + "; ".join(f"{NAMES.get(m, m)} {c}" for m, c in meta.get("published_commits", {}).items()), "",
             "| model | code | seed | " + " | ".join(t for _, t, _ in LEARN_COLUMNS) + " |",
             "|---|---|---|" + "---|" * len(LEARN_COLUMNS)]
    for row in rows:
        for side in ("published", "medvol"):
            s = row[side]
            if s.get("status") != "ok":
                lines.append(f"| {NAMES[row['model']]} {row['size']}³ | {side} | {row['seed']} | {s.get('iteration') or '—'} "
                             f"| {s.get('cpu_s') if s.get('cpu_s') is not None else '—'} | {s.get('status')}: "
                             f"{s.get('error', '')} |")
                continue
            cells = ["—" if s.get(k) is None else f"{s[k]:,.{d}f}" for k, _, d in LEARN_COLUMNS]
            lines.append(f"| {NAMES[row['model']]} {row['size']}³ | {side} | {row['seed']} | " + " | ".join(cells) + " |")
    for row in rows:
        pub, mine = row["published"].get("parameters") or {}, row["medvol"].get("parameters") or {}
        if pub and mine:
            pairs = [f"{NET_NAMES.get(k, k)} {v:,} / {mine.get(NET_NAMES.get(k, k), 0):,}" for k, v in pub.items()]
            lines.append(f"\nParameters of {NAMES[row['model']]} {row['size']}³ seed {row['seed']} (published / medvol): "
                         + ", ".join(pairs))
    real = rows[0].get("real") if rows else None
    if real:
        lines += ["", f"Real (held-out phantoms): SSIM pairs {real['ssim_pairwise_real']:.3f}, std over samples "
                  f"{real['real_std_over_samples']:.3f}, nearest training {real['nn_train_heldout']:.2f}; factor W1/std "
                  f"floor {real['factor_floor_mean']:.2f} (anatomy {real['factor_floor_anatomy']:.2f}); training phantoms scored as samples: precision "
                  f"{real['prdc_pooled_train_items']['precision']:.2f}, recall {real['prdc_pooled_train_items']['recall']:.2f}, "
                  f"coverage {real['prdc_pooled_train_items']['coverage']:.2f}."]
    return "\n".join(lines) + "\n"


def learn_compare(repos: list[Path], *, cache: Path, sizes: list[int], batch: int, iterations: int,
                  width: int, latent: int, lr: tuple[float, float, float], seeds: list[int], n: int,
                  eval_seed: int, log_every: int, timeout: float | None, out: Path, command: str,
                  log: Callable[[str], None] = print, run_pub: Callable[[dict], dict] | None = None,
                  run_mv: Callable[[dict], dict] | None = None) -> dict:
    """Train each published repository and medvol's reference mode alike, score, draw; see ``--learn``.

    ``run_pub`` / ``run_mv`` default to the published worker process and :func:`learn_medvol`.
    """
    import datetime

    import numpy as np

    from medvol.utils import atomic_path

    run_pub = run_pub or (lambda config: published_in_subprocess(config, timeout=timeout))
    run_mv = run_mv or learn_medvol
    commits, rows, plan_ = {}, [], []
    for repo in repos:  # every repository and size checked before anything runs
        model = detect_model(repo)
        commits[model] = _git_commit(repo) or str(repo)
        usable = sorted(set(sizes) & set(published_sizes(repo, model)))
        if not usable:
            raise MedvolError(f"--size {','.join(map(str, sizes))}: the published {NAMES[model]} code at {repo} has "
                              f"models for sizes {', '.join(map(str, published_sizes(repo, model))) or 'none'}")
        plan_.append((repo, model, usable[0]))  # the smallest: the cheapest that the published code has
    out.mkdir(parents=True, exist_ok=True)
    loads = [round(os.getloadavg()[0], 1)]
    for repo, model, size in plan_:
        for seed in seeds:
            tag = f"{model}{size}_s{seed}"
            config = {"learn": True, "key": tag, "repo": str(repo), "model": model, "size": size, "batch": batch,
                      "iterations": iterations, "width": width, "latent": latent, "lr_g": lr[0], "lr_d": lr[1],
                      "lr_e": lr[2], "seed": seed, "cache": str(cache), "n": n, "sample_seed": 0,
                      "eval_seed": eval_seed, "log_every": log_every}
            sides = {}
            for side, runner in (("published", run_pub), ("medvol", run_mv)):
                folder = out / tag / side
                folder.mkdir(parents=True, exist_ok=True)
                result = runner({**config, "out": str(folder)})
                loads.append(round(os.getloadavg()[0], 1))
                log(f"{tag} {side}: {result['status']}" + (f", {result.get('cpu_s')} CPU s, {result.get('wall_s')} s wall"
                    if result["status"] == "ok" else f" ({result.get('error')})"))
                if result["status"] == "error" and result.get("traceback"):
                    log(result["traceback"])
                sides[side] = result
            row = {"model": model, "size": size, "seed": seed, "tag": tag}
            samples = {}
            for side, r in sides.items():
                if r["status"] == "ok":
                    values = np.load(r["samples"])
                    if np.isfinite(values).all():
                        samples[side] = values
                    else:  # a diverged training: reported with its curves, never scored
                        r.update(status="not finite", error=f"{int((~np.isfinite(values)).sum()):,} of "
                                 f"{values.size:,} sample voxels are NaN or inf; first non-finite output by "
                                 f"network (iteration): {r.get('first_nonfinite') or 'none seen'}")
                        log(f"{tag} {side}: {r['error']}")
            ok = {side: r for side, r in sides.items() if r["status"] in ("ok", "not finite")}
            scored = learn_scores(samples, config) if samples else {"scores": {}, "real": None}
            for side, r in sides.items():
                entry = {"status": r["status"], "error": r.get("error"), "cpu_s": r.get("cpu_s"),
                         "parameters": r.get("parameters"),
                         "wall_s": r.get("wall_s"), "iteration": r.get("iteration", iterations if r["status"] in ("ok", "not finite") else None)}
                entry.update({k: v for k, v in scored["scores"].get(side, {}).items()})
                row[side] = entry
            if scored["scores"]:
                first = next(iter(scored["scores"].values()))
                row["real"] = {k: first[k] for k in ("ssim_pairwise_real", "real_std_over_samples", "nn_train_heldout",
                                                      "prdc_pooled_train_items", "factor_floor_mean",
                                                      "factor_floor_anatomy")}
            curves = {}
            if "published" in ok:
                curves["published"] = {LOSS_NAMES.get(k, k): window_means(v, log_every)
                                       for k, v in ok["published"]["curves"].items()}
            if "medvol" in ok:
                curves["medvol reference"] = ok["medvol"]["curves"]
            row["curves"] = curves
            title = (f"{NAMES[model]} {size}³, width {width}, latent {latent}, batch {batch}, {iterations} iterations, "
                     f"seed {seed}")
            if curves:
                curves_figure(out / f"curves_{tag}.png", title, curves, log_every)
            if samples:
                samples_montage(out / f"montage_{tag}.png", title,
                                {"real (held-out)": scored["real"], **{f"{s} samples": v for s, v in samples.items()}})
            rows.append(row)
            meta = {"command": command, "device_name": "CPU (" + (os.uname().machine) + f", {os.cpu_count()} CPUs)",
                    "load": " → ".join(map(str, loads)), "medvol_commit": _git_commit(ROOT),
                    "published_commits": commits,
                    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
            with atomic_path(out / "learn_vs_published.md") as tmp:
                tmp.write_text(learn_markdown(rows, meta), encoding="utf-8")
            with atomic_path(out / "learn_vs_published.json") as tmp:
                tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=float), encoding="utf-8")
    return {"meta": meta, "rows": rows}


# --------------------------------------------------------------------------- the comparison

def detect_model(repo: Path) -> str:
    """``crfgan`` or ``hagan``, from the model files of a published clone.

    Raises:
        MedvolError: if ``repo`` has no ``train.py`` or neither kind of model file.
    """
    if not (repo / "train.py").is_file():
        raise MedvolError(f"--published {repo}: no train.py there (give the root of your clone of "
                          "the published CRF-GAN or HA-GAN repository)")
    found = [model for model, prefix in MODEL_FILES.items() if list((repo / "models").glob(prefix + "*.py"))]
    if len(found) != 1:
        raise MedvolError(f"--published {repo}: expected models/CRF_GAN_<S>.py or "
                          f"models/Model_HA_GAN_<S>.py, found {'both' if found else 'neither'}")
    return found[0]


def published_sizes(repo: Path, model: str) -> list[int]:
    sizes = []
    for path in (repo / "models").glob(MODEL_FILES[model] + "*.py"):
        tail = path.stem[len(MODEL_FILES[model]):]
        if tail.isdigit():
            sizes.append(int(tail))
    return sorted(sizes)


def plan(configs: list[dict], reps: int, modes: list[str]) -> list[tuple[str, dict, int]]:
    """The run order: per configuration, ``reps`` rounds of published then each medvol mode.

    Returns:
        ``(side, config, rep)`` triples, side ``"published"`` or a medvol mode.
    """
    return [(side, config, rep) for config in configs for rep in range(reps)
            for side in ["published", *modes]]


def run_medvol(config: dict, mode: str, *, timeout: float | None = None) -> dict:
    """``medvol profile``'s measurement of the same configuration (its fresh worker process)."""
    from medvol.profile.cases import Case
    from medvol.profile.runner import run_in_subprocess

    case = Case(model=config["model"], size=config["size"], batch=config["batch"], mode=mode,
                kind="measure", device=config["device"], iters=config["iters"],
                warmup=config["warmup"], base_width=config.get("base_width"), seed=config["seed"])
    result = run_in_subprocess(case, timeout=timeout)
    result["side"] = mode
    return result


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(configs: list[dict], results: list[dict], modes: list[str]) -> list[dict]:
    """One row per configuration: medians over repetitions of each side, and medvol/published."""
    rows = []
    for config in configs:
        key = config["key"]
        row = {"model": config["model"], "size": config["size"], "batch": config["batch"],
               "device": config["device"], "medvol_width": config.get("base_width") or 32}
        for side in ["published", *modes]:
            mine = [r for r in results if r.get("key") == key and r["side"] == side]
            ok = [r for r in mine if r["status"] == "ok"]
            times = [r["step_s_median"] for r in ok]
            row[f"{side}_s_it"] = _median(times)
            row[f"{side}_s_it_min"] = min(times) if times else None
            row[f"{side}_s_it_max"] = max(times) if times else None
            row[f"{side}_peak_mib"] = _median([r["peak_bytes"] / MIB for r in ok])
            row[f"{side}_runs"] = f"{len(ok)}/{len(mine)}"
            failed = [r for r in mine if r["status"] != "ok"]
            row[f"{side}_status"] = "ok" if not failed else f"{failed[0]['status']}: {failed[0].get('error', '')}"
        for mode in modes:
            for field in ("s_it", "peak_mib"):
                mine, theirs = row[f"{mode}_{field}"], row[f"published_{field}"]
                row[f"{mode}_{field}_ratio"] = mine / theirs if mine is not None and theirs else None
        rows.append(row)
    return rows


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}" if abs(value) < 1000 else f"{value:,.0f}"


def markdown(rows: list[dict], modes: list[str], meta: dict) -> str:
    lines = [f"- Device: {meta['device_name']}",
             f"- medvol commit: {meta.get('medvol_commit') or 'unknown'}; published: "
             + "; ".join(f"{NAMES.get(m, m)} {c}" for m, c in meta.get("published_commits", {}).items()),
             f"- {meta['reps']} interleaved repetition(s) (fresh processes), each the median of "
             f"{meta['iters']} timed iterations after {meta['warmup']} warm-up; medians over repetitions",
             f"- Date: {meta['date']}", f"- Command: `{meta['command']}`", "",
             "| model | size | batch | published s/it | published peak MiB | "
             + " | ".join(f"medvol {m} s/it | ×pub | {m} peak MiB | ×pub" for m in modes) + " |",
             "|---|---|---|---|---|" + "---|---|---|---|" * len(modes)]
    for row in rows:
        cells = [NAMES.get(row["model"], row["model"]), f"{row['size']}³", str(row["batch"]),
                 _fmt(row["published_s_it"]), _fmt(row["published_peak_mib"], 0)]
        for mode in modes:
            cells += [_fmt(row[f"{mode}_s_it"]), _fmt(row[f"{mode}_s_it_ratio"], 2) + "×",
                      _fmt(row[f"{mode}_peak_mib"], 0), _fmt(row[f"{mode}_peak_mib_ratio"], 2) + "×"]
        lines.append("| " + " | ".join(cells) + " |")
    problems = [f"- {NAMES.get(r['model'], r['model'])} {r['size']}³ b{r['batch']} {side}: {r[side + '_status']}"
                for r in rows for side in ["published", *modes] if r[f"{side}_status"] != "ok"]
    widths = {r["medvol_width"] for r in rows}
    if widths != {32}:
        lines += ["", f"medvol ran at base width {', '.join(map(str, sorted(widths)))}, the published "
                  "code at its own: these ratios test the tool, not the models."]
    if problems:
        lines += ["", "Failed runs:", *problems]
    return "\n".join(lines) + "\n"


def _git_commit(path: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def write_outputs(out: Path, rows: list[dict], results: list[dict], modes: list[str], meta: dict) -> None:
    from medvol.utils import atomic_path

    out.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, modes, meta)
    with atomic_path(out / "vs_published.md") as tmp:
        tmp.write_text(text, encoding="utf-8")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["model"])
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(out / "vs_published.csv") as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    with atomic_path(out / "vs_published.json") as tmp:
        tmp.write_text(json.dumps({"meta": meta, "rows": rows, "results": results}, indent=1), encoding="utf-8")


def compare(repos: list[Path], *, sizes: list[int], batches: list[int], device: str, reps: int,
            iters: int, warmup: int, modes: list[str], base_width: int | None, seed: int,
            timeout: float | None, out: Path, command: str, log: Callable[[str], None] = print,
            run_pub: Callable[[dict], dict] | None = None,
            run_mv: Callable[[dict, str], dict] | None = None) -> dict:
    """Run the interleaved comparison and write its tables; returns ``{"meta", "rows", "results"}``.

    ``run_pub`` and ``run_mv`` default to the fresh-process runners; tests pass their own.
    """
    import datetime

    from medvol.profile.worker import device_name

    run_pub = run_pub or (lambda config: published_in_subprocess(config, timeout=timeout))
    run_mv = run_mv or (lambda config, mode: run_medvol(config, mode, timeout=timeout))
    configs, commits = [], {}
    for repo in repos:
        model = detect_model(repo)
        commits[model] = _git_commit(repo) or str(repo)
        available = published_sizes(repo, model)
        for size in sizes:
            if size not in available:
                raise MedvolError(f"--size {size}: the published {NAMES[model]} code at {repo} has "
                                  f"models for sizes {', '.join(map(str, available)) or 'none'}")
            for batch in batches:
                configs.append({"key": f"{model}-{size}-{batch}", "repo": str(repo), "model": model,
                                "size": size, "batch": batch, "device": device, "iters": iters,
                                "warmup": warmup, "seed": seed, "base_width": base_width})
    meta = {"command": command, "device_name": device_name(device), "reps": reps, "iters": iters,
            "warmup": warmup, "medvol_commit": _git_commit(ROOT), "published_commits": commits,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    results: list[dict] = []
    order = plan(configs, reps, modes)
    for index, (side, config, rep) in enumerate(order, 1):
        result = run_pub(config) if side == "published" else run_mv(config, side)
        result.update(key=config["key"], rep=rep, side=side)
        results.append(result)
        status = (f"{result['step_s_median']:.3f} s/it, peak {result['peak_bytes'] / MIB:,.0f} MiB"
                  if result["status"] == "ok" else f"{result['status']} ({result.get('error', '')})")
        log(f"[{index}/{len(order)}] {config['key']} rep {rep + 1} {side}: {status}")
        if result["status"] == "error" and result.get("traceback"):
            log(result["traceback"])
        # Rewritten after every run: a comparison stopped by a timeout keeps what it measured.
        write_outputs(out, summarise(configs, results, modes), results, modes, meta)
    rows = summarise(configs, results, modes)
    write_outputs(out, rows, results, modes, meta)
    return {"meta": meta, "rows": rows, "results": results}


def _ints(text: str, option: str) -> list[int]:
    from medvol.profile.cases import parse_list

    return parse_list(text, option, kind=int)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--published", action="append", default=[], metavar="PATH",
                        help="root of a clone of the published CRF-GAN or HA-GAN code (repeatable)")
    parser.add_argument("--size", default="64,128", help="comma list of volume sizes")
    parser.add_argument("--batch", default="2", help="comma list of batch sizes")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--mode", default="reference,optimized", help="medvol modes to compare")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (fresh processes)")
    parser.add_argument("--iters", type=int, default=2, help="timed iterations per process (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    parser.add_argument("--base-width", type=int, default=None,
                        help="medvol's generator width (tests only; the published code has 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per process")
    parser.add_argument("--out", help="output folder")
    learn = parser.add_argument_group("--learn: train both codes on phantoms and compare what they learn")
    learn.add_argument("--learn", action="store_true", help="train the published code and medvol's reference "
                       "mode alike on --cache, then compare loss curves, samples and scores (per model, the "
                       "smallest --size its published code has)")
    learn.add_argument("--cache", help="medvol preprocessing cache of phantoms (its train split is trained on)")
    learn.add_argument("--iterations", type=int, default=300)
    learn.add_argument("--latent", type=int, default=1024, help="latent length (published: 1024)")
    learn.add_argument("--lr-g", type=float, default=1e-4)
    learn.add_argument("--lr-d", type=float, default=4e-4)
    learn.add_argument("--lr-e", type=float, default=1e-4)
    learn.add_argument("--seeds", default="0", help="comma list of training seeds")
    learn.add_argument("--n", type=int, default=16, help="samples scored per side")
    learn.add_argument("--eval-seed", type=int, default=1000, help="phantom seed of the held-out real set")
    learn.add_argument("--log-every", type=int, default=10, help="iterations averaged per loss point")
    args = parser.parse_args(argv)
    if args.worker:
        config = json.loads(Path(args.worker).read_text(encoding="utf-8"))
        result = learn_published(config) if config.get("learn") else run_published(config)
        from medvol.utils import atomic_path

        with atomic_path(args.result) as tmp:
            tmp.write_text(json.dumps(result, indent=1), encoding="utf-8")
        return 0 if result["status"] != "error" else 1
    try:
        from medvol.profile.cases import parse_list

        if not args.published:
            raise MedvolError("--published PATH is required (your clone of the published code)")
        if not args.out:
            raise MedvolError("--out is required")
        if args.learn:
            return _learn_main(args, argv, parse_list)
        if args.reps < 1 or args.iters < 1 or args.warmup < 0:
            raise MedvolError("--reps and --iters must be >= 1, --warmup >= 0")
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device.split(":")[0] not in ("cpu", "cuda"):
            raise MedvolError(f"--device: {device!r} is not cpu or cuda")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise MedvolError("--device cuda: CUDA is not available on this machine")
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise MedvolError(f"--out {out}: exists and is not a folder")
        command = "python tools/bench_vs_published.py " + " ".join(
            shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
        report = compare([Path(p).expanduser() for p in args.published], sizes=_ints(args.size, "--size"),
                         batches=_ints(args.batch, "--batch"), device=device, reps=args.reps,
                         iters=args.iters, warmup=args.warmup,
                         modes=parse_list(args.mode, "--mode", allowed=MODES), base_width=args.base_width,
                         seed=args.seed, timeout=args.timeout, out=out, command=command, log=print)
    except MedvolError as error:
        print(f"bench_vs_published: error: {error}", file=sys.stderr)
        return 2
    print()
    print(markdown(report["rows"], parse_list(args.mode, "--mode"), report["meta"]))
    print(f"wrote {out}/vs_published.md, vs_published.csv, vs_published.json")
    failed = [r for r in report["results"] if r["status"] == "error"]
    return 1 if failed else 0


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise MedvolError(f"--seeds {text!r}: expected a comma list of integers") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise MedvolError(f"--seeds {text!r}: expected distinct integers >= 0")
    return seeds


def _learn_main(args, argv, parse_list) -> int:
    if not args.cache or not (Path(args.cache) / "manifest.json").is_file():
        raise MedvolError(f"--learn needs --cache CACHE, a medvol preprocessing cache (no manifest.json in {args.cache})")
    if args.iterations < 1 or args.n < 6 or args.log_every < 1 or args.latent < 1:
        raise MedvolError("--iterations and --latent must be >= 1, --n >= 6 (precision/recall use k = 5), "
                          "--log-every >= 1")
    width = args.base_width or 32
    if width % 8:
        raise MedvolError(f"--base-width {width}: the published networks' GroupNorm(8) needs a multiple of 8")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise MedvolError(f"--out {out}: exists and is not a folder")
    command = "python tools/bench_vs_published.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    report = learn_compare([Path(p).expanduser() for p in args.published], cache=Path(args.cache).resolve(),
                           sizes=_ints(args.size, "--size"), batch=_ints(args.batch, "--batch")[0],
                           iterations=args.iterations, width=width, latent=args.latent,
                           lr=(args.lr_g, args.lr_d, args.lr_e), seeds=_seeds(args.seeds), n=args.n,
                           eval_seed=args.eval_seed, log_every=args.log_every, timeout=args.timeout, out=out,
                           command=command)
    print((out / "learn_vs_published.md").read_text(encoding="utf-8"))
    failed = [r for row in report["rows"] for r in (row["published"], row["medvol"]) if r["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    from medvol.utils import console_safe

    console_safe()
    sys.exit(main())

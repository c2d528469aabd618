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
def device_patches(device) -> "contextlib.AbstractContextManager[list[str]]":
    """Map ``.cuda()`` to ``device`` and make the CUDA-only calls safe there; undone on exit."""
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
    args = parser.parse_args(argv)
    if args.worker:
        result = run_published(json.loads(Path(args.worker).read_text(encoding="utf-8")))
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


if __name__ == "__main__":
    from medvol.utils import console_safe

    console_safe()
    sys.exit(main())

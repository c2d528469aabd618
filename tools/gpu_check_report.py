"""The Python half of ``tools/gpu_check.sh``: the build check, the estimate grid, the summary.

Subcommands (each writes only under its ``--out``):

``build``
    Does the carried ``medvol/_C*.so`` fit this machine, without compiling anything? Compares
    the build record that ``tools/prepare_gpu_check.sh`` wrote (torch and CUDA versions, Python
    ABI, the library's sha256) with this interpreter, reads the GPU code the library holds from
    its ``.nv_fatbin`` ELF section (cubins per sm_XY, PTX), checks the GPU's compute capability is
    covered, then loads the library and runs both CUDA ops once against their references.
    Writes ``build.json`` and ``build.md``; exit 1 when the build does not fit.
``estimate``
    The fake-tensor estimate grid (``medvol profile --estimate`` minus the measurement), so it
    can run on the host's CPU while the GPU measures; its autocast rules are the device's.
``summary``
    ``summary.md``: one page with each part's exit status and time, the build verdict and the
    headline tables; regenerates the profile tables from a ``profile.json`` a timeout cut short,
    and puts the estimate beside the measured peaks.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.util
import json
import os
import platform
import struct
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("medvol") is None:
    sys.path.insert(0, str(ROOT))

MIB = 2**20
RECORD = ROOT / ".gpu_deps" / "build_record.json"
#: Part name -> what it is, in run order (tools/gpu_check.sh runs them under these names).
PARTS = {
    "build": "carried CUDA build matches this GPU (no compiling)",
    "pytest": "pytest -m gpu",
    "bench_meanfield_crf": "tools/bench_meanfield_crf.py",
    "bench_upsample_conv": "tools/bench_upsample_conv.py",
    "estimate": "fake-tensor estimate grid (on the host CPU, in parallel)",
    "profile_hagan": "medvol profile HA-GAN grid",
    "profile_crfgan": "medvol profile CRF-GAN grid",
    "budget_12gib": "12 GiB budget at 256³ batch 6",
    "profile_512": "512³ batch 1, optimized",
    "vs_published": "published code beside medvol",
    "learn_data": "phantom cache for the learning check (on the host CPU, in parallel)",
    "learn128": "learning check: a learned-style config trained, sampled and scored at 128³",
    "learn32": "learning check (dry run: 32³, 3 iterations)",
}


def _write(path: Path, text: str) -> None:
    from medvol.utils import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- build check

def fatbin_entries(path: Path) -> list[tuple[str, int]]:
    """``(kind, arch)`` of every entry of the library's CUDA fat binary: kind ``"elf"`` (a cubin
    for sm_<arch>) or ``"ptx"``; empty when it has no ``.nv_fatbin`` section (a CPU-only build).

    Reads the ELF64 section table, then the fat-binary containers (magic 0xBA55ED50: a 16-byte
    header, then entries whose own header gives its size, the payload's size, and at byte 28
    the arch as major*10 + minor). The layout is NVIDIA's, undocumented but stable since CUDA 9;
    ``cuobjdump --list-elf`` prints the same, where it is installed.
    """
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return []
    shoff, = struct.unpack_from("<Q", data, 0x28)
    entsize, count, names = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", data, shoff + i * entsize) for i in range(count)]
    strtab = sections[names][4]
    found: list[tuple[str, int]] = []
    for name, _type, _flags, _addr, offset, size in sections:
        end_name = data.index(b"\0", strtab + name)
        if data[strtab + name:end_name] != b".nv_fatbin":
            continue
        pos, stop = offset, offset + size
        while pos + 16 <= stop:
            magic, _version, header, fat = struct.unpack_from("<IHHQ", data, pos)
            if magic != 0xBA55ED50:
                pos += 8  # containers are 8-byte aligned
                continue
            entry, end = pos + header, pos + header + fat
            while entry + 32 <= end:
                kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, entry)
                arch, = struct.unpack_from("<I", data, entry + 28)
                found.append(({1: "ptx", 2: "elf"}.get(kind, str(kind)), int(arch)))
                if entry_header == 0:
                    break
                entry += entry_header + payload
            pos = end
    return found


def covers(entries: list[tuple[str, int]], capability: tuple[int, int]) -> str | None:
    """How the library's GPU code runs on a GPU of ``capability``, or None if it cannot.

    A cubin for sm_XY runs on sm_XZ with Z >= Y (same major); PTX of arch A is compiled by the
    driver (once, at load: not by medvol) for any GPU >= A.
    """
    major, minor = capability
    arch = 10 * major + minor
    cubins = sorted(a for kind, a in entries if kind == "elf" and a // 10 == major and a % 10 <= minor)
    if cubins:
        return f"cubin sm_{cubins[-1]}"
    ptx = sorted(a for kind, a in entries if kind == "ptx" and a <= arch)
    if ptx:
        return f"PTX compute_{ptx[-1]} (the driver compiles it at first load)"
    return None


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _op_checks(verdict: dict) -> None:
    """Run each CUDA op once beside its reference (no compiling: the library must hold them)."""
    import torch

    from medvol.ops import _loader
    from medvol.ops.meanfield_crf import meanfield_crf, meanfield_crf_reference
    from medvol.ops.upsample_conv import upsample_conv3d, upsample_conv3d_reference

    reason = _loader._load_installed()
    verdict["loaded"] = reason is None
    if reason:
        verdict["problems"].append(reason)
        return
    verdict["cuda_kernels_registered"] = _loader._has_kernel("CUDA")
    if not verdict["cuda_kernels_registered"]:
        verdict["problems"].append("medvol._C was loaded but registers no CUDA kernels")
        return
    torch.manual_seed(0)
    checks = verdict["op_checks"] = {}
    device = torch.device("cuda")
    feats = torch.randn(2, 8, 96, device=device, dtype=torch.float64)
    unary, compat = torch.randn(2, 8, device=device, dtype=torch.float64), torch.randn(8, 8, device=device, dtype=torch.float64)
    # both forms the CUDA kernel computes: the published one (self-pairs, eps) and self_pairs=False
    for name, options in (("meanfield_crf", dict(self_pairs=True, eps=1e-6)),
                          ("meanfield_crf_no_self_pairs", dict(self_pairs=False, eps=0.0))):
        try:
            got = meanfield_crf(feats.float(), unary.float(), compat.float(), 10, backend="cuda", **options)
            want = meanfield_crf_reference(feats, unary, compat, 10, **options)
            checks[name] = float((got.double() - want).abs().max())
        except Exception as error:  # noqa: BLE001 - recorded, not raised
            checks[name] = f"{type(error).__name__}: {error}".splitlines()[0][:300]
    try:
        x = torch.randn(1, 4, 3, 4, 5, device=device, dtype=torch.float64)
        weight, bias = torch.randn(2, 4, 3, 3, 3, device=device, dtype=torch.float64), torch.randn(2, device=device, dtype=torch.float64)
        got = upsample_conv3d(x.float(), weight.float(), bias.float(), backend="cuda")
        checks["upsample_conv3d"] = float((got.double() - upsample_conv3d_reference(x, weight, bias)).abs().max())
    except Exception as error:  # noqa: BLE001
        checks["upsample_conv3d"] = f"{type(error).__name__}: {error}".splitlines()[0][:300]
    for name, value in checks.items():
        if isinstance(value, str):
            verdict["problems"].append(f"{name} on CUDA: {value}")
        elif value > 1e-3:
            verdict["problems"].append(f"{name} on CUDA differs from its reference by {value:.3g}")


def build_check(dry_run: bool) -> dict:
    """The build verdict as a dict (``fits``: bool, ``problems``: why not)."""
    import torch

    verdict: dict = {"problems": [], "notes": [], "python": platform.python_version(),
                     "ext_suffix": sysconfig.get_config_var("EXT_SUFFIX"), "torch": torch.__version__,
                     "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    libraries = sorted((ROOT / "medvol").glob("_C*.so"))
    verdict["library"] = str(libraries[0].relative_to(ROOT)) if libraries else None
    if not libraries:
        verdict["problems"].append("no medvol/_C*.so: run tools/prepare_gpu_check.sh here and carry it")
    else:
        library = libraries[0]
        if not library.name.endswith(verdict["ext_suffix"] or ".so"):
            verdict["problems"].append(f"{library.name} is for another Python than this {verdict['python']} "
                                       f"({verdict['ext_suffix']}): it will not be found")
        verdict["fatbin"] = [f"{kind} {arch}" for kind, arch in fatbin_entries(library)]
        if not verdict["fatbin"]:
            # A dry run checks the wiring on a CPU machine, whose build may be CPU-only.
            (verdict["notes"] if dry_run else verdict["problems"]).append(
                f"{library.name} holds no CUDA code (built without nvcc?)")
        if RECORD.exists():
            record = json.loads(RECORD.read_text(encoding="utf-8"))
            verdict["record"] = record
            for key, here in (("torch", verdict["torch"]), ("torch_cuda", verdict["torch_cuda"]),
                              ("ext_suffix", verdict["ext_suffix"])):
                if record.get(key) != here:
                    verdict["problems"].append(f"built with {key} {record.get(key)}, running {here}")
            if record.get("sha256") != _sha256(library):
                verdict["problems"].append(f"{library.name} is not the library the record describes "
                                           "(rebuilt or replaced after tools/prepare_gpu_check.sh)")
        else:
            verdict["notes"].append(f"no build record ({RECORD.relative_to(ROOT)}): versions not compared")
    if torch.cuda.is_available():
        capability = torch.cuda.get_device_capability()
        verdict["gpu"] = torch.cuda.get_device_name()
        verdict["capability"] = f"{capability[0]}.{capability[1]}"
        entries = [(item.split()[0], int(item.split()[1])) for item in verdict.get("fatbin", [])]
        how = covers(entries, capability)
        verdict["runs_as"] = how
        if how is None and entries:
            verdict["problems"].append(f"the library has no code for sm_{capability[0]}{capability[1]} "
                                       f"(it holds {', '.join(verdict['fatbin'])})")
        if libraries:
            _op_checks(verdict)
    elif dry_run:
        verdict["notes"].append("dry run without CUDA: GPU coverage and the CUDA op calls not checked")
    else:
        verdict["problems"].append("CUDA is not available in this process")
    verdict["fits"] = not verdict["problems"]
    return verdict


def build_markdown(verdict: dict) -> str:
    lines = ["# Carried CUDA build", "",
             f"**{'fits this machine' if verdict['fits'] else 'DOES NOT FIT'}**", "",
             f"- library: {verdict.get('library')}; GPU code: {', '.join(verdict.get('fatbin', [])) or 'none'}",
             f"- here: Python {verdict['python']} ({verdict['ext_suffix']}), torch {verdict['torch']} "
             f"(CUDA {verdict['torch_cuda']}), GPU {verdict.get('gpu', 'none')} "
             f"(capability {verdict.get('capability', '—')}), runs as {verdict.get('runs_as') or '—'}"]
    record = verdict.get("record")
    if record:
        lines.append(f"- built: torch {record.get('torch')} (CUDA {record.get('torch_cuda')}), nvcc "
                     f"{record.get('nvcc')}, Python {record.get('python')}, commit {record.get('commit')}, "
                     f"{record.get('date')}")
    for name, value in verdict.get("op_checks", {}).items():
        lines.append(f"- {name} backend=cuda vs float64 reference: "
                     + (f"max |diff| {value:.2e}" if isinstance(value, float) else value))
    lines += [f"- problem: {p}" for p in verdict["problems"]] + [f"- note: {n}" for n in verdict["notes"]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- estimate grid

def estimate_grid(args) -> int:
    from medvol.profile.cases import grid, parse_list
    from medvol.profile.runner import run_profile

    cases = grid(parse_list(args.model, "--model"), parse_list(args.size, "--size", kind=int),
                 parse_list(args.batch, "--batch", kind=int), parse_list(args.mode, "--mode"),
                 kind="estimate", device=args.device, base_width=args.base_width)
    run_profile(cases, args.out, command="tools/gpu_check_report.py estimate " + " ".join(sys.argv[2:]),
                timeout=args.timeout)
    return 0


# --------------------------------------------------------------------------- summary

def _read_status(out: Path) -> list[dict]:
    rows = []
    path = out / "status.tsv"
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            name, status, rc, seconds, limit, command = (line.split("\t") + [""] * 6)[:6]
            rows.append({"part": name, "status": status, "rc": rc, "seconds": seconds,
                         "limit": limit, "command": command})
    return rows


def _load_profile(folder: Path) -> dict | None:
    path = folder / "profile.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def _ensure_tables(folder: Path, report: dict) -> None:
    """A part cut short by its timeout leaves profile.json (rewritten after every case) but no
    tables: write them from what it measured."""
    from medvol.profile.report import write_outputs

    if not (folder / "profile.md").exists() and report.get("results"):
        names = {r.get("device_name") for r in report["results"] if r.get("device_name")}
        report["meta"].setdefault("device", " + ".join(sorted(names)) or "unknown")
        write_outputs(report, folder)


def _headline(report: dict) -> list[str]:
    lines = ["| configuration | status | s/it | peak MiB | reserved MiB |", "|---|---|---|---|---|"]
    for r in report["results"]:
        c = r["case"]
        label = f"{c['model']} {c['size']}³ b{c['batch']} {c['mode']}"
        if r["status"] != "ok":
            lines.append(f"| {label} | {r['status']} ({(r.get('error') or '')[:80]}) | | | |")
            continue
        reserved = r.get("peak_reserved_bytes")
        lines.append(f"| {label} | ok | {r['step_s_median']:.3f} | {r['peak_bytes'] / MIB:,.0f} | "
                     + (f"{reserved / MIB:,.0f} |" if reserved else "— |"))
    return lines


def summary(out: Path) -> int:
    from medvol.profile.report import write_outputs

    status = _read_status(out)
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8")) if (out / "meta.json").exists() else {}
    lines = [f"# GPU check{' (dry run on the CPU)' if meta.get('dry_run') else ''}", "",
             f"- Date: {meta.get('date', '?')}; host {platform.node()}; device {meta.get('device', '?')}",
             f"- medvol commit {meta.get('commit', '?')}; command `{meta.get('command', '?')}`",
             f"- Total {meta.get('elapsed_s', '?')} s of a {meta.get('budget_s', '?')} s budget", "",
             "## Parts", "", "| part | what | status | exit | seconds | limit s |", "|---|---|---|---|---|---|"]
    for row in status:
        lines.append(f"| {row['part']} | {PARTS.get(row['part'], '')} | {row['status']} | {row['rc']} | "
                     f"{row['seconds']} | {row['limit']} |")
    build = out / "build" / "build.json"
    if build.exists():
        verdict = json.loads(build.read_text(encoding="utf-8"))
        lines += ["", "## Build", "", build_markdown(verdict).split("\n", 2)[2].strip()]
    measured: list[dict] = []
    for name in ("profile_hagan", "profile_crfgan", "budget_12gib", "profile_512"):
        report = _load_profile(out / name)
        if report is None:
            continue
        _ensure_tables(out / name, report)
        lines += ["", f"## {PARTS[name]} (`{name}/profile.md`)", "", *_headline(report)]
        if name.startswith("profile_") and name != "profile_512":
            measured += report["results"]
    estimate = _load_profile(out / "estimate")
    if estimate is not None and measured:
        merged = {"meta": dict(estimate["meta"], command="merged by tools/gpu_check_report.py"),
                  "results": measured + estimate["results"], "max_batch": []}
        names = {r.get("device_name") for r in measured if r.get("device_name")}
        merged["meta"]["device"] = " + ".join(sorted(names)) or "unknown"
        write_outputs(merged, out / "estimate_vs_measured")
        from medvol.profile.report import _estimate_vs_measured

        table = _estimate_vs_measured(merged)
        lines += ["", "## Estimate beside measured peak (`estimate_vs_measured/profile.md`)", "",
                  *(table[2:] if table else ["No configuration has both an estimate and a measurement."])]
    vs = out / "vs_published" / "vs_published.md"
    if vs.exists():
        lines += ["", "## Published code beside medvol", "", vs.read_text(encoding="utf-8").strip()]
    learn = out / "learn" / "learn.md"
    if learn.exists():
        lines += ["", "## Does it learn? (`learn/`)", "", learn.read_text(encoding="utf-8").strip()]
        for name, what in (("montage.png", "real phantoms beside samples"), ("losses.png", "the logged losses")):
            if (out / "learn" / name).exists():
                lines += ["", f"![{what}](learn/{name})"]
    benches = [p for p in sorted((out / "bench").glob("*.md"))] if (out / "bench").exists() else []
    if benches:
        lines += ["", "## Kernel benchmarks", ""] + [f"- `bench/{p.name}`" for p in benches]
    lines += ["", "Logs of every part: `logs/<part>.log`."]
    _write(out / "summary.md", "\n".join(lines) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--dry-run", action="store_true")
    p = sub.add_parser("estimate")
    for name, default in (("--model", "hagan,crfgan"), ("--size", "128,256"), ("--batch", "2,4,6"),
                          ("--mode", "reference,optimized"), ("--device", "cuda")):
        p.add_argument(name, default=default)
    p.add_argument("--base-width", type=int, default=None)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--out", required=True)
    p = sub.add_parser("summary")
    p.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    if args.command == "build":
        verdict = build_check(args.dry_run)
        verdict["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        _write(args.out / "build.json", json.dumps(verdict, indent=1))
        _write(args.out / "build.md", build_markdown(verdict))
        print(build_markdown(verdict))
        return 0 if verdict["fits"] else 1
    if args.command == "estimate":
        return estimate_grid(args)
    return summary(args.out)


if __name__ == "__main__":
    from medvol.utils import console_safe

    console_safe()
    sys.exit(main())

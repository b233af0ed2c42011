"""Build the clusiam_fast._C extension.

The C++ CPU kernels are always built. The CUDA kernels are built when a CUDA
toolkit is found (CUDA_HOME or nvcc on PATH). Knobs (environment variables):

  CLUSIAM_FAST_CUDA=0     skip the CUDA kernels
  CLUSIAM_FAST_CUDA=1     require them: fail when no CUDA toolkit is found
  TORCH_CUDA_ARCH_LIST    GPU architectures (default "8.0;9.0")
  MAX_JOBS                parallel compile jobs (ninja)
"""

import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def want_cuda():
    from torch.utils.cpp_extension import CUDA_HOME

    flag = os.environ.get("CLUSIAM_FAST_CUDA", "auto").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return False
    have = CUDA_HOME is not None and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))
    if flag in ("1", "true", "yes", "on") and not have:
        raise RuntimeError(
            "CLUSIAM_FAST_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME to the "
            "toolkit (e.g. CUDA_HOME=/usr/local/cuda) or use CLUSIAM_FAST_CUDA=0."
        )
    return have


def pip_cuda_includes():
    """Headers of the CUDA libraries that torch's wheels install (nvidia/cu*/include),
    for toolkits that ship without them (cuBLAS, cuSPARSE...)."""
    try:
        import nvidia
    except ImportError:
        return []
    roots = [p for base in nvidia.__path__ for p in glob.glob(os.path.join(base, "cu*", "include"))]
    return sorted(roots)


def extension():
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    cxx = ["-O3", "-fvisibility=hidden", "-fopenmp", "-Wno-psabi"]  # OpenMP: at::parallel_for runs serially without it
    link = ["-fopenmp"]
    if want_cuda():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        nvcc = ["-O3", "-lineinfo", "--threads", "2"]
        return CUDAExtension(
            "clusiam_fast._C",
            sources + rel("csrc/cuda/*.cu"),
            include_dirs=pip_cuda_includes(),
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=link,
            py_limited_api=False,
        )
    return CppExtension("clusiam_fast._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link)


def build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=True)


setup(ext_modules=[extension()], cmdclass={"build_ext": build_ext_class()})

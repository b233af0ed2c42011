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
import re
import subprocess

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


def git_commit():
    """The commit the sources are at (with -dirty for local changes), or None outside a git checkout."""
    git = lambda *args: subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    try:
        head = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "csrc", "setup.py").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return None if head.returncode else head.stdout.strip() + ("-dirty" if dirty else "")


def cuda_archs():
    """The archs nvcc is given, from the same flags torch's build passes it: sm_XX (machine code), compute_XX (PTX)."""
    from torch.utils.cpp_extension import _get_cuda_arch_flags

    codes = [
        code for flag in _get_cuda_arch_flags() for code in re.findall(r"(?:sm|compute)_\w+", flag.split("code=")[-1])
    ]
    return sorted(set(codes))


def build_facts(cuda):
    """Compile definitions that csrc/python_module.cpp turns into build_info()."""
    facts = [f"-DCLUSIAM_FAST_GIT_COMMIT={commit}"] if (commit := git_commit()) else []
    if cuda:
        facts += ["-DCLUSIAM_FAST_WITH_CUDA", "-DCLUSIAM_FAST_CUDA_ARCHS=" + ",".join(cuda_archs())]
    return facts


def extension():
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    cxx = ["-O3", "-fvisibility=hidden", "-fopenmp", "-Wno-psabi"]  # OpenMP: at::parallel_for runs serially without it
    link = ["-fopenmp"]
    cuda = want_cuda()
    if cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    cxx += build_facts(cuda)
    if cuda:
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

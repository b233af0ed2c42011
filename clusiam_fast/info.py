"""What is installed and how the extension was built: ``python -m clusiam_fast.info [--json]``.

Prints the package, Python, torch, its CUDA runtime and the NVIDIA driver; how
``clusiam_fast._C`` was built, read from the compiled module itself
(``clusiam_fast._C.build_info()``: compiler, C++ standard, OpenMP, vector ISA, the torch
and CUDA versions it was compiled against, the CUDA archs it holds code for, git commit);
which fused ops have kernels on which device; which optional backends import and work
(cuCIM, OpenSlide, tifffile, DALI, Ray, timm, h5py) with their versions; the visible GPUs.

A warning (on stderr, and under ``warnings`` in ``--json``) says when the extension was
built against another torch than the one running, or holds no code for a visible GPU.
Exit status 0, also when parts are missing: it reports, it does not judge.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import io
import json
import os
import platform
import sys
from collections.abc import Callable, Iterator, Sequence

# name -> (module, pip package, a check that it works beyond importing)
BACKENDS: dict[str, tuple[str, str, Callable | None]] = {}


def _backend(name: str, module: str, pip_name: str):
    def register(check: Callable | None) -> Callable | None:
        BACKENDS[name] = (module, pip_name, check)
        return check

    return register


@_backend("cuCIM", "cucim", "cucim-cu13")
def _cucim_works(cucim) -> str:
    from cucim import CuImage  # noqa: F401  (the reader; needs the native library)

    return "CuImage loads"


@_backend("OpenSlide", "openslide", "openslide-python openslide-bin")
def _openslide_works(openslide) -> str:
    return f"library {openslide.__library_version__}"


@_backend("tifffile", "tifffile", "tifffile")
def _tifffile_works(tifffile) -> str:
    import numpy as np

    buffer, image = io.BytesIO(), np.arange(64, dtype=np.uint8).reshape(8, 8)
    tifffile.imwrite(buffer, image, tile=(16, 16))
    assert (tifffile.imread(io.BytesIO(buffer.getvalue())) == image).all()
    return "tiled write and read"


@_backend("DALI", "nvidia.dali", "nvidia-dali-cuda130")
def _dali_works(dali) -> str:
    import nvidia.dali.fn  # noqa: F401

    return "fn loads"


_backend("Ray", "ray", "ray")(None)
_backend("timm", "timm", "timm")(None)


@_backend("h5py", "h5py", "h5py")
def _h5py_works(h5py) -> str:
    with h5py.File("in-memory.h5", "w", driver="core", backing_store=False) as f:
        f["x"] = [1, 2, 3]
        assert f["x"][2] == 3
    return f"HDF5 {h5py.version.hdf5_version}"


def backend_status(name: str) -> dict:
    """Version of one optional backend and whether it works, or the one-line reason it does not."""
    module, pip_name, check = BACKENDS[name]
    try:
        mod = importlib.import_module(module)
        version = getattr(mod, "__version__", None)
        detail = check(mod) if check else "imports"
        return {"works": True, "version": version, "detail": detail}
    except Exception as error:  # any failure is the answer here
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": ")
        return {"works": False, "version": None, "detail": f"{reason} (pip install {pip_name})"}


def driver_version() -> str | None:
    """The NVIDIA driver's CUDA version (cuDriverGetVersion), without initialising CUDA; None without a driver."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int()
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


def extension_status() -> dict:
    """build_info() of the compiled module and which ops have kernels per device."""
    import torch

    from .ops import _extension

    if _extension.LOAD_ERROR is not None:
        return {"loaded": False, "error": _extension.LOAD_ERROR, "build": None, "ops": {}}
    from . import _C

    names = sorted(n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("clusiam::"))
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    ops = {
        device: [n for n in names if has(f"clusiam::{n}", key)] for device, key in (("cpu", "CPU"), ("cuda", "CUDA"))
    }
    return {"loaded": True, "error": None, "build": _C.build_info(), "ops": ops}


def gpus() -> list[dict]:
    import torch

    if not torch.cuda.is_available():
        return []
    found = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        found.append(
            {
                "index": i,
                "name": p.name,
                "arch": f"sm_{p.major}{p.minor}",
                "capability": f"{p.major}.{p.minor}",
                "memory_gib": p.total_memory / 2**30,
            }
        )
    return found


def runs_on(arch: str, built: Sequence[str]) -> bool:
    """Whether code built for ``built`` (sm_XY machine code, compute_XY PTX) runs on a GPU of ``arch`` (sm_XY)."""
    number = lambda code: int("".join(c for c in code.split("_")[1] if c.isdigit()))
    want = number(arch)
    same_major = lambda code: number(code) // 10 == want // 10 and number(code) <= want
    return any(code.startswith("sm_") and same_major(code) for code in built) or any(
        code.startswith("compute_") and number(code) <= want for code in built
    )


@contextlib.contextmanager
def _native_stdout_to_stderr() -> Iterator[None]:
    """Sends what native libraries print on file descriptor 1 (cuCIM's dlopen notes) to stderr, keeping stdout clean."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def gather() -> dict:
    """Everything ``info`` reports, as plain data."""
    with _native_stdout_to_stderr():
        return _gather()


def _gather() -> dict:
    import torch

    package = sys.modules[__package__]  # clusiam_fast itself, imported before any of its modules
    ext = extension_status()
    devices = gpus()
    facts = {
        "clusiam_fast": {"version": package.__version__, "path": package.__path__[0]},
        "python": platform.python_version(),
        "torch": {"version": torch.__version__, "cuda_runtime": torch.version.cuda, "driver": driver_version()},
        "extension": ext,
        "backends": {name: backend_status(name) for name in BACKENDS},
        "gpus": devices,
    }
    facts["warnings"] = warnings_for(facts)
    return facts


def warnings_for(facts: dict) -> list[str]:
    build = facts["extension"]["build"]
    if build is None:
        return [
            f"clusiam_fast._C did not load ({facts['extension']['error']}): rebuild it with `bash scripts/setup.sh`"
        ]
    found = []
    running = facts["torch"]["version"].split("+")[0]
    if build["torch_version"] != running:
        found.append(
            f"clusiam_fast._C was built against torch {build['torch_version']} but torch {running} is running: "
            "rebuild it with `bash scripts/setup.sh` (a mismatch can crash or load no ops)"
        )
    for gpu in facts["gpus"]:
        if build["cuda"] and not runs_on(gpu["arch"], build["cuda_archs"]):
            found.append(
                f"GPU {gpu['index']} ({gpu['name']}, {gpu['arch']}) has no code in clusiam_fast._C (built for "
                f"{', '.join(build['cuda_archs'])}): rebuild with TORCH_CUDA_ARCH_LIST including {gpu['capability']}"
            )
    return found


OPENMP_VERSIONS = {
    200805: "3.0",
    201107: "3.1",
    201307: "4.0",
    201511: "4.5",
    201811: "5.0",
    202011: "5.1",
    202111: "5.2",
}


def format_text(facts: dict) -> str:
    """The human-readable report."""
    yes = lambda flag: "yes" if flag else "no"
    torch_ = facts["torch"]
    lines = [
        f"clusiam_fast {facts['clusiam_fast']['version']}  ({facts['clusiam_fast']['path']})",
        f"python       {facts['python']}",
        f"torch        {torch_['version']}  CUDA runtime {torch_['cuda_runtime'] or 'none (CPU build)'}, "
        f"driver {torch_['driver'] or 'none'}",
        "",
    ]
    ext = facts["extension"]
    if ext["build"] is None:
        lines.append(f"extension    not loaded: {ext['error']}")
    else:
        b = ext["build"]
        lines += [
            "extension    clusiam_fast._C, built with:",
            f"  compiler       {b['compiler']}, {b['cxx_standard']}, OpenMP {OPENMP_VERSIONS.get(b['openmp'], b['openmp']) or 'off'}",
            f"  vector ISA     {', '.join(b['vector_isa_compiled'])} (this CPU uses {b['vector_isa_selected']})",
            f"  torch          {b['torch_version']}",
            f"  CUDA           {b['cuda_version'] + ', archs ' + ' '.join(b['cuda_archs']) if b['cuda'] else 'not built'}",
            f"  git commit     {b['git_commit'] or 'unknown'}",
            "fused ops    " + "; ".join(f"{dev}: {', '.join(names) or 'none'}" for dev, names in ext["ops"].items()),
        ]
        if ext["ops"]["cuda"] and not facts["gpus"]:
            lines.append("             (the CUDA kernels are built; no GPU is visible to run them)")
    lines += ["", "backends"]
    for name, status in facts["backends"].items():
        version = status["version"] or ""
        lines.append(f"  {name:<10} {yes(status['works']):<4} {version:<12} {status['detail']}")
    lines += ["", "GPUs"] + (
        [f"  {g['index']}: {g['name']} ({g['arch']}, {g['memory_gib']:.0f} GiB)" for g in facts["gpus"]] or ["  none"]
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clusiam_fast.info",
        description="Versions of clusiam_fast, torch, CUDA and the driver; how the compiled extension was built "
        "(read from the module itself); fused ops per device; optional backends; visible GPUs.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text (for machines)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    facts = gather()
    print(json.dumps(facts, indent=2) if args.json else format_text(facts))
    for warning in facts["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

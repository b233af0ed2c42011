"""`python -m clusiam_fast.info`: the build facts come from the compiled module and match what was compiled.

The CUDA archs that ``clusiam_fast._C.build_info()`` reports are compared with the GPU code
really inside the library (its ``.nv_fatbin`` ELF section, parsed here) and with the build
settings (TORCH_CUDA_ARCH_LIST, or setup.py's default).
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clusiam_fast import info
from clusiam_fast.ops import _extension

REPO = Path(__file__).resolve().parents[1]
needs_extension = pytest.mark.skipif(
    _extension.LOAD_ERROR is not None, reason=f"clusiam_fast._C is not built: {_extension.LOAD_ERROR}"
)


def _elf_section(path: Path, wanted: str) -> bytes | None:
    """The bytes of one section of a 64-bit little-endian ELF file, or None when it has none."""
    data = path.read_bytes()
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = headers[shstrndx]
    for name_offset, _, _, _, offset, size in headers:
        start = names[4] + name_offset
        if data[start : data.index(b"\0", start)].decode() == wanted:
            return data[offset : offset + size]
    return None


def _fatbin_archs(section: bytes) -> set[str]:
    """sm_XX of every machine-code entry and compute_XX of every PTX entry of a CUDA fat binary."""
    found, start = set(), 0
    while (start := section.find(struct.pack("<I", 0xBA55ED50), start)) >= 0:
        header_size, fat_size = struct.unpack_from("<HQ", section, start + 6)
        entry, end = start + header_size, start + header_size + fat_size
        while entry < end:
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", section, entry)
            arch = struct.unpack_from("<I", section, entry + 28)[0]
            found.add(f"{'compute' if kind == 1 else 'sm'}_{arch}")
            entry += entry_header + payload
        start = end
    return found


def _settings_archs() -> set[str]:
    """The archs the build settings ask for: TORCH_CUDA_ARCH_LIST, else setup.py's default."""
    default = re.search(r'"TORCH_CUDA_ARCH_LIST", "([^"]+)"', (REPO / "setup.py").read_text()).group(1)
    archs = set()
    for item in os.environ.get("TORCH_CUDA_ARCH_LIST", default).replace(" ", ";").split(";"):
        if item:
            number = item.split("+")[0].replace(".", "")
            archs.add(f"sm_{number}")
            if item.endswith("+PTX"):
                archs.add(f"compute_{number}")
    return archs


@needs_extension
def test_build_info_is_read_from_the_compiled_module():
    from clusiam_fast import _C

    build = _C.build_info()
    assert build["torch_version"] == torch.__version__.split("+")[0]
    assert build["openmp"] and build["openmp"] >= 201107  # setup.py compiles with -fopenmp
    assert build["cxx_standard"].startswith("C++") and build["compiler"].split()[0] in ("gcc", "clang")
    assert build["vector_isa_selected"] in build["vector_isa_compiled"]
    section = _elf_section(Path(_C.__file__), ".nv_fatbin")
    if not build["cuda"]:
        assert section is None and build["cuda_archs"] == [] and build["cuda_version"] is None
        return
    compiled = _fatbin_archs(section)
    assert set(build["cuda_archs"]) == compiled, f"build_info says {build['cuda_archs']}, the library holds {compiled}"
    settings = _settings_archs()
    assert compiled == settings, f"the library holds {compiled}, the build settings ask for {settings}: rebuild"
    assert build["cuda_version"] == ".".join(torch.version.cuda.split(".")[:2])


@needs_extension
def test_fused_ops_per_device_follow_the_build():
    from clusiam_fast import _C

    ops = info.extension_status()["ops"]
    assert {"assign_pool", "assign_pool_backward", "centroid_loss", "centroid_loss_backward"} <= set(ops["cpu"])
    assert bool(ops["cuda"]) == _C.build_info()["cuda"]


@pytest.fixture(scope="module")
def info_json():
    """One run of ``python -m clusiam_fast.info --json`` (it imports every backend: seconds)."""
    done = subprocess.run(
        [sys.executable, "-m", "clusiam_fast.info", "--json"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout), done.stderr  # stdout is the JSON alone: native libraries' notes go to stderr


def test_json_output_holds_every_part(info_json):
    facts, stderr = info_json
    assert facts["torch"]["version"] == torch.__version__ and facts["torch"]["cuda_runtime"] == torch.version.cuda
    assert set(facts["backends"]) == {"cuCIM", "OpenSlide", "tifffile", "DALI", "Ray", "timm", "h5py"}
    assert facts["backends"]["h5py"]["works"] and facts["backends"]["h5py"]["version"]  # a core dependency of the tests
    assert len(facts["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if _extension.LOAD_ERROR is None:
        from clusiam_fast import _C

        assert facts["extension"]["build"] == _C.build_info()
    for warning in facts["warnings"]:
        assert f"warning: {warning}" in stderr


def test_text_output_names_the_build(info_json):
    text = info.format_text(info_json[0])
    assert f"torch        {torch.__version__}" in text
    build = info_json[0]["extension"]["build"]
    if build is not None:
        expected = " ".join(build["cuda_archs"]) if build["cuda"] else "not built"
        assert re.search(r"  CUDA +.*" + re.escape(expected), text), text
        assert f"  torch          {build['torch_version']}" in text


def test_help_answers_without_importing_torch():
    code = "import sys\nfrom clusiam_fast import info\ntry:\n    info.main(['--help'])\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--json" in done.stdout and done.stdout.strip().endswith("False"), done.stdout


@needs_extension
def test_a_build_against_another_torch_is_warned_about():
    facts = {"torch": {"version": torch.__version__}, "extension": info.extension_status(), "gpus": []}
    assert info.warnings_for(facts) == []
    facts["extension"]["build"]["torch_version"] = "1.13.0"
    (warning,) = info.warnings_for(facts)
    assert "built against torch 1.13.0" in warning and "scripts/setup.sh" in warning


def test_a_gpu_without_code_in_the_build_is_warned_about():
    build = {"torch_version": torch.__version__.split("+")[0], "cuda": True, "cuda_archs": ["sm_80", "sm_90"]}
    gpu = {"index": 0, "name": "a GPU", "arch": "sm_75", "capability": "7.5"}
    facts = {"torch": {"version": torch.__version__}, "extension": {"build": build}, "gpus": [gpu]}
    (warning,) = info.warnings_for(facts)
    assert "sm_75" in warning and "TORCH_CUDA_ARCH_LIST including 7.5" in warning


@pytest.mark.parametrize(
    "gpu,built,runs",
    [
        ("sm_90", ["sm_80", "sm_90"], True),
        ("sm_86", ["sm_80"], True),
        ("sm_90", ["sm_80"], False),
        ("sm_90", ["sm_80", "compute_80"], True),
        ("sm_75", ["sm_80", "compute_80"], False),
        ("sm_100", ["sm_90"], False),
    ],
)
def test_which_gpus_a_build_runs_on(gpu, built, runs):
    assert info.runs_on(gpu, built) is runs


def test_a_missing_backend_is_named_with_its_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    status = info.backend_status("timm")
    assert status["works"] is False and status["version"] is None and "pip install timm" in status["detail"]


def test_an_unloadable_extension_is_reported_not_raised(monkeypatch, info_json):
    monkeypatch.setattr(_extension, "LOAD_ERROR", "undefined symbol: _ZN3c10 (built against another torch)")
    ext = info.extension_status()
    assert ext == {"loaded": False, "error": _extension.LOAD_ERROR, "build": None, "ops": {}}
    facts = {**info_json[0], "extension": ext}
    (warning,) = info.warnings_for(facts)
    assert "did not load (undefined symbol" in warning and "scripts/setup.sh" in warning
    assert "extension    not loaded: undefined symbol" in info.format_text(facts)

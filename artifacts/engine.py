"""llama-server built from the pinned llama.cpp sdist with runtime CPU dispatch.

GGML_BACKEND_DL puts each CPU variant in its own shared library; the server loads the best one
the CPU supports at start, so one build serves a bare qemu64 CPU and an AVX-512 host alike.
Building all 15 x86 variants costs ~25 min on 2 cores; we build the four that span the ISA
levels that matter (baseline x86-64, SSE4.2, AVX2, AVX-512).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from . import cache

# tag -> what it needs; order is the dispatch ladder, lowest first.
CPU_VARIANTS = {
    "x64": "baseline x86-64 (SSE2): what a qemu64 CPU gets",
    "sse42": "SSE4.2 (Nehalem and later)",
    "haswell": "AVX2 + FMA + F16C + BMI2",
    "skylakex": "AVX-512 F/BW/DQ/VL",
}

CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    "-DGGML_NATIVE=OFF",
    "-DGGML_BACKEND_DL=ON",
    "-DGGML_CPU_ALL_VARIANTS=ON",
    "-DGGML_CCACHE=OFF",
    "-DLLAMA_OPENSSL=OFF",  # TLS is nginx's job
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # ON downloads the web UI at configure time
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DCMAKE_INSTALL_RPATH=$ORIGIN",
    "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
]

_VARIANT_CALL = re.compile(r"^(\s*)(ggml_add_cpu_backend_variant\((\w+)\b.*)$")


def select_cpu_variants(cmakelists: Path, keep: list[str]) -> None:
    """Comment out the x86 variants we do not ship (upstream offers all-or-one only)."""
    lines = cmakelists.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if 'GGML_SYSTEM_ARCH STREQUAL "x86"' in line
                 and i > 0 and "GGML_CPU_ALL_VARIANTS" in "".join(lines[i - 8:i]))
    end = next(i for i in range(start + 1, len(lines)) if "elseif" in lines[i])
    found = []
    for i in range(start, end):
        match = _VARIANT_CALL.match(lines[i])
        if match:
            found.append(match.group(3))
            if match.group(3) not in keep:
                lines[i] = f"{match.group(1)}# not shipped: {match.group(2)}\n"
    missing = set(keep) - set(found)
    if missing:
        raise RuntimeError(f"CPU variants {sorted(missing)} not offered by this llama.cpp ({found})")
    cmakelists.write_text("".join(lines))


# Bump when build() changes in a way that changes its output.
RECIPE_VERSION = 1


def build_key(pin: dict) -> str:
    compiler = subprocess.run(["c++", "--version"], capture_output=True, text=True).stdout
    return cache.sha256_text(pin["sha256"], str(RECIPE_VERSION), compiler, " ".join(CMAKE_FLAGS),
                             ",".join(CPU_VARIANTS), str(pin["build_number"]), pin["build_commit"])


def build(source: Path, pin: dict, out: Path, jobs: int | None = None) -> None:
    jobs = jobs or os.cpu_count() or 2
    with tempfile.TemporaryDirectory(dir=cache.cache_root()) as tmp:
        with tarfile.open(source) as tar:
            tar.extractall(tmp, filter="data")
        src = next(Path(tmp).glob("*/llama.cpp"))
        select_cpu_variants(src / "ggml" / "src" / "CMakeLists.txt", list(CPU_VARIANTS))
        bld = Path(tmp) / "build"
        log = cache.cache_root() / "engine-build.log"
        print(f"engine: building llama-server ({', '.join(CPU_VARIANTS)}) with {jobs} jobs; log: {log}")
        with open(log, "w") as out_log:
            for cmd in (["cmake", "-S", src, "-B", bld, "-G", "Ninja" if shutil.which("ninja") else "Unix Makefiles",
                         *CMAKE_FLAGS, f"-DLLAMA_BUILD_NUMBER={pin['build_number']}",
                         f"-DLLAMA_BUILD_COMMIT={pin['build_commit']}"],
                        ["cmake", "--build", bld, "--target", "llama-server", "-j", str(jobs)]):
                if subprocess.run(cmd, stdout=out_log, stderr=subprocess.STDOUT).returncode != 0:
                    raise RuntimeError(f"engine build failed: {' '.join(map(str, cmd[:3]))}...; "
                                       f"last lines of {log}:\n{log.read_text()[-3000:]}")
        for item in [bld / "bin" / "llama-server", *sorted((bld / "bin").glob("*.so*"))]:
            shutil.copy2(item, out / item.name, follow_symlinks=True)
    for item in out.iterdir():
        subprocess.run(["strip", "--strip-unneeded", item], check=True)
    shipped = sorted(p.name for p in out.glob("libggml-cpu-*.so"))
    expected = sorted(f"libggml-cpu-{v}.so" for v in CPU_VARIANTS)
    if shipped != expected:
        raise RuntimeError(f"engine build shipped CPU variants {shipped}, expected {expected}")


def soname(lib: Path) -> str | None:
    out = subprocess.run(["objdump", "-p", lib], capture_output=True, text=True, check=True).stdout
    return next((line.split()[1] for line in out.splitlines() if line.strip().startswith("SONAME")), None)


def runtime_files(build_out: Path) -> list[Path]:
    """What the server loads: itself, its libraries under their SONAME, the CPU variants."""
    return sorted(p for p in build_out.iterdir() if not p.name.startswith(".") and (
                  p.name == "llama-server" or p.name.startswith("libggml-cpu-") or soname(p) == p.name))


def ensure(pins: dict) -> Path:
    pin = pins["engine_source"]
    source = cache.fetch_pypi_file("engine_source", pin)
    return cache.cached_build("engine", build_key(pin), lambda out: build(source, pin, out))


ARCH_NAME = re.compile(r'\{\s*LLM_ARCH_\w+\s*,\s*"([a-z0-9_-]+)"\s*\}')
NOT_SERVED = {"clip"}  # a placeholder the quantizer uses, never a model the server loads


def architectures(pins: dict) -> list[str]:
    """The model architectures the pinned engine loads, as its source names them (llama-arch.cpp):
    the appliance refuses a downloaded model of any other before it replaces the one serving."""
    source = cache.fetch_pypi_file("engine_source", pins["engine_source"])
    with tarfile.open(source) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("llama.cpp/src/llama-arch.cpp"))
        text = tar.extractfile(member).read().decode()
    table = text[text.index("LLM_ARCH_NAMES"):]
    table = table[:table.index("};")]
    names = sorted(set(ARCH_NAME.findall(table)) - NOT_SERVED)
    if "llama" not in names:
        raise RuntimeError(f"no architecture table found in {member.name}")
    return names

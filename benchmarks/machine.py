"""The context a throughput figure needs: CPU, memory bandwidth, model size, engine variant."""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path

import numpy as np

from conformance.support import engine_variants


def cpu_info() -> dict:
    text = Path("/proc/cpuinfo").read_text()
    model = re.search(r"model name\s*:\s*(.+)", text)
    flags = set(re.search(r"flags\s*:\s*(.+)", text).group(1).split())
    return {"model": model.group(1).strip() if model else platform.processor(),
            "flags": sorted(flags & {"sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "amx_tile"}),
            "cores": os.cpu_count(),
            "mem_gib": round(int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
                             / 2**20, 1)}


def memory_bandwidth_gbs(mib: int = 256, repeats: int = 5) -> float:
    """Best-of copy bandwidth (read + write bytes), single thread: the ceiling decode runs into."""
    src = np.ones(mib * 2**20 // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best / 1e9


def loaded_variant(proc_maps: str) -> str:
    """The CPU variants an engine has mapped, for the report (from its /proc/<pid>/maps)."""
    return ",".join(engine_variants(proc_maps)) or "unknown"


def roofline(decode_tps: float, model_bytes: int, bandwidth_gbs: float) -> float:
    """Share of the memory-bound peak: every decoded token reads all weights once."""
    return decode_tps * model_bytes / (bandwidth_gbs * 1e9)

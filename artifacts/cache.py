"""A content-addressed cache outside the repository, and the lock every heavy job takes.

Downloads are stored under their sha256; build outputs under a key made from the hashes of
everything that went into them. A cached entry is re-verified on every use: a corrupt or
mismatching file is removed and rebuilt, never used.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

PINS_FILE = Path(__file__).with_name("pins.toml")


class PinMismatch(RuntimeError):
    """A pinned input whose bytes are not the ones pinned."""

    def __init__(self, name: str, path: Path, expected: str, actual: str):
        super().__init__(
            f"{name}: sha256 mismatch for {path.name}: expected {expected}, actual {actual}. "
            f"Fix the pin in {PINS_FILE.name} only if this new file is the one you mean to ship."
        )


def cache_root() -> Path:
    root = Path(os.environ.get("SLM_CACHE_DIR", Path.home() / ".cache" / "slm-copilot"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def load_pins() -> dict:
    return tomllib.loads(PINS_FILE.read_text())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def verify(name: str, path: Path, expected: str) -> Path:
    actual = sha256_file(path)
    if actual != expected:
        raise PinMismatch(name, path, expected, actual)
    return path


def fetch_pypi_file(name: str, pin: dict) -> Path:
    """The pinned PyPI file, from the cache or downloaded (pip: PyPI is the one registry here)."""
    target = cache_root() / "cas" / pin["sha256"] / pin["filename"]
    if target.exists():
        try:
            return verify(name, target, pin["sha256"])
        except PinMismatch as err:
            print(f"cache: {err}; downloading again", file=sys.stderr)
            target.unlink()
    with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp,
               f"{pin['package']}=={pin['version']}"]
        if pin["filename"].endswith(".tar.gz"):
            cmd[5:5] = ["--no-binary", pin["package"]]
        subprocess.run(cmd, check=True)
        got = Path(tmp) / pin["filename"]
        if not got.exists():
            raise RuntimeError(f"{name}: pip did not produce {pin['filename']} (got {os.listdir(tmp)})")
        verify(name, got, pin["sha256"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(got, target)
    return target


def tree_manifest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def cached_build(kind: str, key: str, build) -> Path:
    """Return the verified output folder of `build(out_dir)` for `key`, building it if needed.

    The folder carries `.manifest.json` (sha256 of every file); any difference means rebuild.
    """
    out = cache_root() / "builds" / f"{kind}-{key[:16]}"
    manifest = out / ".manifest.json"
    if manifest.exists():
        recorded = json.loads(manifest.read_text())
        current = tree_manifest(out)
        current.pop(".manifest.json", None)
        if recorded == current:
            os.utime(out)  # recently used: kept by prune()
            return out
        print(f"cache: {out} does not match its manifest; rebuilding", file=sys.stderr)
    if out.exists():
        shutil.rmtree(out)
    staging = out.with_name(out.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    build(staging)
    files = tree_manifest(staging)
    (staging / ".manifest.json").write_text(json.dumps(files, indent=1, sort_keys=True))
    staging.rename(out)
    prune(kind)
    return out


KEEP_BUILDS = 2  # per kind: the current inputs and the previous ones (switching branches back is free)


def prune(kind: str, keep: int = KEEP_BUILDS) -> list[Path]:
    """Remove all but the `keep` most recently used builds of `kind`, and its crashed stagings."""
    builds = cache_root() / "builds"
    done = sorted((p for p in builds.glob(f"{kind}-*") if p.is_dir() and not p.name.endswith(".partial")),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    removed = done[keep:] + [p for p in builds.glob(f"{kind}-*.partial") if p.is_dir()]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


@contextlib.contextmanager
def heavy_job(what: str):
    """Serialise engine builds, image builds, VMs and benchmarks: 2 cores make overlap noise."""
    lock_path = cache_root() / "heavy-job.lock"
    if os.environ.get("SLM_HEAVY_JOB_LOCK") == str(lock_path):
        yield  # a parent process (nox, packer's provisioner, pytest) already holds it
        return
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            print(f"lock: waiting for {lock_path} (held by: {fh.read().strip() or '?'})", file=sys.stderr)
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}: {what} since {time.strftime('%H:%M:%S')}\n")
        fh.flush()
        os.environ["SLM_HEAVY_JOB_LOCK"] = str(lock_path)
        try:
            yield
        finally:
            del os.environ["SLM_HEAVY_JOB_LOCK"]
            fh.seek(0)
            fh.truncate()

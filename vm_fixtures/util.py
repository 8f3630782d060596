"""Helpers with no libvirt in them, shared by the VM harness, the conformance suite and the
benchmarks: loopback ports, one deadline loop, and a process's readiness."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

import httpx

T = TypeVar("T")


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports: all held open while choosing, as the kernel may hand
    out a port just closed again (two servers on one port: nginx then refuses its TLS listener)."""
    with contextlib.ExitStack() as held:
        socks = [held.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def wait_until(condition: Callable[[], T], timeout: float, interval: float = 1.0, what: str = "it") -> T:
    """The first truthy value of `condition()` within `timeout` seconds, else TimeoutError naming `what`.
    `condition` may raise to end the wait at once (a process that died, a domain that paused)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


def http_ok(url: str, timeout: float = 2) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=timeout).status_code == 200
    return False


def wait_healthy(proc: subprocess.Popen, url: str, timeout: float, name: str, log: Callable[[], str]) -> None:
    """Until `url` answers 200; at once with the log's tail if the process exits first."""
    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}: {log()[-2000:]}")
        return http_ok(url)

    wait_until(healthy, timeout, interval=0.2, what=f"{name} healthy at {url}")

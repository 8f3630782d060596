"""An appliance reached over SSH: what every back-end shares (cloud-init's execute/restart).

A libvirt Instance is a Guest whose power switch and CONTEXT CD-ROM the platform also holds. A
deployed appliance (the conformance suite's url target) is a Guest and nothing more, so its power
cut and its context update are done from inside: an immediate sysrq reset, and the appliance's own
context hook re-run with the changed variables. Every SSH and HTTP call is bounded by a timeout:
while a guest reboots, a port forward or a load balancer may still accept TCP.
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
import time
from pathlib import Path

import httpx

from .layout import layout
from .util import wait_until

CONTEXT_HOOK = "/etc/one-context.d/net-90-service-appliance"
CONTEXT_ENV = "/run/one-context/one_env"  # written by one-context and by the offline agent alike


class GuestError(RuntimeError):
    pass


class Guest:
    """One appliance host: run commands, read files, reboot, pull the plug, change its context.

    `disposable` says whether the run may leave it changed: a launched VM is thrown away, a
    deployed appliance must be handed back as it was found."""

    disposable = False

    def __init__(self, name: str, host: str, ssh_port: int = 22, user: str = "root", ssh_key: Path | None = None,
                 https_url: str = "", http_url: str = "", engine_url: str = "", ca_file: Path | None = None):
        self.name, self.host, self.ssh_port, self.user, self.ssh_key = name, host, ssh_port, user, ssh_key
        self.https_url = (https_url or f"https://{host}").rstrip("/")
        web_host = httpx.URL(self.https_url).host
        self.http_url = (http_url or f"http://{web_host}").rstrip("/")  # port 80: redirects and ACME
        self.engine_url = (engine_url or f"http://{web_host}:{layout().engine_port}").rstrip("/")
        self._ca_file = ca_file
        self.context: dict[str, str] = {}
        self.boot_id: str | None = None
        self.ready: dict = {}
        self._context_unit = ""

    @classmethod
    def from_ssh(cls, target: str, ssh_key: str = "", **urls) -> Guest:
        """target: user@host[:port], as the conformance `ssh` setting spells it; urls: https_url,
        http_url, engine_url as the network reaches them; ca_file: the CA clients trust."""
        user, _, hostport = target.rpartition("@")
        host, _, port = hostport.partition(":")
        if not host or (port and not port.isdigit()):
            raise ValueError(f"ssh={target!r}: expected user@host[:port]")
        ca_file = urls.pop("ca_file", "")
        return cls(target, host, int(port or 22), user or "root", Path(ssh_key) if ssh_key else None,
                   ca_file=Path(ca_file) if ca_file else None, **urls)

    # -- commands -------------------------------------------------------------------------

    def ssh_command(self, command: str) -> list[str]:
        if self.user != "root":  # the appliance's files and units are root's
            command = "sudo -n bash -c " + shlex.quote(command)
        identity = ["-i", str(self.ssh_key)] if self.ssh_key else []
        return ["ssh", "-q", *identity, "-p", str(self.ssh_port), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3", f"{self.user}@{self.host}", command]

    def execute(self, command: str, timeout: float = 120, check: bool = True,
                stdin: str | None = None) -> subprocess.CompletedProcess:
        """Secrets go through `stdin`, never the command line (it shows in ps on both ends)."""
        try:
            result = subprocess.run(self.ssh_command(command), capture_output=True, text=True, timeout=timeout,
                                    input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired as err:
            raise GuestError(f"{self.name}: `{command}` timed out after {timeout}s") from err
        if check and result.returncode != 0:
            raise GuestError(f"{self.name}: `{command}` exited {result.returncode}: {result.stderr[-500:]}")
        return result

    def read_file(self, path: str) -> str:
        return self.execute(f"cat {path}").stdout

    def api_key(self) -> str:
        return self.read_file(layout().api_key).strip()

    def engine_proc(self, name: str) -> str:
        """/proc/<engine pid>/<name> (maps: its CPU variant; status: its memory)."""
        return self.read_file(f"/proc/$(pidof llama-server)/{name}")

    def testinfra_url(self) -> str:
        return f"ssh://{self.user}@{self.host}:{self.ssh_port}"

    def trusted_ca(self) -> Path | None:
        """The CA a client of this appliance trusts: the operator's file, else the system store."""
        return self._ca_file

    # -- boot and readiness ---------------------------------------------------------------

    def current_boot_id(self) -> str | None:
        with contextlib.suppress(GuestError):
            out = self.execute("cat /proc/sys/kernel/random/boot_id", timeout=20, check=False)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        return None

    def boot_failure(self) -> str | None:
        """What a console shows when a boot has failed; a guest without a console shows nothing."""
        return None

    @property
    def context_unit(self) -> str:
        """The unit that applies the context at boot: the offline agent, or one-context in production."""
        if not self._context_unit:
            found = self.execute("systemctl cat slm-context.service >/dev/null 2>&1 && echo slm-context.service "
                                 "|| echo one-context.service", timeout=30, check=False).stdout.strip()
            self._context_unit = found  # empty while SSH is down: asked again next time
        return self._context_unit or "slm-context.service"

    def wait_boot(self, timeout: float = 900) -> float:
        """Until SSH answers with a boot_id other than the last one seen; at once if the boot failed."""
        start = time.monotonic()

        def new_boot() -> bool:
            failure = self.boot_failure()  # first: an SSH try on a dead guest costs up to 20 s
            if failure:
                raise GuestError(f"{self.name}: boot failed, {failure}")
            boot_id = self.current_boot_id()
            if boot_id and boot_id != self.boot_id:
                self.boot_id = boot_id
                return True
            return False

        try:
            wait_until(new_boot, timeout, interval=3)
        except TimeoutError:
            raise GuestError(f"{self.name}: no SSH with a new boot_id after {timeout}s") from None
        return time.monotonic() - start

    def wait_ready(self, timeout: float = 1800) -> dict:
        """Until the context agent has run and the appliance answers /health through TLS."""
        start = time.monotonic()
        self.wait_boot(timeout)
        booted = time.monotonic() - start
        status = {"now": ""}

        def serving() -> bool:
            out = self.execute(f"systemctl is-active {self.context_unit}; cat /etc/one-appliance/status",
                               timeout=30, check=False).stdout.split()
            status["now"] = out[-1] if out else ""
            agent_done = out and out[0] in ("active", "failed")
            if agent_done and status["now"] != "bootstrap_success":
                raise GuestError(f"{self.name}: appliance status {status['now']!r} after the context agent ran")
            if agent_done and self.health() == 200:
                return True
            failure = self.boot_failure()
            if failure:
                raise GuestError(f"{self.name}: boot failed after SSH came up, {failure}")
            return False

        try:
            wait_until(serving, max(1.0, timeout - booted), interval=5)
        except TimeoutError:
            raise GuestError(f"{self.name}: not ready after {timeout}s (status {status['now']!r})") from None
        return {"boot_s": round(booted, 1), "ready_s": round(time.monotonic() - start, 1)}

    def health(self) -> int | None:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.https_url}/health", verify=False, timeout=10).status_code  # noqa: S501 (liveness only; TLS is checked by the suite)
        return None

    # -- power and context ----------------------------------------------------------------

    def remember_boot(self) -> None:
        """Before a reboot: the boot it must leave, or SSH answering on the way down looks like a boot."""
        self.boot_id = self.current_boot_id() or self.boot_id

    def restart(self, timeout: float = 1800) -> dict:
        """A clean reboot; done when the boot_id changed and the appliance is ready again."""
        self.remember_boot()
        with contextlib.suppress(GuestError):  # the connection may drop before ssh returns
            self.execute("sync; systemctl --no-block reboot", timeout=30, check=False)
        return self.wait_ready(timeout)

    def power_cycle(self, timeout: float = 1800) -> dict:
        """Pull the plug from inside: sysrq 'b' resets at once, no sync, no unmount."""
        self.remember_boot()
        with contextlib.suppress(GuestError):
            self.execute("echo b > /proc/sysrq-trigger", timeout=15, check=False)
        return self.wait_ready(timeout)

    def reconfigure(self, context: dict[str, str], timeout: float = 1800, expect_ready: bool = True) -> dict:
        """The deployed context with these variables changed, applied by the appliance's own context
        hook, as one-context does when OpenNebula updates a running VM's context."""
        self.context = dict(context)
        return self.recontextualize(context, timeout, expect_ready)

    def recontextualize(self, context: dict[str, str], timeout: float = 1800, expect_ready: bool = True) -> dict:
        """The context hook run live with these variables (one-context's recontextualization on a
        context change, no reboot): what a running appliance does with a context update."""
        exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in context.items())
        start = time.monotonic()
        run = self.execute(f"set -a; . {CONTEXT_ENV}; . /dev/stdin; set +a; {CONTEXT_HOOK}", timeout=timeout,
                           check=False, stdin=exports)
        if expect_ready and (run.returncode != 0 or self.health() != 200):
            raise GuestError(f"{self.name}: the context hook exited {run.returncode}: {run.stdout[-500:]}")
        return {"reconfigure_s": round(time.monotonic() - start, 1)}

    def collect_logs(self, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        commands = {
            "journal.txt": "journalctl -b --no-pager",
            "appliance-logs.txt": "tail -n 200 /var/log/one-appliance/*.log /etc/one-appliance/status",
            "nginx.txt": f"tail -n 200 {layout().log_dir}/*.log",
            "engine.txt": f"journalctl -b -u {layout().engine_unit} --no-pager",
        }
        for name, command in commands.items():
            with contextlib.suppress(GuestError):
                (dest / name).write_text(self.execute(command, timeout=60, check=False).stdout)

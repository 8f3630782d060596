"""What a run points at: the appliance rendered on loopback (`local`), the image booted here once
per CPU model (`vm`), or a deployed appliance (`url`).

One small class each, in a registry (cloud-init's clouds.py): fixtures, checks and benchmarks ask
the target for what they need and never branch on its name. What a target cannot do it says in one
place, by raising Unsupported with the reason; the check is then reported not applicable.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import httpx

from artifacts.cache import heavy_job
from vm_fixtures.layout import layout

from .endpoint import Endpoint
from .settings import Settings
from .support import REPO, not_applicable, wait_until


class Unsupported(Exception):
    """This target cannot do that; the message says why and, where there is one, what would."""


class Target:
    """One appliance under test, as every check sees it: started, serving, stopped."""

    name: ClassVar[str]
    per_cpu_model: ClassVar[bool] = False  # one appliance per CPU model (the report's matrix columns)
    boots_image: ClassVar[bool] = False  # needs dist/ (the nox session builds it first)

    def __init__(self, settings: Settings, column: str, shared=None):
        self.settings, self.column, self.shared = settings, column, shared
        self.endpoint: Endpoint | None = None
        self.decision = None  # a vm_fixtures.accel.Decision where the target chose an accelerator

    # -- what the run shares, and the report's columns ----------------------------------------
    @classmethod
    @contextlib.contextmanager
    def sharing(cls, settings: Settings) -> Iterator[object]:
        """What every column's appliance shares for the run (the vm target: libvirt and the lock)."""
        yield None

    @classmethod
    def columns(cls, settings: Settings) -> list[str]:
        return [cls.name]

    @classmethod
    def destructive_refusal(cls, settings: Settings) -> str | None:
        """Why checks that kill, reboot or reconfigure must not run here, or None."""
        return None

    # -- lifecycle --------------------------------------------------------------------------
    def announce(self) -> list[str]:
        """What to say on the console before starting (a start may take minutes)."""
        return []

    def start(self) -> Target:
        raise NotImplementedError

    def stop(self) -> None:
        pass

    # -- what checks may need ---------------------------------------------------------------
    def host(self):
        """The appliance's host (a vm_fixtures.Guest: execute, read_file, restart, reconfigure...)."""
        raise Unsupported(f"host checks need the vm target, or ssh with the url target (this run: {self.name})")

    def stop_engine(self) -> None:
        self.host().execute(f"systemctl stop {layout().engine_unit}")

    def start_engine(self) -> None:
        self.host().execute(f"systemctl start {layout().engine_unit}")
        self.endpoint.wait_serving(timeout=600)

    def signal_engine(self, signal_name: str) -> None:
        """SIGSTOP freezes the engine (alive, listening, never answering); SIGCONT thaws it."""
        self.host().execute(f"systemctl kill --kill-whom=main --signal={signal_name} {layout().engine_unit}")

    def engine_proc(self, name: str) -> str:
        """/proc/<engine pid>/<name> on the appliance (maps: its CPU variant; status: its memory)."""
        return self.host().engine_proc(name)

    def logs(self) -> str:
        """Everything the appliance logged: on a host, the journal and /var/log (read there by the
        host checks, which never bring the key to this side); here only the local target's files."""
        raise Unsupported("the logs are searched on the host by test_api_key_absent_from_journal_and_logs")

    def configured(self) -> dict[str, str]:
        """What configure decided (engine.env's SLM_* facts besides the engine's arguments)."""
        return parse_facts(self.host().read_file(f"{layout().conf_dir}/engine.env"))

    def access_log(self) -> str:
        """nginx's access log (key ids, never keys): which client asked what, answered how."""
        return self.host().read_file(f"{layout().log_dir}/access.log")

    def named_keys(self) -> dict[str, str]:
        """ONEAPP_SLM_API_KEYS as configure kept them: id -> key."""
        return parse_named_keys(self.host().read_file(layout().api_keys_file))

    def engine_props(self) -> dict:
        """The engine's own account of what it serves (llama-server's /props, on the host's loopback;
        the key goes through stdin, never a command line)."""
        host = self.host()
        out = host.execute(f"curl -fsS -H @- http://127.0.0.1:{layout().engine_port}/props",
                           stdin=f"Authorization: Bearer {host.api_key()}\n").stdout
        return json.loads(out)

    def apply_context(self, changes: dict[str, str | None], expect_ready: bool = True) -> dict:
        """The appliance's context with `changes` (None removes a variable), applied in place as
        one-context applies a context update: configure, then bootstrap when configure accepts it."""
        host = self.host()
        context = {k: v for k, v in {**host.context, **changes}.items() if v is not None}
        exported = {**context, **{k: "" for k, v in changes.items() if v is None}}  # over one_env's values
        timings = host.recontextualize(exported, expect_ready=expect_ready)
        host.context = context
        return timings

    def appliance_file(self, path: str) -> str:
        """A file of the appliance (its image path), as its host has it."""
        return self.host().read_file(path)

    def current_endpoint(self) -> Endpoint:
        """The appliance as clients reach it now, with its current key (a destructive check before
        may have changed it)."""
        return Endpoint.of_guest(self.host())

    def file_size(self, path: str) -> int:
        """Bytes in a file of the appliance (0 when there is none)."""
        return int(self.host().execute(f"stat -c %s {path} 2>/dev/null || echo 0", check=False).stdout.split()[-1])

    def apply_context_interrupted(self, changes: dict[str, str | None], interrupt_when) -> dict:
        """The context applied at a boot, the appliance rebooted while configure runs (once
        `interrupt_when()` is true), then left to finish at the next boot."""
        raise Unsupported("rebooting into a changed context needs the VM's context CD-ROM (vm target)")

    def report(self) -> str | None:
        """The report bootstrap writes (/etc/one-appliance/config), or None where nothing bootstraps."""
        return self.appliance_file(layout().report)

    def model_host_address(self) -> str:
        """Where the appliance reaches a server on this machine's loopback."""
        raise Unsupported("the appliance must reach this machine to fetch a model from it: the local and vm "
                          "targets can; a deployed appliance is checked with a URL of the operator's")

    def collect_logs(self, dest: Path) -> None:
        """Whatever tells a failure's story (console, journal, appliance and proxy logs) into `dest`."""
        with contextlib.suppress(Unsupported):
            self.host().collect_logs(dest)

    def describe(self) -> list[str]:
        """Lines for the report's head: what this column ran on and how fast it serves."""
        speed = self.endpoint.measured_speed if self.endpoint else None
        return [f"- {self.column}: engine {speed.prompt_ms:.1f} ms per prompt token, {speed.decode_ms:.1f} ms "
                "per generated token (checks size themselves by it)"] if speed else []


class LocalTarget(Target):
    """The appliance's own rendered configuration, served by real nginx and llama-server on loopback."""

    name = "local"

    @classmethod
    def around(cls, stack, settings: Settings) -> LocalTarget:
        """The target's view of a stack started elsewhere (the negative controls' broken ones)."""
        target = cls(settings, cls.name)
        target.stack, target.endpoint = stack, Endpoint.of_stack(stack)
        return target

    def start(self) -> LocalTarget:
        from .stack import LocalStack

        self.stack = LocalStack(REPO / self.settings.artifacts).start()
        self.endpoint = Endpoint.of_stack(self.stack)
        return self

    def stop(self) -> None:
        self.stack.stop()

    def stop_engine(self) -> None:
        self.stack.stop_engine()

    def start_engine(self) -> None:
        self.stack.start_engine()

    def signal_engine(self, signal_name: str) -> None:
        os.kill(self.stack.engine.pid, getattr(signal, signal_name))

    def engine_proc(self, name: str) -> str:
        return (Path("/proc") / str(self.stack.engine.pid) / name).read_text()

    def configured(self) -> dict[str, str]:
        return parse_facts(self.stack.path(f"{layout().conf_dir}/engine.env").read_text())

    def named_keys(self) -> dict[str, str]:
        return parse_named_keys(self.stack.path(layout().api_keys_file).read_text())

    def engine_props(self) -> dict:
        return httpx.get(f"http://127.0.0.1:{self.stack.ports['engine']}/props", timeout=30,
                         headers={"Authorization": f"Bearer {self.stack.api_key}"}).json()

    def access_log(self) -> str:
        return self.stack.path(f"{layout().log_dir}/access.log").read_text()

    def apply_context(self, changes: dict[str, str | None], expect_ready: bool = True) -> dict:
        """configure with the changed context, then what bootstrap does when it accepts it: the engine
        restarted on what configure wrote, nginx reloaded."""
        stack = self.stack
        stack.context = {k: v for k, v in {**stack.context, **changes}.items() if v is not None}
        start = time.monotonic()
        result = stack.configure(check=expect_ready)
        if result.returncode == 0:
            stack.stop_engine()
            try:
                stack.start_engine()
            except RuntimeError:  # the engine exited while loading (vm_fixtures.util.wait_healthy)
                if expect_ready:
                    raise
                stack.engine = None  # as a VM whose bootstrap failed: configured, not serving (the check judges)
            stack.reload_nginx()
        return {"reconfigure_s": round(time.monotonic() - start, 1)}

    def appliance_file(self, path: str) -> str:
        return self.stack.path(path).read_text()

    def current_endpoint(self) -> Endpoint:
        return Endpoint.of_stack(self.stack, speed=self.endpoint.measured_speed if self.endpoint else None)

    def report(self) -> str | None:
        return None  # the local stack is configured, never bootstrapped: engine.env holds what it decided

    def model_host_address(self) -> str:
        return "127.0.0.1"

    def file_size(self, path: str) -> int:
        found = self.stack.path(path)
        return found.stat().st_size if found.exists() else 0

    def apply_context_interrupted(self, changes: dict[str, str | None], interrupt_when) -> dict:
        """configure killed outright mid-run (what a power cut leaves), then run again."""
        stack = self.stack
        stack.context = {k: v for k, v in {**stack.context, **changes}.items() if v is not None}
        start = time.monotonic()
        run = subprocess.Popen([stack.service, "configure"], env=stack.env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_until(interrupt_when, 300, interval=0.2, what="configure under way")
        finally:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(10)
        interrupted_s = round(time.monotonic() - start, 1)
        return {"interrupted_after_s": interrupted_s, **self.apply_context({})}

    def logs(self) -> str:
        """Everything the appliance logged (its proxy, engine and stage logs), as one text."""
        files = [*self.stack.path(layout().log_dir).glob("*.log"), *self.stack.path("/var/log/one-appliance").glob("*")]
        return "\n".join(f.read_text(errors="replace") for f in files if f.is_file())

    def collect_logs(self, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        for log in [*self.stack.path(layout().log_dir).glob("*.log"),
                    *self.stack.path("/var/log/one-appliance").glob("*.log")]:
            shutil.copy(log, dest / f"{log.parent.name}-{log.name}")


class VmTarget(Target):
    """The image booted with libvirt, once per CPU model (KVM where it really boots, else TCG)."""

    name = "vm"
    per_cpu_model = True
    boots_image = True

    @classmethod
    @contextlib.contextmanager
    def sharing(cls, settings: Settings) -> Iterator[object]:
        from vm_fixtures import LibvirtPlatform

        with heavy_job("conformance VMs"):
            platform = LibvirtPlatform()
            platform.reap()
            yield platform

    @classmethod
    def columns(cls, settings: Settings) -> list[str]:
        return settings.cpu_models

    @property
    def image(self) -> Path:
        return REPO / self.settings.image

    def announce(self) -> list[str]:
        if not self.image.exists():
            raise FileNotFoundError(f"no image at {self.image}: run `nox -s build` (or set SLM_CONFORMANCE_IMAGE)")
        self.decision = self.shared.decision(self.image, self.column)
        return [f"accelerator for {self.decision.line()}"]

    def start(self) -> VmTarget:
        self._running = contextlib.ExitStack()
        logs = REPO / self.settings.reports_dir / "logs" / f"boot-{self.column}"
        self.instance = self._running.enter_context(self.shared.booted(self.image, self.column, logs=logs))
        self.endpoint = Endpoint.of_guest(self.instance)
        return self

    def stop(self) -> None:
        self._running.close()

    def host(self):
        return self.instance

    def model_host_address(self) -> str:
        return "10.0.2.2"  # QEMU user networking's gateway: this machine's loopback

    def apply_context_interrupted(self, changes: dict[str, str | None], interrupt_when) -> dict:
        vm = self.instance
        context = {k: v for k, v in {**vm.context, **changes}.items() if v is not None}
        start = time.monotonic()
        vm.reconfigure(context, expect_ready=False)  # a new CONTEXT CD-ROM, then a reboot into it
        wait_until(interrupt_when, 900, interval=2, what="configure under way at boot")
        interrupted_s = round(time.monotonic() - start, 1)
        return {"interrupted_after_s": interrupted_s, **vm.restart()}

    def describe(self) -> list[str]:
        return ([f"- {self.column}: accelerator {self.decision.line()}"] if self.decision else []) + super().describe()


class UrlTarget(Target):
    """A deployed appliance: its URL, key and CA; with `ssh`, its host; with `destructive`, faults."""

    name = "url"

    @classmethod
    def destructive_refusal(cls, settings: Settings) -> str | None:
        if not settings.destructive:
            return "destructive: opt in with SLM_CONFORMANCE_DESTRUCTIVE=1 (and SLM_CONFORMANCE_SSH)"
        return None

    def start(self) -> UrlTarget:
        self.endpoint = Endpoint.of_settings(self.settings)
        self.guest = None
        if self.settings.ssh:
            from vm_fixtures import Guest

            s = self.settings
            self.guest = Guest.from_ssh(s.ssh, s.ssh_key, https_url=s.url, http_url=s.http_url,
                                        engine_url=s.engine_url, ca_file=s.ca_file)
            self.guest.disposable = s.disposable
        return self

    def host(self):
        if self.guest is None:
            raise Unsupported("host checks on a deployed appliance need ssh=user@host[:port] (SLM_CONFORMANCE_SSH)")
        return self.guest


def parse_facts(env_file: str) -> dict[str, str]:
    """KEY=VALUE lines (model.env, engine.env's facts), the engine's argument line left out."""
    return dict(line.split("=", 1) for line in env_file.splitlines()
                if "=" in line and not line.startswith("SLM_ENGINE_ARGS="))


def parse_named_keys(text: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in text.splitlines() if " " in line)


def capability(what):
    """A target's answer, or the check reported not applicable with the target's reason."""
    try:
        return what()
    except Unsupported as reason:
        not_applicable(str(reason))


TARGETS: dict[str, type[Target]] = {cls.name: cls for cls in (LocalTarget, VmTarget, UrlTarget)}


def target_class(settings: Settings) -> type[Target]:
    return TARGETS[settings.target]

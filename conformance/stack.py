"""The `local` target: the appliance's own rendered configuration, run with real nginx and a real
llama-server on loopback (no VM). Like llama.cpp's ServerProcess: start, poll readiness, fail fast."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from vm_fixtures.layout import layout
from vm_fixtures.util import free_ports, wait_healthy, wait_until

from .support import REPO

SERVICE = REPO / "appliance" / "service.sh"
NJS_MODULE = "/usr/lib/nginx/modules/ngx_http_js_module.so"


class StackError(RuntimeError):
    pass


@dataclass
class LocalStack:
    """One appliance rendered into `root` (SLM_ROOT) and served on free loopback ports."""

    artifacts: Path
    context: dict[str, str] = field(default_factory=dict)
    root: Path | None = None
    threads: int = 1  # two busy cores: -t 2 collapses under contention (shared notes)
    service: Path = SERVICE  # the appliance's service.sh (another checkout's, to compare builds)
    ports: dict[str, int] = field(default_factory=lambda: dict(zip(("engine", "https", "http"), free_ports(3),
                                                                    strict=True)))
    engine: subprocess.Popen | None = None
    nginx: subprocess.Popen | None = None
    # A root this stack made is removed by stop(): a stack can hold a fetched model (about 95 MB), and
    # a run starts dozens.
    made_root: bool = field(default=False, init=False, repr=False)

    def __post_init__(self):
        if self.root is None:
            self.root, self.made_root = Path(tempfile.mkdtemp(prefix="slm-local-")), True
        app = self.path(layout().app_dir)
        (app / "models").mkdir(parents=True, exist_ok=True)
        for name, target in (("engine", self.artifacts / "engine"), ("model.env", self.artifacts / "model.env"),
                             ("models/model.gguf", self.artifacts / "model.gguf"),
                             ("models/chat-template.jinja", self.artifacts / "chat-template.jinja"),
                             ("architectures.txt", self.artifacts / "architectures.txt")):
            link = app / name
            if target.exists() and not link.exists():
                link.symlink_to(target.resolve())

    # -- the appliance's lifecycle, as the image runs it ----------------------------------------
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ONEAPP_")}
        env.update(SLM_ROOT=str(self.root), SLM_ENGINE_PORT=str(self.ports["engine"]),
                   SLM_HTTPS_PORT=str(self.ports["https"]), SLM_HTTP_PORT=str(self.ports["http"]))
        env.setdefault("ONEAPP_SLM_THREADS", str(self.threads))
        env.update(self.context)
        return env

    def configure(self, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        # The stage's log (stdout and stderr, as tee'd to configure.log) comes back as stdout.
        result = subprocess.run([self.service, "configure"], env=self.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise StackError(f"configure failed ({result.returncode}):\n{result.stdout}")
        return result

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    @property
    def api_key(self) -> str:
        return self.path(layout().api_key).read_text()

    @property
    def ca_file(self) -> Path:
        return self.path(layout().ca_cert)

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['https']}"

    def engine_args(self) -> list[str]:
        env_file = self.path(f"{layout().conf_dir}/engine.env").read_text()
        line = next(x for x in env_file.splitlines() if x.startswith("SLM_ENGINE_ARGS="))
        args = shlex.split(shlex.split(line.partition("=")[2])[0])
        return [str(self.path(layout().engine_binary)), *args,
                "--api-key-file", str(self.path(layout().api_key))]

    # -- processes ------------------------------------------------------------------------------
    def start_engine(self, timeout: float = 120) -> None:
        log = open(self.path(f"{layout().log_dir}/engine.log"), "ab")  # noqa: SIM115 (owned by Popen)
        self.engine = subprocess.Popen(self.engine_args(), stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        wait_healthy(self.engine, f"http://127.0.0.1:{self.ports['engine']}/health", timeout, "llama-server",
                     self.engine_log)

    def engine_log(self) -> str:
        return self.path(f"{layout().log_dir}/engine.log").read_text(errors="replace")

    def main_conf(self) -> Path:
        conf = self.path("/etc/nginx-local/nginx.conf")
        tmp = self.path("/var/lib/nginx-local")
        tmp.mkdir(parents=True, exist_ok=True)
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(
            f"load_module {NJS_MODULE};\n"
            f"{'user root;' if os.geteuid() == 0 else ''}\n"
            "worker_processes 1;\n"
            f"pid {tmp}/nginx.pid;\n"
            f"error_log {self.path(f'{layout().log_dir}/nginx-main.log')} warn;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            + "".join(f"  {k}_temp_path {tmp}/{k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
            + f"  include {self.path(f'{layout().conf_dir}/nginx.conf')};\n}}\n"
        )
        return conf

    def nginx_test(self) -> subprocess.CompletedProcess:
        return subprocess.run(["nginx", "-t", "-q", "-c", str(self.main_conf())], capture_output=True,
                              text=True, timeout=30)

    def start_nginx(self, timeout: float = 20) -> None:
        self.nginx = subprocess.Popen(["nginx", "-c", str(self.main_conf()), "-g", "daemon off;"],
                                      stderr=subprocess.PIPE, start_new_session=True)

        def listening() -> bool:
            if self.nginx.poll() is not None:
                raise StackError(f"nginx exited: {self.nginx.stderr.read().decode(errors='replace')}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.ports["https"]), 1):
                return True
            return False

        wait_until(listening, timeout, interval=0.1, what="nginx listening")

    def reload_nginx(self) -> None:
        self.nginx.send_signal(signal.SIGHUP)
        time.sleep(1.0)

    def start(self) -> LocalStack:
        self.configure()
        self.start_engine()
        self.start_nginx()
        return self

    def stop_engine(self) -> None:
        _stop(self.engine)
        self.engine = None

    def stop(self) -> None:
        """The end of the stack: nginx and the engine stopped, and a root it made removed."""
        _stop(self.nginx)
        self.stop_engine()
        self.nginx = None
        if self.made_root:
            shutil.rmtree(self.root, ignore_errors=True)


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)

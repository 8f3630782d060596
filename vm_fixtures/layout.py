"""Where the appliance keeps things, read from the appliance script itself by bash (as the image
build reads its parameters), so the suite names each path in one place: appliance.sh."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

APPLIANCE = Path(__file__).resolve().parent.parent / "appliance"
SCALARS = ("SLM_API_KEY_FILE", "SLM_CA_CERT", "SLM_CONF_DIR", "SLM_STATE_DIR", "SLM_LOG_DIR", "SLM_REPORT",
           "SLM_ENGINE_UNIT", "SLM_ENGINE_PORT", "SLM_APP_DIR", "SLM_RENEW_UNIT",
           "SLM_API_KEYS_FILE", "SLM_NGINX_SITE", "SLM_MODEL_STORE", "ONEAPP_SLM_MAX_TOKENS")
LISTS = ("SLM_GENERATED_FILES", "SLM_SECRET_FILES")


@dataclass(frozen=True)
class Layout:
    api_key: str
    ca_cert: str
    conf_dir: str
    state_dir: str
    log_dir: str
    report: str
    engine_unit: str
    engine_port: int
    app_dir: str
    renew_unit: str
    api_keys_file: str
    nginx_site: str  # where configure links nginx.conf into nginx's own configuration
    model_store: str  # models fetched by URL, named sha256-<hex>.gguf (.part while downloading)
    default_max_tokens: int  # the answer length of a request that sets none, unless the context says
    generated_files: tuple[str, ...]
    secret_files: tuple[str, ...]

    @property
    def model(self) -> str:
        return f"{self.app_dir}/models/model.gguf"

    @property
    def engine_binary(self) -> str:
        return f"{self.app_dir}/engine/llama-server"


@cache
def layout() -> Layout:
    """The image's layout (SLM_ROOT empty, the appliance's own ports)."""
    script = ('SLM_ROOT=""; . "$1/lib/common.sh"; . "$1/service.d/appliance.sh"; '
              + "".join(f'printf "%s\\0" "${{{name}}}"; ' for name in SCALARS)
              + "".join(f'printf "%s\\n" "${{{name}[@]}}" | paste -sd" "; printf "\\0"; ' for name in LISTS))
    out = subprocess.run(["bash", "-c", script, "layout", str(APPLIANCE)], capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin"}).stdout.split("\0")[:-1]
    scalars, lists = out[:len(SCALARS)], [tuple(x.split()) for x in out[len(SCALARS):]]
    api_key, ca_cert, conf, state, logs, report, unit, port, app, renew, keys, site, store, max_tokens = scalars
    return Layout(api_key, ca_cert, conf, state, logs, report, unit, int(port), app, renew, keys, site, store,
                  int(max_tokens), *lists)

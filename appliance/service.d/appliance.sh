# shellcheck shell=bash
# SLM-Copilot: an OpenAI-compatible coding-assistant endpoint on CPU (llama-server behind nginx).
# one-apps appliance script: sourced by the service entry, which provides msg, is_true, write_file.
# shellcheck disable=SC2034  # the ONE_SERVICE_* metadata is read by the entry and the image build

ONE_SERVICE_NAME='Service SLM-Copilot - private CPU coding assistant'
ONE_SERVICE_VERSION='0.1.0'
ONE_SERVICE_BUILD=$(date +%s)
ONE_SERVICE_SHORT_DESCRIPTION='OpenAI-compatible chat API for coding assistants, served on CPU behind TLS'
ONE_SERVICE_RECONFIGURABLE=true

ONE_SERVICE_PARAMS=(
    'ONEAPP_SLM_API_KEY'        'configure' 'API key clients send (empty: generated sk-... once, kept)' 'O|password'
    'ONEAPP_SLM_API_KEYS'       'configure' 'More keys, one per person or tool: id:key or id alone (generated, kept), comma-separated' 'O|password'
    'ONEAPP_SLM_CONTEXT_SIZE'   'configure' 'Context size in tokens (empty: the largest the model takes that fits 3/4 of the free RAM; the rest holds idle sessions)' 'O|number'
    'ONEAPP_SLM_THREADS'        'configure' 'Engine threads (0: physical cores)' 'O|number'
    'ONEAPP_SLM_PARALLEL'       'configure' 'Requests served at once (engine slots)' 'O|number'
    'ONEAPP_SLM_TEMPERATURE'    'configure' 'Default sampling temperature (0 to 2)' 'O|text'
    'ONEAPP_SLM_MAX_TOKENS'     'configure' 'Answer length in tokens for a request that sets none (0: until the model stops or the context is full)' 'O|number'
    'ONEAPP_SLM_TLS_MODE'       'configure' 'TLS certificate: selfsigned, custom or letsencrypt' 'O|list|selfsigned,custom,letsencrypt'
    'ONEAPP_SLM_TLS_CERT'       'configure' 'Custom TLS certificate chain, base64 PEM (TLS_MODE=custom)' 'O|text64'
    'ONEAPP_SLM_TLS_KEY'        'configure' 'Custom TLS private key, base64 PEM (TLS_MODE=custom)' 'O|text64'
    'ONEAPP_SLM_DOMAIN'         'configure' 'DNS name of the endpoint (added to the certificate)' 'O|text'
    'ONEAPP_SLM_ACME_EMAIL'     'configure' "Contact e-mail for Let's Encrypt (TLS_MODE=letsencrypt)" 'O|text'
    'ONEAPP_SLM_ACME_SERVER'    'configure' 'ACME directory URL (TLS_MODE=letsencrypt)' 'O|text'
    'ONEAPP_SLM_CORS_ORIGINS'   'configure' 'Browser origins allowed (comma-separated, or *)' 'O|text'
    'ONEAPP_SLM_RATE_LIMIT'     'configure' 'Requests per second per client address (burst: twice that)' 'O|number'
    'ONEAPP_SLM_KEY_RATE_LIMIT' 'configure' 'Requests per second per API key (burst: twice that; empty: as per address)' 'O|number'
    'ONEAPP_SLM_LOG_LEVEL'      'configure' 'Log level: error, warn, info or debug' 'O|list|error,warn,info,debug'
    'ONEAPP_SLM_MODEL_URL'      'configure' 'GGUF model to serve instead of the built-in one, http(s) URL (empty: the built-in model)' 'O|text'
    'ONEAPP_SLM_MODEL_SHA256'   'configure' 'sha256 of that GGUF file, 64 hex digits (required with MODEL_URL: nothing unverified is served)' 'O|text'
    'ONEAPP_SLM_MODEL_ID'       'configure' 'Model id clients see (empty: the file name without .gguf, or the built-in id)' 'O|text'
    'ONEAPP_SLM_MODEL_CHAT_TEMPLATE' 'configure' 'Chat template (Jinja, base64) for a model that carries none, or to replace its own' 'O|text64'
)

ONE_SERVICE_DESCRIPTION=$(cat <<'EOD'
SLM-Copilot serves a GGUF coding model on CPU through an OpenAI-compatible API
(/v1/chat/completions with streaming, /v1/completions, /v1/models) behind nginx with TLS.
Clients (Cline, Continue, aider, the openai SDK) send the API key as a Bearer token;
curl can use Basic auth with any user name and the key as password.
The endpoint, API key, CA fingerprint and client settings are in /etc/one-appliance/config.
EOD
)

# Defaults (one-apps style: context wins, empty means default).
ONEAPP_SLM_API_KEY="${ONEAPP_SLM_API_KEY:-}"
ONEAPP_SLM_API_KEYS="${ONEAPP_SLM_API_KEYS:-}"
ONEAPP_SLM_CONTEXT_SIZE="${ONEAPP_SLM_CONTEXT_SIZE:-}"
ONEAPP_SLM_THREADS="${ONEAPP_SLM_THREADS:-0}"
ONEAPP_SLM_PARALLEL="${ONEAPP_SLM_PARALLEL:-2}"
ONEAPP_SLM_TEMPERATURE="${ONEAPP_SLM_TEMPERATURE:-0.15}"
ONEAPP_SLM_MAX_TOKENS="${ONEAPP_SLM_MAX_TOKENS:-4096}"
ONEAPP_SLM_TLS_MODE="${ONEAPP_SLM_TLS_MODE:-selfsigned}"
ONEAPP_SLM_TLS_CERT="${ONEAPP_SLM_TLS_CERT:-}"
ONEAPP_SLM_TLS_KEY="${ONEAPP_SLM_TLS_KEY:-}"
ONEAPP_SLM_DOMAIN="${ONEAPP_SLM_DOMAIN:-}"
ONEAPP_SLM_ACME_EMAIL="${ONEAPP_SLM_ACME_EMAIL:-}"
ONEAPP_SLM_ACME_SERVER="${ONEAPP_SLM_ACME_SERVER:-https://acme-v02.api.letsencrypt.org/directory}"
ONEAPP_SLM_CORS_ORIGINS="${ONEAPP_SLM_CORS_ORIGINS:-*}"
ONEAPP_SLM_RATE_LIMIT="${ONEAPP_SLM_RATE_LIMIT:-10}"
ONEAPP_SLM_KEY_RATE_LIMIT="${ONEAPP_SLM_KEY_RATE_LIMIT:-${ONEAPP_SLM_RATE_LIMIT}}"
ONEAPP_SLM_LOG_LEVEL="${ONEAPP_SLM_LOG_LEVEL:-warn}"
ONEAPP_SLM_MODEL_URL="${ONEAPP_SLM_MODEL_URL:-}"
ONEAPP_SLM_MODEL_SHA256="${ONEAPP_SLM_MODEL_SHA256:-}"
ONEAPP_SLM_MODEL_ID="${ONEAPP_SLM_MODEL_ID:-}"
ONEAPP_SLM_MODEL_CHAT_TEMPLATE="${ONEAPP_SLM_MODEL_CHAT_TEMPLATE:-}"

# Layout. SLM_ROOT (lib/common.sh) is empty in the image; ports are fixed there too.
SLM_APP_DIR="${SLM_ROOT}/opt/slm-copilot"
SLM_CONF_DIR="${SLM_ROOT}/etc/slm-copilot"
SLM_STATE_DIR="${SLM_ROOT}/var/lib/slm-copilot"
SLM_TLS_DIR="${SLM_STATE_DIR}/tls"
SLM_LOG_DIR="${SLM_ROOT}/var/log/slm-copilot"
SLM_ACME_WEBROOT="${SLM_ROOT}/var/www/slm-copilot-acme"
SLM_REPORT="${SLM_ROOT}/etc/one-appliance/config"
SLM_MOTD="${SLM_ROOT}/etc/motd"
SLM_NGINX_SITE="${SLM_ROOT}/etc/nginx/conf.d/slm-copilot.conf"
SLM_API_KEY_FILE="${SLM_STATE_DIR}/api_key"
SLM_API_KEYS_FILE="${SLM_STATE_DIR}/api_keys"  # the named keys: "id key" per line
SLM_ENGINE_INPUTS="${SLM_ROOT}/run/slm-copilot/engine.inputs"  # what the running engine was started with
# Models fetched by URL, named by their sha256 (a name is a verified content); the engine reads them.
SLM_MODEL_STORE="${SLM_ROOT}/var/lib/slm-copilot-models"
SLM_MODEL_PROGRESS="${SLM_ROOT}/run/slm-copilot/model-download"  # a download's progress, one line
SLM_NOTICE_SITE="${SLM_ROOT}/run/slm-copilot/notice.conf"  # nginx's 503 site before the first configuration
SLM_CA_CERT="${SLM_TLS_DIR}/ca.crt"
SLM_ENGINE_UNIT=slm-copilot-engine
SLM_RENEW_UNIT=slm-copilot-renew
SLM_NGINX_FILES=(nginx.conf protected.conf proxy.conf headers.conf)  # rendered from templates/
SLM_NJS_FILES=(auth.js models.js)  # nginx's scripts, copied from templates/
SLM_ENGINE_PORT="${SLM_ENGINE_PORT:-8081}"
SLM_HTTPS_PORT="${SLM_HTTPS_PORT:-443}"
SLM_HTTP_PORT="${SLM_HTTP_PORT:-80}"
SLM_BODY_LIMIT=8m
SLM_USER=slm-copilot
SLM_TEMPLATES="$(dirname "${BASH_SOURCE[0]}")/../templates"
SLM_OS_RESERVE_MB=512      # kernel, nginx, sshd: kept free of the model and KV cache
SLM_COMPUTE_RESERVE_MB=256 # engine compute buffers beside weights and KV cache
SLM_PROMPT_CACHE_MAX_MB=8192 # the engine's own default: more holds sessions nobody comes back to
SLM_DISK_RESERVE_MB=256    # kept free on the model store's disk after a download (logs, journal)
SLM_TEMPLATE_MAX_BYTES=65536 # real ones are 2-30 KB; base64 of more nears the 128 KiB a variable may hold
# Certificate lifetimes (days). The server certificate stays within what browsers accept (398);
# both are re-issued by configure and the daily renew run before they end.
SLM_CA_DAYS=1825 SLM_CA_RENEW_DAYS=400 SLM_SERVER_DAYS=397 SLM_RENEW_DAYS=30

# Every file configure and bootstrap generate: identical across reboots with the same context.
SLM_GENERATED_FILES=(
    /etc/slm-copilot/engine.env /etc/slm-copilot/nginx.conf /etc/slm-copilot/secret.conf
    /etc/slm-copilot/protected.conf /etc/slm-copilot/proxy.conf /etc/slm-copilot/headers.conf
    /etc/slm-copilot/auth.js /etc/slm-copilot/models.js /var/lib/slm-copilot/api_key /var/lib/slm-copilot/api_keys
    /var/lib/slm-copilot/tls/ca.crt /var/lib/slm-copilot/tls/ca.key
    /var/lib/slm-copilot/tls/server.crt /var/lib/slm-copilot/tls/server.key
    /var/lib/slm-copilot/tls/active.crt /var/lib/slm-copilot/tls/active.key
    /etc/one-appliance/config /etc/motd
)
# The generated files only root may read (the conformance suite checks their modes).
SLM_SECRET_FILES=(
    /var/lib/slm-copilot/api_key /var/lib/slm-copilot/api_keys /etc/one-appliance/config /etc/slm-copilot/secret.conf
    /var/lib/slm-copilot/tls/ca.key /var/lib/slm-copilot/tls/server.key
)

# Distribution packages the appliance needs (install fetches what the image lacks).
SLM_PACKAGES=(nginx-light libnginx-mod-http-js openssl curl gettext-base libgomp1 certbot logrotate python3)
SLM_ERRORS=()  # what configure's validation rejected, one message per variable

# --- stages (one-apps order): install at image build, configure and bootstrap on every boot ----

service_help() {
    echo "${ONE_SERVICE_NAME} ${ONE_SERVICE_VERSION}"
    echo "${ONE_SERVICE_DESCRIPTION}"
    echo
    echo "Parameters (OpenNebula context):"
    local i
    for ((i = 0; i < ${#ONE_SERVICE_PARAMS[@]}; i += 4)); do
        printf '  %-26s %s\n' "${ONE_SERVICE_PARAMS[i]}" "${ONE_SERVICE_PARAMS[i + 2]}"
    done
}

service_install() {
    local stage="${SLM_STAGE:-/opt/slm-copilot-stage}" pkg missing=()
    for pkg in "${SLM_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then  # distribution packages only; engine and model are staged
        msg info "Installing ${missing[*]} from the distribution's archive"
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    msg info "Verifying staged artifacts in ${stage}"
    (cd "$stage" && sha256sum --quiet --strict -c SHA256SUMS) \
        || { msg error "Staged artifacts fail their SHA256SUMS in ${stage}"; return 1; }
    if ! getent passwd "$SLM_USER" >/dev/null; then
        useradd --system --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin "$SLM_USER"
    fi
    install -d -m 0755 "${SLM_APP_DIR}/engine" "${SLM_APP_DIR}/models"
    install -m 0755 "$stage"/engine/* "${SLM_APP_DIR}/engine/"
    install -m 0644 "$stage/model.gguf" "${SLM_APP_DIR}/models/model.gguf"
    install -m 0644 "$stage/model.env" "${SLM_APP_DIR}/model.env"
    install -m 0644 "$stage/architectures.txt" "${SLM_APP_DIR}/architectures.txt"
    if [ -f "$stage/chat-template.jinja" ]; then  # a tool-capable template for a model without one
        install -m 0644 "$stage/chat-template.jinja" "${SLM_APP_DIR}/models/chat-template.jinja"
    fi
    install -m 0644 "${SLM_TEMPLATES}/slm-copilot-engine.service" "${SLM_TEMPLATES}/${SLM_RENEW_UNIT}.service" \
        "${SLM_TEMPLATES}/${SLM_RENEW_UNIT}.timer" /etc/systemd/system/
    # nginx: restarted when it crashes (Debian's unit does not) and sandboxed like the engine.
    install -D -m 0644 "${SLM_TEMPLATES}/nginx-service.conf" /etc/systemd/system/nginx.service.d/slm-copilot.conf
    # Logs are rotated by size as well as daily (hourly checks), and the journal is capped: a
    # client must not be able to fill the disk through them.
    install -D -m 0644 "${SLM_TEMPLATES}/logrotate.conf" /etc/logrotate.d/slm-copilot
    install -D -m 0644 "${SLM_TEMPLATES}/logrotate-hourly.conf" /etc/systemd/system/logrotate.timer.d/slm-copilot.conf
    install -D -m 0644 "${SLM_TEMPLATES}/journald.conf" /etc/systemd/journald.conf.d/slm-copilot.conf
    # A certificate certbot renews is served at once (the daily timer would copy it too).
    install -D -m 0755 "${SLM_TEMPLATES}/certbot-deploy-hook" /etc/letsencrypt/renewal-hooks/deploy/slm-copilot
    rm -f /etc/nginx/sites-enabled/default
    systemctl daemon-reload
    systemctl disable nginx slm-copilot-engine >/dev/null 2>&1 || true  # bootstrap starts them
    "${SLM_APP_DIR}/engine/llama-server" --version
    load_model_facts
    msg info "Installed engine and model ${MODEL_ID}"
}

service_configure() {
    SLM_ERRORS=()
    # The model is fetched only for a context that is valid otherwise, and judged before anything
    # is rendered: a model that cannot serve changes nothing.
    if ! validate || ! select_model || ! validate_fit || ! trial_engine; then
        report_failure
        return 1
    fi
    rm -f "${SLM_REPORT}.rejected"
    install -d -m 0755 "$SLM_ACME_WEBROOT" "$(dirname "$SLM_REPORT")"
    make_log_dir
    install -d -m 0700 "$SLM_STATE_DIR" "$SLM_TLS_DIR"

    if [ -n "$ONEAPP_SLM_API_KEY" ]; then
        printf '%s' "$ONEAPP_SLM_API_KEY" | write_file "$SLM_API_KEY_FILE" 0600
    elif ! [[ "$(cat "$SLM_API_KEY_FILE" 2>/dev/null)" =~ ^sk-[A-Za-z0-9]{48}$ ]]; then
        printf 'sk-%s' "$(gen_password 48)" | write_file "$SLM_API_KEY_FILE" 0600
        msg info "Generated an API key (see ${SLM_REPORT})"
    fi
    write_named_keys
    render_tls "$SLM_TLS_DIR"
    local stage
    stage=$(mktemp -d "${SLM_CONF_DIR}.new.XXXXXX")
    chmod 0755 "$stage"
    render_nginx "$stage"
    local ctx cache_mb
    read -r _ ctx _ _ cache_mb < <(context_plan)
    render_engine "$stage" "$ctx" "$cache_mb"
    chmod 0600 "$stage/secret.conf"
    local f
    for f in "${SLM_NGINX_FILES[@]}" "${SLM_NJS_FILES[@]}" engine.env; do chmod 0644 "$stage/$f"; done
    [ ! -f "$stage/chat-template.jinja" ] || chmod 0644 "$stage/chat-template.jinja"
    local previous_model
    previous_model=$(configured_model_file)
    if ! commit_config "$stage"; then
        report_failure
        return 1
    fi
    prune_model_store "$SLM_MODEL_FILE" "$previous_model"
    msg info "Configured: context ${ctx} tokens, prompt cache ${cache_mb} MiB, TLS ${ONEAPP_SLM_TLS_MODE}, model ${MODEL_ID} (sha256 ${MODEL_SHA256})"
}

service_bootstrap() {
    # shellcheck source=/dev/null  # rendered by configure from validated values only
    . "${SLM_CONF_DIR}/engine.env"
    MODEL_ID=$SLM_MODEL_ID  # the model configure chose: built in, or fetched by URL
    systemctl enable -q "$SLM_ENGINE_UNIT" nginx "${SLM_RENEW_UNIT}.timer"
    systemctl start "${SLM_RENEW_UNIT}.timer"
    # A reload, not a restart, when nginx runs: streams in flight finish on the old workers while new
    # requests get the new configuration (a key removed is refused at once, the others go on).
    systemctl reload-or-restart nginx
    sleep 1  # `reload` returns before the new workers take over: the next request must see them
    # What the engine runs with: its arguments and its key (engine.env's facts lines are for the
    # report and the renewal; a change of TLS mode or domain must not restart the engine).
    local inputs
    inputs=$(printf '%s\n%s\n%s' "$SLM_ENGINE_ARGS" "$(cat "$SLM_API_KEY_FILE")" \
        "$(cat "${SLM_CONF_DIR}/chat-template.jinja" 2>/dev/null)" | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$SLM_ENGINE_INPUTS" 2>/dev/null)" = "$inputs" ] && systemctl is-active -q "$SLM_ENGINE_UNIT"; then
        msg info "The engine's configuration is unchanged: it keeps running (and serving what is in flight)"
    else
        # A unit that failed before (start limit hit) must get its fresh start.
        systemctl reset-failed "$SLM_ENGINE_UNIT" 2>/dev/null || true
        rm -f "$SLM_ENGINE_INPUTS"
        systemctl restart "$SLM_ENGINE_UNIT" || true  # a unit that does not start is judged below
    fi
    if ! wait_engine; then
        # Say so everywhere a user looks: the stage fails (no READY for OneGate), the report and
        # the login banner name the cause. nginx still answers, with 503 and Retry-After.
        SLM_STATUS="engine failed to start: journalctl -u ${SLM_ENGINE_UNIT}"
        msg error "Not serving: the ${SLM_STATUS}"
        write_report
        write_file "$SLM_MOTD" 0644 <<EOM
SLM-Copilot ${ONE_SERVICE_VERSION}: NOT serving, the ${SLM_STATUS}
EOM
        return 1
    fi
    install -d -m 0755 "$(dirname "$SLM_ENGINE_INPUTS")"
    echo "$inputs" > "$SLM_ENGINE_INPUTS"
    SLM_TOOLS=$(tool_support)
    msg info "Tool calls: ${SLM_TOOLS}"
    SLM_TLS_NOTE=""
    [ "$ONEAPP_SLM_TLS_MODE" = letsencrypt ] && { try_letsencrypt || msg warning "$SLM_TLS_NOTE"; }
    SLM_STATUS=ready
    write_report
    write_file "$SLM_MOTD" 0644 <<EOM
SLM-Copilot ${ONE_SERVICE_VERSION}: all set and ready to serve ${MODEL_ID}
Endpoint, API key and client settings: ${SLM_REPORT} (root only)
EOM
    msg info "Ready: $(sed -n 's/^endpoint = //p' "$SLM_REPORT")"
}

# The daily renewal (slm-copilot-renew.timer, and certbot's deploy hook after a renewal): re-issues
# what nears its end, copies a renewed Let's Encrypt pair, and reloads nginx when what it serves
# changed. It reads the TLS choice configure recorded, not the boot's context.
service_renew() {
    [ -s "${SLM_CONF_DIR}/engine.env" ] || { msg info "Not configured yet: nothing to renew"; return 0; }
    # shellcheck source=/dev/null
    . "${SLM_CONF_DIR}/engine.env"
    ONEAPP_SLM_TLS_MODE=${SLM_TLS_MODE:-selfsigned} ONEAPP_SLM_DOMAIN=${SLM_DOMAIN:-}
    if [ "$ONEAPP_SLM_TLS_MODE" = custom ]; then
        expires_within "${SLM_TLS_DIR}/active.crt" "$SLM_RENEW_DAYS" \
            && msg warning "The custom certificate ends $(cert_end -in "${SLM_TLS_DIR}/active.crt"): set a new ONEAPP_SLM_TLS_CERT"
        return 0
    fi
    local before
    before=$(cat "${SLM_TLS_DIR}/active.crt" 2>/dev/null)
    render_tls "$SLM_TLS_DIR"
    if [ "$(cat "${SLM_TLS_DIR}/active.crt")" != "$before" ]; then
        msg info "Serving a renewed certificate, valid until $(cert_end -in "${SLM_TLS_DIR}/active.crt")"
        [ -n "$SLM_ROOT" ] || systemctl reload nginx
    fi
}

service_cleanup() {
    rm -rf "${SLM_CONF_DIR}".new.* "${SLM_CONF_DIR}.last-good"
}

# --- configure's helpers: validate, render, swap in; a rejection changes nothing ---------------

reject() { # VARIABLE SHOWN-VALUE WHAT-IS-ALLOWED
    SLM_ERRORS+=("$1=$2 is invalid: $3")
}

shown() { # a value as it can be printed: quoted, one line, bounded
    local v="${1:0:64}"
    [ "${#1}" -gt 64 ] && v+="...(${#1} chars)"
    printf '%s' "${v@Q}" | tr '\n' ' '
}

check_int() { # VARIABLE MIN MAX MEANING
    local value="${!1}"
    if ! [[ "$value" =~ ^[0-9]{1,9}$ ]] || ((10#$value < $2 || 10#$value > $3)); then
        reject "$1" "$(shown "$value")" "expected a whole number from $2 to $3 ($4)"
        return 1
    fi
}

# SLM_MEMTOTAL_MB stands in for /proc/meminfo in the rendering tests (they run on one host size).
mem_total_mb() { echo "${SLM_MEMTOTAL_MB:-$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))}"; }

# The engine's default answer length: -1 is llama-server's "no limit".
max_tokens() { local n=$((10#$ONEAPP_SLM_MAX_TOKENS)); [ "$n" -eq 0 ] && n=-1; echo "$n"; }

physical_cores() {
    local cores
    cores=$(lscpu -p=CORE,SOCKET 2>/dev/null | grep -v '^#' | sort -u | wc -l)
    if [ "${cores:-0}" -gt 0 ]; then echo "$cores"; else nproc; fi
}

# model.env is written by the artifacts stage (MODEL_ID, MODEL_BYTES, MODEL_CTX_TRAIN,
# MODEL_KV_BYTES_PER_TOKEN, MODEL_SHA256): facts read from the GGUF header at build time.
load_model_facts() {
    # shellcheck source=/dev/null
    . "${SLM_APP_DIR}/model.env"
}

validate() {
    local vcpus
    vcpus=$(nproc)

    if [ -n "$ONEAPP_SLM_API_KEY" ] && ! [[ "$ONEAPP_SLM_API_KEY" =~ ^[A-Za-z0-9._~+/=-]{16,256}$ ]]; then
        reject ONEAPP_SLM_API_KEY "(hidden, ${#ONEAPP_SLM_API_KEY} chars)" \
            "expected 16 to 256 characters from A-Z a-z 0-9 . _ ~ + / = -, or empty to generate one"
    fi
    check_int ONEAPP_SLM_THREADS 0 "$vcpus" "0 = physical cores; more than the ${vcpus} vCPUs oversubscribes"
    check_int ONEAPP_SLM_PARALLEL 1 16 "concurrent requests"
    check_int ONEAPP_SLM_MAX_TOKENS 0 1048576 "tokens per answer when a request sets no max_tokens; 0 = no limit"
    check_int ONEAPP_SLM_RATE_LIMIT 1 100000 "requests per second per client"
    check_int ONEAPP_SLM_KEY_RATE_LIMIT 1 100000 "requests per second per API key"
    validate_named_keys
    if ! [[ "$ONEAPP_SLM_TEMPERATURE" =~ ^(0|1)(\.[0-9]{1,3})?$|^2(\.0{1,3})?$ ]]; then
        reject ONEAPP_SLM_TEMPERATURE "$(shown "$ONEAPP_SLM_TEMPERATURE")" "expected a number from 0 to 2, e.g. 0.2"
    fi
    case "$ONEAPP_SLM_LOG_LEVEL" in error|warn|info|debug) ;;
        *) reject ONEAPP_SLM_LOG_LEVEL "$(shown "$ONEAPP_SLM_LOG_LEVEL")" "expected error, warn, info or debug" ;;
    esac
    if [ -n "$ONEAPP_SLM_DOMAIN" ] && ! [[ "$ONEAPP_SLM_DOMAIN" =~ ^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$ ]]; then
        reject ONEAPP_SLM_DOMAIN "$(shown "$ONEAPP_SLM_DOMAIN")" "expected a DNS name such as copilot.example.com"
    fi
    local origin
    while IFS= read -r origin; do
        [[ "$origin" =~ ^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$ ]] && continue
        reject ONEAPP_SLM_CORS_ORIGINS "$(shown "$origin")" "expected * or comma-separated origins like https://ide.example.com"
    done < <(cors_origins)
    case "$ONEAPP_SLM_TLS_MODE" in
        selfsigned) ;;
        custom) validate_custom_tls ;;
        letsencrypt)
            [ -n "$ONEAPP_SLM_DOMAIN" ] || reject ONEAPP_SLM_DOMAIN "''" "required when ONEAPP_SLM_TLS_MODE=letsencrypt"
            [[ "$ONEAPP_SLM_ACME_EMAIL" =~ ^[^@[:space:]\'\"]+@[^@[:space:]\'\"]+$ ]] \
                || reject ONEAPP_SLM_ACME_EMAIL "$(shown "$ONEAPP_SLM_ACME_EMAIL")" "expected an e-mail address (required for letsencrypt)"
            [[ "$ONEAPP_SLM_ACME_SERVER" =~ ^https?://[^[:space:]\'\"\;]+$ ]] \
                || reject ONEAPP_SLM_ACME_SERVER "$(shown "$ONEAPP_SLM_ACME_SERVER")" "expected an ACME directory URL" ;;
        *) reject ONEAPP_SLM_TLS_MODE "$(shown "$ONEAPP_SLM_TLS_MODE")" "expected selfsigned, custom or letsencrypt" ;;
    esac
    validate_model_params
    [ "${#SLM_ERRORS[@]}" -eq 0 ]
}

# The context size against the chosen model and the RAM (after select_model: its facts decide).
validate_fit() {
    local fits ctx free_mb kv_mb_per_1k mem_mb
    mem_mb=$(mem_total_mb)
    read -r fits ctx free_mb kv_mb_per_1k _ < <(context_plan)
    if [ -z "$ONEAPP_SLM_CONTEXT_SIZE" ]; then
        if [ "$ctx" -lt 1024 ] && [ -n "$ONEAPP_SLM_MODEL_URL" ]; then
            reject ONEAPP_SLM_MODEL_URL "$(url_shown)" "the model ${MODEL_ID} ($((MODEL_BYTES / 1048576)) MiB) leaves no room for a context in ${mem_mb} MiB RAM: give the VM more memory or choose a smaller model"
        elif [ "$ctx" -lt 1024 ]; then
            reject ONEAPP_SLM_CONTEXT_SIZE "''" "no context fits: ${mem_mb} MiB RAM minus model $((MODEL_BYTES / 1048576)) MiB and reserves leaves ${free_mb} MiB; give the VM more memory"
        fi
    elif check_int ONEAPP_SLM_CONTEXT_SIZE 512 "$MODEL_CTX_TRAIN" "the model ${MODEL_ID} was trained for ${MODEL_CTX_TRAIN} tokens" \
        && [ "$ctx" -gt "$fits" ]; then
        reject ONEAPP_SLM_CONTEXT_SIZE "$ctx" "needs $((ctx * kv_mb_per_1k / 1024)) MiB of KV cache but ${mem_mb} MiB RAM leaves ${free_mb} MiB after the model and reserves: at most ${fits} tokens fit"
    fi
    [ "${#SLM_ERRORS[@]}" -eq 0 ]
}

validate_custom_tls() {
    local cert key
    cert=$(printf '%s' "$ONEAPP_SLM_TLS_CERT" | base64 -d 2>/dev/null) || cert=""
    key=$(printf '%s' "$ONEAPP_SLM_TLS_KEY" | base64 -d 2>/dev/null) || key=""
    if ! openssl x509 -noout <<< "$cert" 2>/dev/null; then
        reject ONEAPP_SLM_TLS_CERT "(${#ONEAPP_SLM_TLS_CERT} chars)" "expected a base64-encoded PEM certificate"
    elif ! openssl pkey -noout <<< "$key" 2>/dev/null; then
        reject ONEAPP_SLM_TLS_KEY "(hidden)" "expected a base64-encoded PEM private key"
    elif [ "$(openssl x509 -noout -pubkey <<< "$cert")" != "$(openssl pkey -pubout <<< "$key")" ]; then
        reject ONEAPP_SLM_TLS_KEY "(hidden)" "the key does not match ONEAPP_SLM_TLS_CERT"
    elif ! openssl x509 -noout -checkend 0 <<< "$cert" >/dev/null; then
        reject ONEAPP_SLM_TLS_CERT "(expired $(cert_end <<< "$cert"))" \
            "the certificate has expired: give a current one"
    else
        # nginx's OpenSSL (security level 2) refuses weaker keys: name the field here rather than
        # leave it to nginx -t's message.
        local text algo bits min=0
        text=$(openssl x509 -noout -text <<< "$cert")
        algo=$(sed -n 's/^ *Public Key Algorithm: //p' <<< "$text" | head -n 1)
        bits=$(sed -n 's/.*Public-Key: (\([0-9]*\) bit).*/\1/p' <<< "$text" | head -n 1)
        case "$algo" in rsaEncryption) min=2048 ;; id-ecPublicKey) min=256 ;; esac
        if [ "${bits:-0}" -lt "$min" ]; then
            reject ONEAPP_SLM_TLS_CERT "(${bits:-?}-bit ${algo} key)" "expected an RSA key of at least 2048 bits or an EC key of at least 256"
        fi
    fi
}

# Named keys: ids a-z 0-9 _ - (they appear in the access log), each id and each key once. Key
# values never appear in a message: only their id and length.
validate_named_keys() {
    local entry id key ids=" default " keys=" ${ONEAPP_SLM_API_KEY} "
    while IFS= read -r entry; do
        id=${entry%%:*}
        if ! [[ "$id" =~ ^[a-z0-9][a-z0-9_-]{0,31}$ ]]; then
            reject ONEAPP_SLM_API_KEYS "$(shown "$id")" "key ids are 1 to 32 characters a-z 0-9 _ - (id:key or id, comma-separated)"
            continue
        fi
        [[ "$ids" == *" ${id} "* ]] && reject ONEAPP_SLM_API_KEYS "$(shown "$id")" "the id is used twice (default is ONEAPP_SLM_API_KEY's)"
        ids+="${id} "
        [[ "$entry" == *:* ]] || continue
        key=${entry#*:}
        if ! [[ "$key" =~ ^[A-Za-z0-9._~+/=-]{16,256}$ ]]; then
            reject ONEAPP_SLM_API_KEYS "(${id}'s key hidden, ${#key} chars)" "expected 16 to 256 characters from A-Z a-z 0-9 . _ ~ + / = -, or the id alone to generate one"
        elif [[ "$keys" == *" ${key} "* ]]; then
            reject ONEAPP_SLM_API_KEYS "(${id}'s key hidden)" "another id already has this key: give each its own"
        fi
        keys+="${key} "
    done < <(named_key_entries)
}

# --- the model: built in, or fetched by URL, verified and judged before it replaces the served one

validate_model_params() {
    local sum=${ONEAPP_SLM_MODEL_SHA256,,}
    if [ -n "$ONEAPP_SLM_MODEL_URL" ]; then
        # What a URL may hold, no more: nothing a shell, nginx or curl would read as more than a URL.
        [[ "$ONEAPP_SLM_MODEL_URL" =~ ^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/[A-Za-z0-9._~%/+:@,-]*(\?[A-Za-z0-9._~%/+:@,=&-]*)?$ ]] \
            || reject ONEAPP_SLM_MODEL_URL "$(url_shown)" "expected an http:// or https:// URL of a GGUF file, such as https://huggingface.co/ORG/REPO/resolve/main/MODEL.gguf (no user:password@, no spaces or quotes)"
        [[ "$sum" =~ ^[0-9a-f]{64}$ ]] \
            || reject ONEAPP_SLM_MODEL_SHA256 "$(shown "$ONEAPP_SLM_MODEL_SHA256")" "expected the file's sha256, 64 hex digits as sha256sum prints them (required with ONEAPP_SLM_MODEL_URL: nothing unverified is served)"
    elif [ -n "$sum" ]; then
        reject ONEAPP_SLM_MODEL_SHA256 "$(shown "$ONEAPP_SLM_MODEL_SHA256")" "given without ONEAPP_SLM_MODEL_URL: set the URL of the model it verifies, or leave both empty for the built-in model"
    fi
    if [ -n "$ONEAPP_SLM_MODEL_ID" ] && ! [[ "$ONEAPP_SLM_MODEL_ID" =~ ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$ ]]; then
        reject ONEAPP_SLM_MODEL_ID "$(shown "$ONEAPP_SLM_MODEL_ID")" "expected 1 to 128 characters A-Z a-z 0-9 . _ : - (the id clients send as \"model\")"
    fi
    if [ -n "$ONEAPP_SLM_MODEL_CHAT_TEMPLATE" ]; then
        local bytes
        if ! bytes=$(printf '%s' "$ONEAPP_SLM_MODEL_CHAT_TEMPLATE" | base64 -d 2>/dev/null | wc -c) || [ "$bytes" -eq 0 ] \
            || ! printf '%s' "$ONEAPP_SLM_MODEL_CHAT_TEMPLATE" | base64 -d | grep -q '{[{%]'; then
            reject ONEAPP_SLM_MODEL_CHAT_TEMPLATE "(${#ONEAPP_SLM_MODEL_CHAT_TEMPLATE} chars)" "expected a Jinja chat template, base64-encoded (base64 -w0 template.jinja)"
        elif [ "$bytes" -gt "$SLM_TEMPLATE_MAX_BYTES" ]; then
            reject ONEAPP_SLM_MODEL_CHAT_TEMPLATE "(${bytes} bytes)" "a chat template is at most ${SLM_TEMPLATE_MAX_BYTES} bytes"
        fi
    fi
}

# The URL as messages show it: its query left out (a signed URL carries its credential there).
url_shown() {
    local url=${ONEAPP_SLM_MODEL_URL%%\?*}
    [ "$url" = "$ONEAPP_SLM_MODEL_URL" ] || url+="?(query hidden)"
    shown "$url"
}

# The model configure serves, as MODEL_* facts and SLM_MODEL_FILE: the built-in one, or the one
# ONEAPP_SLM_MODEL_URL names, fetched once into the store and judged on every configure.
select_model() {
    load_model_facts
    SLM_MODEL_FILE="${SLM_APP_DIR}/models/model.gguf" MODEL_SOURCE=built-in
    MODEL_ID=${ONEAPP_SLM_MODEL_ID:-$MODEL_ID}
    [ -n "$ONEAPP_SLM_MODEL_URL" ] || return 0
    local sum=${ONEAPP_SLM_MODEL_SHA256,,}
    SLM_MODEL_FILE="${SLM_MODEL_STORE}/sha256-${sum}.gguf"
    if [ ! -s "$SLM_MODEL_FILE" ]; then
        fetch_model "$SLM_MODEL_FILE" || return 1
    fi
    read_model_header "$SLM_MODEL_FILE" || return 1
    MODEL_SHA256=$sum MODEL_CHAT_TEMPLATE=""  # the built-in model's tool template is for that model only
    MODEL_SOURCE=$(printf '%s' "${ONEAPP_SLM_MODEL_URL%%\?*}" | tr -c 'A-Za-z0-9._/:-' '_')
    MODEL_ID=${ONEAPP_SLM_MODEL_ID:-$(model_id_from_url)}
    if ! grep -qxF "$MODEL_ARCH" "${SLM_APP_DIR}/architectures.txt"; then
        reject ONEAPP_SLM_MODEL_URL "$(url_shown)" "the model's architecture '${MODEL_ARCH}' is not one this engine loads (see ${SLM_APP_DIR}/architectures.txt): choose a GGUF of a supported architecture"
    fi
    if [ "$MODEL_HAS_CHAT_TEMPLATE" != 1 ] && [ -z "$ONEAPP_SLM_MODEL_CHAT_TEMPLATE" ]; then
        reject ONEAPP_SLM_MODEL_URL "$(url_shown)" "the GGUF carries no chat template: set ONEAPP_SLM_MODEL_CHAT_TEMPLATE (base64 Jinja) or choose a chat model"
    fi
    [ "${#SLM_ERRORS[@]}" -eq 0 ]
}

# A model or chat template the operator gave is loaded once by the engine itself before it may
# replace what serves: a GGUF whose header reads well can still lack a tensor or hold a type this
# engine does not know, and a template can fail to parse; either would leave the appliance not
# serving after the swap. The trial is small (512 tokens, no warmup, the weights mapped rather than
# read), runs as the engine's user on a private socket beside the engine that serves, and is skipped
# when neither the model nor the template changed.
trial_engine() {
    [ -n "${ONEAPP_SLM_MODEL_URL}${ONEAPP_SLM_MODEL_CHAT_TEMPLATE}" ] || return 0
    local parent=/run/slm-copilot dir ctx cache_mb args pid started loaded="" reason
    # A scratch root (the local target) would put the socket past the 108 bytes a socket path may have.
    [ -z "$SLM_ROOT" ] || parent=${TMPDIR:-/tmp}
    install -d -m 0755 "$parent"
    dir=$(mktemp -d "${parent}/trial.XXXXXX")
    read -r _ ctx _ _ cache_mb < <(context_plan)
    render_engine "$dir" "$ctx" "$cache_mb"
    if [ "$(configured_model_file)" = "$SLM_MODEL_FILE" ] \
        && [ "$(cat "$dir/chat-template.jinja" 2>/dev/null)" = "$(cat "${SLM_CONF_DIR}/chat-template.jinja" 2>/dev/null)" ]; then
        rm -rf "$dir"
        return 0
    fi
    # shellcheck source=/dev/null  # rendered just above from validated values
    args=$(. "$dir/engine.env" && printf '%s' "$SLM_ENGINE_ARGS")
    args=${args//"${SLM_CONF_DIR}/chat-template.jinja"/"${dir}/chat-template.jinja"}  # not swapped in yet
    local -a as_engine=()
    if [ -z "$SLM_ROOT" ]; then
        chown -R "${SLM_USER}:" "$dir"  # its files too: configure's umask may keep them from others
        as_engine=(setpriv "--reuid=${SLM_USER}" "--regid=${SLM_USER}" --clear-groups --no-new-privs)
    fi
    started=$SECONDS
    # shellcheck disable=SC2086  # split as the engine's unit splits $SLM_ENGINE_ARGS; later flags win
    "${as_engine[@]}" timeout "${SLM_ENGINE_LOAD_TIMEOUT:-900}" "${SLM_APP_DIR}/engine/llama-server" $args \
        --host "$dir/trial.sock" --ctx-size 512 --parallel 1 --cache-ram 0 --threads 1 --no-warmup \
        > "$dir/log" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        if curl -fsS -o /dev/null --max-time 5 --unix-socket "$dir/trial.sock" http://trial/health 2>/dev/null; then
            loaded=1
            break
        fi
        sleep 0.2
    done
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    if [ -n "$loaded" ]; then
        msg info "The engine loads ${MODEL_ID} with this configuration (a trial of $((SECONDS - started)) s)"
        rm -rf "$dir"
        return 0
    fi
    # The engine's first error line, without its timestamp, is the reason an operator can act on.
    reason=$(grep -m 1 -i -E ' E |error' "$dir/log" | sed 's/^[0-9.]* E *//' | cut -c1-240)
    if [ -z "$reason" ] && [ $((SECONDS - started)) -ge "${SLM_ENGINE_LOAD_TIMEOUT:-900}" ]; then
        reason="it did not load within ${SLM_ENGINE_LOAD_TIMEOUT:-900} s"
    fi
    [ -n "$reason" ] || reason="it stopped after $((SECONDS - started)) s without an error line"
    rm -rf "$dir"
    if [ -n "$ONEAPP_SLM_MODEL_CHAT_TEMPLATE" ] && { [ -z "$ONEAPP_SLM_MODEL_URL" ] || [[ "$reason" == *template* ]]; }; then
        reject ONEAPP_SLM_MODEL_CHAT_TEMPLATE "(${#ONEAPP_SLM_MODEL_CHAT_TEMPLATE} chars)" "the engine cannot use this template (${reason}): check it against the model's own, in llama.cpp's Jinja"
    else
        reject ONEAPP_SLM_MODEL_URL "$(url_shown)" "the engine cannot load this model (${reason}): choose a GGUF this engine ($("${SLM_APP_DIR}/engine/llama-server" --version 2>&1 | sed -n 's/^version: .*(build \([0-9]*\).*/llama.cpp b\1/p')) loads"
    fi
    return 1
}

# The header's facts as MODEL_* variables (read as data, never sourced: the header is not ours).
read_model_header() {
    local out key value
    if ! out=$(python3 "$(dirname "${BASH_SOURCE[0]}")/../lib/gguf_facts.py" "$1" 2>&1); then
        reject ONEAPP_SLM_MODEL_URL "$(url_shown)" "the file is not a usable GGUF model ($(head -n 1 <<< "$out")): check the URL points at a .gguf file"
        return 1
    fi
    while IFS='=' read -r key value; do
        case "$key" in MODEL_ARCH|MODEL_BYTES|MODEL_CTX_TRAIN|MODEL_KV_BYTES_PER_TOKEN|MODEL_HAS_CHAT_TEMPLATE)
            printf -v "$key" '%s' "$value" ;;
        esac
    done <<< "$out"
}

# The file name without .gguf, as a model id (what Hugging Face names files: Org-Model-Q4_K_M.gguf).
model_id_from_url() {
    local name=${ONEAPP_SLM_MODEL_URL%%\?*}
    name=${name##*/}
    name=${name%.gguf}
    name=$(printf '%s' "$name" | tr -c 'A-Za-z0-9._:-' '-' | sed 's/^[^A-Za-z0-9]*//' | cut -c1-128)
    printf '%s' "${name:-model-${ONEAPP_SLM_MODEL_SHA256:0:12}}"
}

# Downloads ONEAPP_SLM_MODEL_URL to DEST: resumed from DEST.part (a reboot mid-download loses
# nothing), checked against RAM and disk before it starts, verified before it is named DEST.
fetch_model() { # DEST
    local dest=$1 part="${1}.part" sum=${ONEAPP_SLM_MODEL_SHA256,,} size have free_kb need_kb actual try
    install -d -m 0755 "$SLM_MODEL_STORE" "$(dirname "$SLM_MODEL_PROGRESS")"
    if ! size=$(remote_size); then
        reject ONEAPP_SLM_MODEL_URL "$(url_shown)" "unreachable (${size}): check the address and that this VM reaches it"
        return 1
    fi
    if [ "$size" -gt 0 ] && [ $((size / 1048576 + SLM_OS_RESERVE_MB + SLM_COMPUTE_RESERVE_MB)) -gt "$(mem_total_mb)" ]; then
        reject ONEAPP_SLM_MODEL_URL "$(url_shown)" "the model is $((size / 1048576)) MiB: with the reserves it does not fit this VM's $(mem_total_mb) MiB RAM; give the VM more memory or choose a smaller model"
        return 1
    fi
    have=$(stat -c %s "$part" 2>/dev/null || echo 0)
    [ "$size" -gt 0 ] && [ "$have" -gt "$size" ] && { rm -f "$part"; have=0; }  # not a prefix of this file
    free_kb=$(df -Pk "$SLM_MODEL_STORE" | awk 'NR == 2 {print $4}')
    need_kb=$(( (size - have) / 1024 + SLM_DISK_RESERVE_MB * 1024 ))
    if [ "$free_kb" -lt "$need_kb" ]; then
        reject ONEAPP_SLM_MODEL_URL "$(url_shown)" "the model needs $((need_kb / 1024)) MiB more on ${SLM_MODEL_STORE} but $((free_kb / 1024)) MiB are free: grow the VM's disk"
        return 1
    fi
    [ -s "${SLM_CONF_DIR}/engine.env" ] \
        || serve_notice "The appliance is downloading its model (ONEAPP_SLM_MODEL_URL): it serves once the file is verified, retry later"
    msg info "Downloading the model $(url_shown) ($((size / 1048576)) MiB$([ "$have" -eq 0 ] || echo ", resuming after $((have / 1048576)) MiB"))"
    show_progress "$part" "$size" &
    local progress=$!
    for try in 1 2 3; do
        [ "$size" -gt 0 ] && [ "$(stat -c %s "$part" 2>/dev/null || echo 0)" -eq "$size" ] && break
        if curl -sS --fail --location --proto =http,https --proto-redir =http,https --connect-timeout 20 \
            --speed-limit 1024 --speed-time 120 --continue-at - --output "$part" "$ONEAPP_SLM_MODEL_URL" 2> "${part}.err"; then
            break
        fi
        # 33: the server cannot resume (no byte ranges): start over rather than append a second copy.
        grep -q '(33)' "${part}.err" && rm -f "$part"
        msg warning "The download stopped ($(head -n 1 "${part}.err")); attempt ${try} of 3"
        sleep $((try * 5))
    done
    kill "$progress" 2>/dev/null; wait "$progress" 2>/dev/null || true
    rm -f "$SLM_MODEL_PROGRESS" "${part}.err"
    actual=$(sha256sum "$part" 2>/dev/null | cut -d' ' -f1)
    if [ "$actual" != "$sum" ]; then
        have=$(stat -c %s "$part" 2>/dev/null || echo 0)
        if [ "$size" -gt 0 ] && [ "$have" -lt "$size" ]; then
            reject ONEAPP_SLM_MODEL_URL "$(url_shown)" "the download stopped at ${have} of ${size} bytes (kept: the next configure resumes it)"
        else
            rm -f "$part"  # complete and wrong: resuming it could never match
            reject ONEAPP_SLM_MODEL_SHA256 "$(shown "$ONEAPP_SLM_MODEL_SHA256")" "the file at the URL has sha256 ${actual:-none} (${have} bytes): check the hash, or that the URL is the file it belongs to"
        fi
        return 1
    fi
    chmod 0644 "$part"
    mv -f "$part" "$dest"
    msg info "Downloaded and verified the model (sha256 ${sum})"
}

# The size the server announces (0 when it does not say), or curl's error on stdout and false.
remote_size() {
    local headers
    if ! headers=$(curl -sS --fail --head --location --proto =http,https --proto-redir =http,https \
        --connect-timeout 20 --max-time 60 "$ONEAPP_SLM_MODEL_URL" 2>&1); then
        printf '%s' "$(tail -n 1 <<< "$headers" | sed 's/^curl: //')"
        return 1
    fi
    # After redirects the last response's length is the file's.
    tr -d '\r' <<< "$headers" | awk 'tolower($1) == "content-length:" {n = $2} END {print n + 0}'
}

# Every 5 s while a download runs: how far it got, where the operator looks (motd, the progress
# file the report and nginx's 503 quote, the stage log every minute).
show_progress() { # PART SIZE
    local part=$1 size=$2 have line tick=0
    while sleep 5; do
        have=$(stat -c %s "$part" 2>/dev/null || echo 0)
        line="downloading the model $(url_shown): $((have / 1048576)) of $((size / 1048576)) MiB"
        [ "$size" -gt 0 ] && line+=" ($((have * 100 / size))%)"
        printf '%s\n' "$line" > "$SLM_MODEL_PROGRESS"
        printf 'SLM-Copilot %s: %s\n' "$ONE_SERVICE_VERSION" "$line" | write_file "$SLM_MOTD" 0644
        ((tick++ % 12 == 0)) && msg info "${line^}"
    done
}

# The model file the committed configuration serves (empty before the first configure).
configured_model_file() {
    [ ! -s "${SLM_CONF_DIR}/engine.env" ] || sed -n 's/.*--model \([^ ]*\) .*/\1/p' "${SLM_CONF_DIR}/engine.env"
}

# Fetched models other than the one configured and the one it replaced go (the built-in model is
# never in the store); so do downloads left unfinished for another URL.
prune_model_store() { # KEEP...
    local f keep
    for f in "$SLM_MODEL_STORE"/sha256-*; do
        [ -e "$f" ] || continue
        for keep in "$@"; do
            [ "$f" = "$keep" ] && continue 2
        done
        msg info "Removing ${f##*/}: no longer configured"
        rm -f "$f"
    done
}

# The memory plan, computed once from the model's facts and RAM (validate judges it, configure
# renders it): "FITS CHOSEN FREE_MB KV_MB_PER_1K CACHE_MB". FREE_MB is RAM minus weights and reserves;
# it holds the KV cache (CHOSEN tokens) and the engine's host-memory prompt cache (CACHE_MB, where
# idle sessions wait for their next turn; the engine's own default of 8 GiB would be outside any
# budget). CHOSEN is the operator's size when given (a valid number: validate checks that first),
# else the largest the model was trained for that fits in three quarters of FREE_MB, so the prompt
# cache keeps at least a quarter.
context_plan() {
    local kv_mb_per_1k free_mb fits auto ctx cache_mb
    kv_mb_per_1k=$(((MODEL_KV_BYTES_PER_TOKEN * 1024 + 1048575) / 1048576))
    free_mb=$(($(mem_total_mb) - MODEL_BYTES / 1048576 - SLM_OS_RESERVE_MB - SLM_COMPUTE_RESERVE_MB))
    fits=$(( free_mb > 0 ? free_mb * 1024 / kv_mb_per_1k : 0 ))
    fits=$(( fits - fits % 1024 ))
    if [[ "$ONEAPP_SLM_CONTEXT_SIZE" =~ ^[0-9]{1,9}$ ]]; then
        ctx=$((10#$ONEAPP_SLM_CONTEXT_SIZE))
    else
        auto=$(( fits * 3 / 4 ))
        auto=$(( auto - auto % 1024 ))
        ctx=$(( auto < MODEL_CTX_TRAIN ? auto : MODEL_CTX_TRAIN ))
    fi
    cache_mb=$(( free_mb - (ctx * kv_mb_per_1k + 1023) / 1024 ))
    cache_mb=$(( cache_mb < 0 ? 0 : (cache_mb > SLM_PROMPT_CACHE_MAX_MB ? SLM_PROMPT_CACHE_MAX_MB : cache_mb) ))
    echo "$fits $ctx $free_mb $kv_mb_per_1k $cache_mb"
}

# ONEAPP_SLM_API_KEYS, one entry per line, blanks around entries dropped.
named_key_entries() {
    [ -z "$ONEAPP_SLM_API_KEYS" ] || tr ',' '\n' <<< "$ONEAPP_SLM_API_KEYS" | sed 's/^[[:space:]]*//; s/[[:space:]]*$//' | grep -v '^$' || true
}

# The named keys file, rewritten from the context: an id alone keeps the key generated for it
# before (or gets one); an id no longer listed is gone, and its key refused from the next reload.
write_named_keys() {
    local entry id key out=""
    while IFS= read -r entry; do
        id=${entry%%:*}
        if [[ "$entry" == *:* ]]; then
            key=${entry#*:}
        else
            key=$(awk -v id="$id" '$1 == id {print $2}' "$SLM_API_KEYS_FILE" 2>/dev/null || true)
            if ! [[ "$key" =~ ^sk-[A-Za-z0-9]{48}$ ]]; then
                key="sk-$(gen_password 48)"
                msg info "Generated the API key of ${id} (see ${SLM_REPORT})"
            fi
        fi
        out+="${id} ${key}"$'\n'
    done < <(named_key_entries)
    printf '%s' "$out" | write_file "$SLM_API_KEYS_FILE" 0600
}

# "id:sha256,..." for every key: what nginx compares a presented key's digest with. The keys
# themselves stay out of nginx's configuration (the default one aside: the engine needs it).
key_digests() {
    local id key
    {
        printf 'default:%s\n' "$(printf '%s' "$(cat "$SLM_API_KEY_FILE")" | sha256sum | cut -d' ' -f1)"
        while read -r id key; do
            printf '%s:%s\n' "$id" "$(printf '%s' "$key" | sha256sum | cut -d' ' -f1)"
        done < "$SLM_API_KEYS_FILE"
    } | paste -sd, -
}

# The browser origins allowed, one per line (none for *: every origin is).
cors_origins() {
    [ "$ONEAPP_SLM_CORS_ORIGINS" = '*' ] || tr ',' '\n' <<< "$ONEAPP_SLM_CORS_ORIGINS"
}

# The names and addresses clients may use: one certificate for all of them.
subject_alt_names() {
    {
        echo "DNS:localhost"; echo "IP:127.0.0.1"; echo "DNS:$(hostname)"
        local ip
        for ip in $(hostname -I 2>/dev/null); do echo "IP:${ip}"; done
        if [ -n "$ONEAPP_SLM_DOMAIN" ]; then echo "DNS:${ONEAPP_SLM_DOMAIN}"; fi
    } | sort -u | paste -sd, -
}

# What the private CA may sign: this appliance's DNS names. Clients trust it for exactly these: a
# copied CA key cannot sign for github.com or pypi.org. Addresses are left unconstrained: Claude
# Code (BoringSSL) refuses every certificate under a CA that lists an IP constraint, whatever the
# name used (UNSUPPORTED_CONSTRAINT_TYPE, measured with 2.1.330), and TLS to a bare IP address is
# rare for the public services a forged certificate would be used against.
ca_name_constraints() {
    local sans=$1 name
    for name in ${sans//,/ }; do
        case "$name" in DNS:*) echo "permitted;${name}" ;; esac
    done | sort -u | paste -sd, -
}

# True when every name the CA must permit ($1) is among those it permits ($2).
constraints_cover() {
    [ -z "$(comm -23 <(tr ',' '\n' <<< "$1" | sort) <(tr ',' '\n' <<< "$2" | sort))" ]
}

# A certificate's end date, as openssl prints it (arguments: -in FILE, or the PEM on stdin).
cert_end() {
    openssl x509 -noout -enddate "$@" | cut -d= -f2
}

# True when the certificate in $1 ends within $2 days (or is missing or unreadable).
expires_within() {
    ! openssl x509 -noout -checkend $(($2 * 86400)) -in "$1" >/dev/null 2>&1
}

# A private CA signs the server certificate: clients trust the CA once; a new address (a new SAN
# set) or a certificate near its end re-issues the server certificate only. The CA itself is
# re-issued when it does not permit a new name (a domain, a public address) or nears its end:
# clients trust the new one then (the report gives its fingerprint).
ensure_self_signed() {
    local dir=$1 sans constraints
    sans=$(subject_alt_names)
    constraints=$(ca_name_constraints "$sans")
    # A CA of an earlier version constrains addresses too, which Claude Code cannot use: re-issued.
    if [ ! -s "$dir/ca.key" ] || ! constraints_cover "$constraints" "$(cat "$dir/ca.names" 2>/dev/null)" \
        || grep -q 'permitted;IP:' "$dir/ca.names" || expires_within "$dir/ca.crt" "$SLM_CA_RENEW_DAYS"; then
        [ -s "$dir/ca.crt" ] && msg warning "Issuing a new appliance CA: clients must trust the new ${SLM_CA_CERT}"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$SLM_CA_DAYS" \
            -subj "/CN=SLM-Copilot appliance CA" -keyout "$dir/ca.key" -out "$dir/ca.crt" \
            -addext basicConstraints=critical,CA:TRUE,pathlen:0 -addext keyUsage=critical,keyCertSign,cRLSign \
            -addext "nameConstraints=critical,${constraints}" 2>/dev/null
        echo "$constraints" > "$dir/ca.names"
        rm -f "$dir/server.crt"
    fi
    if [ "$(cat "$dir/server.sans" 2>/dev/null)" != "$sans" ] || expires_within "$dir/server.crt" "$SLM_RENEW_DAYS"; then
        msg info "Issuing the server certificate for ${sans}"
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=slm-copilot" \
            -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
        openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
            -days "$SLM_SERVER_DAYS" -out "$dir/server.crt" -extfile <(printf '%s\n' \
            "subjectAltName=${sans}" "extendedKeyUsage=serverAuth" "basicConstraints=critical,CA:FALSE" \
            "keyUsage=critical,digitalSignature") 2>/dev/null
        echo "$sans" > "$dir/server.sans"
        rm -f "$dir/server.csr" "$dir/ca.srl"
    fi
    chmod 0600 "$dir"/*.key
    cat "$dir/server.crt" "$dir/ca.crt" | write_file "$dir/active.crt" 0644
    write_file "$dir/active.key" 0600 < "$dir/server.key"
}

render_tls() {
    local dir=$1 le="/etc/letsencrypt/live/${ONEAPP_SLM_DOMAIN}"
    ensure_self_signed "$dir"
    case "$ONEAPP_SLM_TLS_MODE" in
        custom)
            printf '%s' "$ONEAPP_SLM_TLS_CERT" | base64 -d | write_file "$dir/active.crt" 0644
            printf '%s' "$ONEAPP_SLM_TLS_KEY" | base64 -d | write_file "$dir/active.key" 0600 ;;
        letsencrypt)
            if [ -s "${SLM_ROOT}${le}/fullchain.pem" ]; then
                write_file "$dir/active.crt" 0644 < "${SLM_ROOT}${le}/fullchain.pem"
                write_file "$dir/active.key" 0600 < "${SLM_ROOT}${le}/privkey.pem"
            fi ;;  # until issuance succeeds (bootstrap) the self-signed pair serves
    esac
}

render_nginx() {
    local dest=$1 origin
    SLM_CORS_MAP=""
    if [ "$ONEAPP_SLM_CORS_ORIGINS" = '*' ]; then
        SLM_CORS_MAP='    "~." "*";'
    else
        while IFS= read -r origin; do
            SLM_CORS_MAP+="    \"${origin}\" \"${origin}\";"$'\n'
        done < <(cors_origins)
        SLM_CORS_MAP=${SLM_CORS_MAP%$'\n'}
    fi
    local suffix=""
    [ "$SLM_HTTPS_PORT" = 443 ] || suffix=":${SLM_HTTPS_PORT}"
    # nginx's own debug level dumps request and upstream headers, the key among them: the most
    # nginx says is info; debug is the engine's (request and sampling detail, no credentials).
    local level
    case "$ONEAPP_SLM_LOG_LEVEL" in info) level=notice ;; debug) level=info ;; *) level=$ONEAPP_SLM_LOG_LEVEL ;; esac
    SLM_HTTPS_PORT_SUFFIX=$suffix SLM_NGINX_LOG_LEVEL=$level SLM_RATE_BURST=$((ONEAPP_SLM_RATE_LIMIT * 2)) \
    SLM_KEY_RATE_LIMIT=$((10#$ONEAPP_SLM_KEY_RATE_LIMIT)) SLM_KEY_RATE_BURST=$((10#$ONEAPP_SLM_KEY_RATE_LIMIT * 2)) \
    SLM_CONF_DIR=$SLM_CONF_DIR SLM_TLS_DIR=$SLM_TLS_DIR SLM_LOG_DIR=$SLM_LOG_DIR \
    SLM_ACME_WEBROOT=$SLM_ACME_WEBROOT SLM_CORS_MAP=$SLM_CORS_MAP SLM_RATE_LIMIT=$ONEAPP_SLM_RATE_LIMIT \
    SLM_ENGINE_PORT=$SLM_ENGINE_PORT SLM_HTTP_PORT=$SLM_HTTP_PORT SLM_HTTPS_PORT=$SLM_HTTPS_PORT \
    SLM_BODY_LIMIT=$SLM_BODY_LIMIT bash -c '
        vars='"'"'${SLM_CONF_DIR} ${SLM_TLS_DIR} ${SLM_LOG_DIR} ${SLM_ACME_WEBROOT} ${SLM_CORS_MAP}
              ${SLM_RATE_LIMIT} ${SLM_RATE_BURST} ${SLM_ENGINE_PORT} ${SLM_HTTP_PORT} ${SLM_HTTPS_PORT}
              ${SLM_HTTPS_PORT_SUFFIX} ${SLM_NGINX_LOG_LEVEL} ${SLM_BODY_LIMIT} ${SLM_KEY_RATE_LIMIT} ${SLM_KEY_RATE_BURST}'"'"'
        for f in "${@:2}"; do
            envsubst "$vars" < "$0/$f" > "$1/$f"
        done' "$SLM_TEMPLATES" "$dest" "${SLM_NGINX_FILES[@]}"
    local js
    for js in "${SLM_NJS_FILES[@]}"; do cp "${SLM_TEMPLATES}/$js" "$dest/$js"; done
    # shellcheck disable=SC2016  # $slm_api_key is an nginx variable
    {
        printf 'set $slm_api_key "%s";\n' "$(cat "$SLM_API_KEY_FILE")"
        printf 'set $slm_keys "%s";\n' "$(key_digests)"
    } > "$dest/secret.conf"
}

render_engine() { # DEST CONTEXT-SIZE PROMPT-CACHE-MB
    local dest=$1 ctx=$2 cache_mb=$3 threads=$((10#$ONEAPP_SLM_THREADS)) verbosity
    [ "$threads" -eq 0 ] && threads=$(physical_cores)
    case "$ONEAPP_SLM_LOG_LEVEL" in error) verbosity=1 ;; warn) verbosity=2 ;; info) verbosity=3 ;; *) verbosity=4 ;; esac
    # --kv-unified: one KV pool for all slots, so a request may use the whole context size (split
    # per slot, a context of 8192 with 2 slots would silently be 4096 per request).
    # The model's own chat template unless the build ships one beside it (model.env says which).
    # An operator's template (ONEAPP_SLM_MODEL_CHAT_TEMPLATE) goes beside engine.env, swapped in with it.
    local template=""
    [ -z "${MODEL_CHAT_TEMPLATE:-}" ] || template=" --chat-template-file ${SLM_APP_DIR}/models/${MODEL_CHAT_TEMPLATE}"
    if [ -n "$ONEAPP_SLM_MODEL_CHAT_TEMPLATE" ]; then
        printf '%s' "$ONEAPP_SLM_MODEL_CHAT_TEMPLATE" | base64 -d > "$dest/chat-template.jinja"
        template=" --chat-template-file ${SLM_CONF_DIR}/chat-template.jinja"
    fi
    # --n-predict: the answer length of a request that sets none (a request's max_tokens still wins).
    # Without it a model that repeats itself writes until the shared context is full, holding a slot
    # and evicting the other sessions' cache (aider, which sets none, wrote for 19 minutes in a TCG guest).
    printf 'SLM_ENGINE_ARGS="%s"\n' "--host 127.0.0.1 --port ${SLM_ENGINE_PORT} \
--model ${SLM_MODEL_FILE} --alias ${MODEL_ID} --ctx-size ${ctx} \
--threads ${threads} --parallel $((10#$ONEAPP_SLM_PARALLEL)) --temp ${ONEAPP_SLM_TEMPERATURE} \
--n-predict $(max_tokens) \
--kv-unified --cache-ram ${cache_mb} --jinja${template} --metrics --no-slots --no-webui --log-verbosity ${verbosity}" > "$dest/engine.env"
    # What configure decided, apart from how the engine is told: the report says it, and the
    # conformance suite compares what the engine serves with it.
    # SLM_ENGINE_BUDGET_MB: what the engine may hold resident (RAM minus the OS reserve); the
    # memory check fills the prompt cache and compares.
    {
        printf 'SLM_CTX=%s\nSLM_PROMPT_CACHE_MB=%s\nSLM_ENGINE_BUDGET_MB=%s\nSLM_KV_BYTES_PER_TOKEN=%s\n' \
            "$ctx" "$cache_mb" "$(($(mem_total_mb) - SLM_OS_RESERVE_MB))" "$MODEL_KV_BYTES_PER_TOKEN"
        printf 'SLM_MODEL_ID=%s\nSLM_TEMPERATURE=%s\nSLM_PARALLEL=%s\nSLM_TLS_MODE=%s\nSLM_DOMAIN=%s\n' \
            "$MODEL_ID" "$ONEAPP_SLM_TEMPERATURE" "$((10#$ONEAPP_SLM_PARALLEL))" "$ONEAPP_SLM_TLS_MODE" \
            "$ONEAPP_SLM_DOMAIN"
        printf 'SLM_MAX_TOKENS=%s\n' "$(max_tokens)"
        printf 'SLM_MODEL_SHA256=%s\nSLM_MODEL_SOURCE=%s\n' "$MODEL_SHA256" "$MODEL_SOURCE"
    } >> "$dest/engine.env"
}

# Applies what `stage` holds: swap it in, test nginx, and swap back if nginx refuses it.
commit_config() {
    local stage=$1 previous="${SLM_CONF_DIR}.last-good"
    rm -rf "$previous"
    [ -d "$SLM_CONF_DIR" ] && mv "$SLM_CONF_DIR" "$previous"
    mv "$stage" "$SLM_CONF_DIR"
    # The site is linked before the test, or a first boot would test nginx without it.
    [ -n "$SLM_ROOT" ] || ln -sfn "${SLM_CONF_DIR}/nginx.conf" "$SLM_NGINX_SITE"
    if [ -z "$SLM_ROOT" ] && ! nginx -t -q 2>&1; then
        rm -rf "$SLM_CONF_DIR"
        if [ -d "$previous" ]; then mv "$previous" "$SLM_CONF_DIR"; else rm -f "$SLM_NGINX_SITE"; fi
        SLM_ERRORS+=("nginx rejected the rendered configuration (see above); the previous one is kept")
        return 1
    fi
    # Byte-identical output must not look changed: keep the old files when nothing differs, modes
    # included (a file whose mode changed must be replaced, or the new mode never applies).
    if [ -d "$previous" ] && diff -r -q "$previous" "$SLM_CONF_DIR" >/dev/null \
        && [ "$(cd "$previous" && stat -c '%a %n' -- *)" = "$(cd "$SLM_CONF_DIR" && stat -c '%a %n' -- *)" ]; then
        rm -rf "$SLM_CONF_DIR"
        mv "$previous" "$SLM_CONF_DIR"
    fi
    rm -rf "$previous"
}

report_failure() {
    local e
    for e in "${SLM_ERRORS[@]}"; do msg error "$e"; done
    if [ "$(readlink "$SLM_NGINX_SITE" 2>/dev/null)" = "$SLM_NOTICE_SITE" ]; then
        serve_notice "Not serving: the appliance's context was rejected (see /etc/one-appliance/config.rejected)"
    fi
    # The banner must not go on showing a download that has ended.
    if grep -q 'downloading the model' "$SLM_MOTD" 2>/dev/null; then
        printf 'SLM-Copilot %s: the context was rejected (%s.rejected): %s\n' "$ONE_SERVICE_VERSION" "$SLM_REPORT" \
            "$( [ -s "${SLM_CONF_DIR}/engine.env" ] && echo 'the last good configuration keeps serving' || echo 'nothing is served')" \
            | write_file "$SLM_MOTD" 0644
    fi
    {
        echo "[SLM-Copilot]"
        echo "status = configuration rejected; $( [ -s "${SLM_CONF_DIR}/engine.env" ] && echo 'the last good configuration keeps serving' || echo 'nothing is served until the context is fixed')"
        for e in "${SLM_ERRORS[@]}"; do echo "error = ${e}"; done
    } | write_file "${SLM_REPORT}.rejected" 0600
}

# Logs name clients, paths and timings: no other user reads them. nginx's workers (www-data)
# reopen them after a rotation, so the folder is theirs to enter. It exists before nginx first
# starts: its sandbox makes writable only the folders that exist when it starts.
make_log_dir() {
    install -d -m 0750 "$SLM_LOG_DIR"
    [ -n "$SLM_ROOT" ] || chgrp www-data "$SLM_LOG_DIR"
    find "$SLM_LOG_DIR" -maxdepth 1 -type f -perm /o=r -exec chmod o-r {} +
}

# Before the first configuration only (a first boot fetching its model): nginx answers every request
# with 503, Retry-After and why, instead of refusing connections. The real site replaces it.
serve_notice() { # MESSAGE (plain text: no quotes)
    [ -z "$SLM_ROOT" ] || return 0  # the local target's nginx is the suite's, started after configure
    make_log_dir
    install -d -m 0700 "$SLM_STATE_DIR" "$SLM_TLS_DIR"
    install -d -m 0755 "$(dirname "$SLM_NOTICE_SITE")"
    ensure_self_signed "$SLM_TLS_DIR"  # the pair the first configuration serves in any TLS mode until then
    # shellcheck disable=SC2016  # envsubst's list of the variables it replaces
    SLM_NOTICE=$1 SLM_TLS_DIR=$SLM_TLS_DIR SLM_HTTP_PORT=$SLM_HTTP_PORT SLM_HTTPS_PORT=$SLM_HTTPS_PORT \
        envsubst '${SLM_NOTICE} ${SLM_TLS_DIR} ${SLM_HTTP_PORT} ${SLM_HTTPS_PORT}' \
        < "${SLM_TEMPLATES}/notice.conf" > "$SLM_NOTICE_SITE"
    ln -sfn "$SLM_NOTICE_SITE" "$SLM_NGINX_SITE"
    if nginx -t -q 2>/dev/null; then
        systemctl reload-or-restart nginx || msg warning "nginx did not start with the notice site"
    else
        rm -f "$SLM_NGINX_SITE"
    fi
}

# --- bootstrap's helpers ----------------------------------------------------------------------

# Waits for the engine to answer /health. A unit that exits is restarted by systemd (and looks
# "activating" between tries), so any automatic restart while waiting means it failed to load.
wait_engine() {
    local deadline=$((SECONDS + ${SLM_ENGINE_LOAD_TIMEOUT:-900})) restarts state
    restarts=$(unit_property NRestarts)
    until curl -fsS -o /dev/null "http://127.0.0.1:${SLM_ENGINE_PORT}/health"; do
        state="$(unit_property ActiveState)/$(unit_property SubState)"
        if [ "$(unit_property NRestarts)" != "$restarts" ] || ! [[ "$state" =~ ^(active/running|activating/start)$ ]]; then
            msg error "The engine stopped while loading the model (${state}): journalctl -u ${SLM_ENGINE_UNIT}"
            return 1
        fi
        [ "$SECONDS" -lt "$deadline" ] || { msg error "The engine did not load the model in time"; return 1; }
        sleep 2
    done
}

unit_property() { systemctl show -p "$1" --value "$SLM_ENGINE_UNIT"; }

# Whether the served chat template lets the model call tools: without, the engine drops `tools`
# from requests and answers in plain text, which agents cannot tell from a refusal to use them.
tool_support() {
    local props
    # The key goes to curl on a file descriptor, not its command line (visible to every user).
    props=$(curl -fsS --max-time 10 -H @<(printf 'Authorization: Bearer %s\n' "$(cat "$SLM_API_KEY_FILE")") \
        "http://127.0.0.1:${SLM_ENGINE_PORT}/props" 2>/dev/null) || { echo "unknown (the engine's /props did not answer)"; return; }
    if grep -q '"supports_tool_calls": *true' <<<"$props"; then
        echo "yes (the served chat template declares tools)"
    else
        echo "no: the model's chat template declares no tools, so requests with tools get plain text"
    fi
}

try_letsencrypt() {
    command -v certbot >/dev/null || { SLM_TLS_NOTE="certbot is not installed: serving the self-signed certificate"; return 1; }
    if certbot certonly --non-interactive --agree-tos --keep-until-expiring --webroot -w "$SLM_ACME_WEBROOT" \
        -d "$ONEAPP_SLM_DOMAIN" -m "$ONEAPP_SLM_ACME_EMAIL" --server "$ONEAPP_SLM_ACME_SERVER" \
        --config-dir "${SLM_ROOT}/etc/letsencrypt" --work-dir "${SLM_ROOT}/var/lib/letsencrypt" \
        --logs-dir "${SLM_LOG_DIR}/letsencrypt"; then
        render_tls "$SLM_TLS_DIR"
        [ -n "$SLM_ROOT" ] || systemctl reload nginx
        SLM_TLS_NOTE="Let's Encrypt certificate for ${ONEAPP_SLM_DOMAIN}"
    else
        SLM_TLS_NOTE="Let's Encrypt issuance failed: serving the self-signed certificate (see bootstrap.log)"
        return 1
    fi
}

write_report() {
    local host="${ONEAPP_SLM_DOMAIN:-$(hostname -I 2>/dev/null | awk '{print $1}')}" ca_fp key suffix=""
    [ "$SLM_HTTPS_PORT" = 443 ] || suffix=":${SLM_HTTPS_PORT}"
    local url="https://${host:-127.0.0.1}${suffix}/v1"
    key=$(cat "$SLM_API_KEY_FILE")
    ca_fp=$(openssl x509 -in "$SLM_CA_CERT" -noout -fingerprint -sha256 | cut -d= -f2)
    write_file "$SLM_REPORT" 0600 <<EOR
[SLM-Copilot]
version = ${ONE_SERVICE_VERSION}
status = ${SLM_STATUS}
endpoint = ${url}
api_key = ${key}
model = ${MODEL_ID}
model_sha256 = ${SLM_MODEL_SHA256:-}
model_source = ${SLM_MODEL_SOURCE:-}
context_size = ${SLM_CTX}
default_max_tokens = ${SLM_MAX_TOKENS/#-1/none}
prompt_cache_mib = ${SLM_PROMPT_CACHE_MB:-}
tool_calls = ${SLM_TOOLS:-unknown}
tls_mode = ${ONEAPP_SLM_TLS_MODE}
tls_note = ${SLM_TLS_NOTE:-}
ca_certificate = ${SLM_CA_CERT}
ca_sha256_fingerprint = ${ca_fp}
named_keys = $(cut -d' ' -f1 "$SLM_API_KEYS_FILE" | paste -sd, - | sed 's/,/, /g')
named_keys_file = ${SLM_API_KEYS_FILE} (id and key per line; access log lines name the id)

[openai-sdk]
environment = SSL_CERT_FILE=ca.crt
python = OpenAI(base_url="${url}", api_key="${key}")

[anthropic-sdk]
environment = ANTHROPIC_BASE_URL=${url%/v1} ANTHROPIC_API_KEY=${key} SSL_CERT_FILE=ca.crt
python = anthropic.Anthropic().messages.create(model="${MODEL_ID}", max_tokens=512, messages=[...])

[codex]
config_toml = model = "${MODEL_ID}", model_provider = "slm-copilot", [model_providers.slm-copilot] name = "SLM-Copilot", base_url = "${url}", env_key = "SLM_COPILOT_API_KEY", wire_api = "responses"
environment = SLM_COPILOT_API_KEY=${key} SSL_CERT_FILE=ca.crt

[claude-code]
environment = ANTHROPIC_BASE_URL=${url%/v1} ANTHROPIC_AUTH_TOKEN=${key} ANTHROPIC_MODEL=${MODEL_ID} NODE_EXTRA_CA_CERTS=ca.crt

[cline]
api_provider = OpenAI Compatible
base_url = ${url}
api_key = ${key}
model_id = ${MODEL_ID}
trust_ca = NODE_EXTRA_CA_CERTS=/path/to/ca.crt (copy ${SLM_CA_CERT})

[continue]
config_yaml = models: [{name: SLM-Copilot, provider: openai, model: ${MODEL_ID}, apiBase: "${url}", apiKey: "${key}"}]

[aider]
command = OPENAI_API_BASE=${url} OPENAI_API_KEY=${key} SSL_CERT_FILE=ca.crt aider --model openai/${MODEL_ID}

[curl]
command = curl --cacert ca.crt -u any:${key} ${url}/models
EOR
}

# shellcheck shell=bash
# Helpers shared by the service entry and the appliance script (one-apps style).

# SLM_ROOT prefixes every path the appliance writes, so the local conformance target can render
# the exact same files into a scratch folder; in the image it is empty.
SLM_ROOT="${SLM_ROOT:-}"

msg() {
    local level=$1; shift
    printf '[%s] [%s] %s\n' "$(date -u +%FT%TZ)" "${level^^}" "$*" >&2
}

is_true() {
    case "${1,,}" in yes|true|1|on) return 0 ;; *) return 1 ;; esac
}

# gen_password LENGTH: [A-Za-z0-9] only, so the value is safe in nginx and shell contexts.
gen_password() {
    local out=""
    while [ "${#out}" -lt "$1" ]; do
        out+=$(head -c 256 /dev/urandom | LC_ALL=C tr -dc 'A-Za-z0-9')
    done
    printf '%s' "${out:0:$1}"
}

# write_file PATH MODE: stdin to PATH, replaced atomically and only when the content changed,
# so an unchanged configuration leaves files (and their mtimes) exactly as they were.
write_file() {
    local path=$1 mode=$2 tmp
    mkdir -p "$(dirname "$path")"
    tmp=$(mktemp "${path}.XXXXXX")
    cat > "$tmp"
    chmod "$mode" "$tmp"
    if [ -f "$path" ] && cmp -s "$tmp" "$path" && [ "$(stat -c %a "$path")" = "$mode" ]; then
        rm -f "$tmp"
    else
        mv -f "$tmp" "$path"
    fi
}

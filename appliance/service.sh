#!/usr/bin/env bash
# The one-apps service entry: `service install | configure | bootstrap | renew | help | cleanup`
# (renew: the daily certificate renewal, run by slm-copilot-renew.timer).
# Records <stage>_started|_success|_failure in the status file and logs each stage to its own file.
set -o errexit -o nounset -o pipefail
umask 0077

SERVICE_DIR=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
# shellcheck source=lib/common.sh
. "${SERVICE_DIR}/lib/common.sh"
# shellcheck source=service.d/appliance.sh
. "${SERVICE_DIR}/service.d/appliance.sh"

ONE_SERVICE_STATUS="${SLM_ROOT}/etc/one-appliance/status"
ONE_SERVICE_LOGDIR="${SLM_ROOT}/var/log/one-appliance"
ONE_SERVICE_LOCK="${SLM_ROOT}/run/one-appliance/stage.lock"

run_stage() {
    local stage=$1 rc=0 lock status=$ONE_SERVICE_STATUS
    # renew is the appliance's own daily job, not a one-apps stage: the status keeps the last stage's.
    [ "$stage" = renew ] && status=/dev/null
    mkdir -p "$(dirname "$ONE_SERVICE_STATUS")" "$ONE_SERVICE_LOGDIR" "$(dirname "$ONE_SERVICE_LOCK")"
    # One stage at a time: a context hook re-run by hand (or by a context update) waits for the
    # boot-time run instead of rendering and restarting under it.
    exec {lock}>"$ONE_SERVICE_LOCK"
    flock -w "${ONE_SERVICE_LOCK_WAIT:-1800}" "$lock" || { msg error "Another stage still holds ${ONE_SERVICE_LOCK}"; return 1; }
    if [ "$stage" = configure ] && grep -q '^bootstrap_' "$ONE_SERVICE_STATUS" 2>/dev/null \
        && ! is_true "${ONE_SERVICE_RECONFIGURABLE:-false}"; then
        msg error "Appliance is not reconfigurable and was already bootstrapped"
        return 1
    fi
    echo "${stage}_started" > "$status"
    # The stage runs in a subshell so `set -e` inside it cannot skip the status bookkeeping. Not
    # as `( ... ) || rc=$?`: bash ignores errexit in everything left of `||`, so a failing step
    # would go unnoticed and the stage report success.
    set +o errexit
    ( set -o errexit; "service_${stage}" ) > >(tee -a "${ONE_SERVICE_LOGDIR}/${stage}.log") 2>&1
    rc=$?
    set -o errexit
    if [ "$rc" -eq 0 ]; then
        echo "${stage}_success" > "$status"
    else
        echo "${stage}_failure" > "$status"
    fi
    return "$rc"
}

case "${1:-help}" in
    install|configure|bootstrap|renew|cleanup) run_stage "$1" ;;
    help) service_help ;;
    *) msg error "Unknown stage '${1}': use install, configure, bootstrap, renew, help or cleanup"; exit 2 ;;
esac

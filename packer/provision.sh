#!/usr/bin/env bash
# Runs inside the build VM: installs the one-apps service and the context agent, runs the
# appliance's `service install` on the staged artifacts, then cleans the image for cloning.
set -o errexit -o nounset -o pipefail
src=/var/tmp/slm-appliance
stage=/var/tmp/slm-stage

install -d -m 0755 /etc/one-appliance/lib /etc/one-appliance/service.d /etc/one-appliance/templates \
    /etc/one-context.d
install -m 0755 "$src/service.sh" /etc/one-appliance/service
install -m 0644 "$src"/lib/* /etc/one-appliance/lib/
install -m 0644 "$src/service.d/appliance.sh" /etc/one-appliance/service.d/
install -m 0644 "$src"/templates/* /etc/one-appliance/templates/
install -m 0755 "$src/context/net-90-service-appliance" /etc/one-context.d/

case "$CONTEXT_AGENT" in
    offline)
        install -m 0755 "$src/context/slm-context" /usr/local/sbin/slm-context
        install -m 0644 "$src/context/slm-context.service" /etc/systemd/system/
        systemctl enable -q slm-context.service ;;
    one-context)
        apt-get install -y -q "$stage"/one-context_*.deb ;;
    *) echo "CONTEXT_AGENT=$CONTEXT_AGENT: expected offline or one-context" >&2; exit 1 ;;
esac

SLM_STAGE="$stage" /etc/one-appliance/service install

# SSH host keys are made per VM at its first boot, not shared by every clone of the image.
cat > /etc/systemd/system/ssh-hostkeys.service <<'UNIT'
[Unit]
Description=Generate missing SSH host keys
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=ssh.service
UNIT
systemctl enable -q ssh-hostkeys.service

rm -rf "$stage" "$src"
rm -f /etc/ssh/ssh_host_* /root/.ssh/authorized_keys
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
apt-get clean
rm -rf /var/lib/apt/lists/*
journalctl --rotate >/dev/null 2>&1 || true
journalctl --vacuum-time=1s >/dev/null 2>&1 || true
find /var/log -type f \( -name '*.log' -o -name '*.gz' -o -name '*.[0-9]' \) ! -path '/var/log/one-appliance/*' -delete
fstrim -av || true
sync

#!/usr/bin/env bash
# Builds the offline base image: Debian bookworm by debootstrap, booting by itself (GRUB in the
# MBR gap, kernel + initramfs), systemd, sshd, DHCP on every NIC. No loop devices or mounts:
# the filesystem is made from a folder (mke2fs -d), so it runs in unprivileged-device sandboxes.
#   build-base.sh OUT.qcow2 BUILD_PUBKEY MANIFEST.json
set -o errexit -o nounset -o pipefail
out=$1 pubkey=$2 manifest=$3
here=$(cd "$(dirname "$0")" && pwd)
suite=bookworm
mirror=${SLM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
work=$(mktemp -d "${TMPDIR:-/var/tmp}/slm-base.XXXXXX")
# An interrupted debootstrap leaves /proc (and more) mounted in the chroot: unmount first, and never
# let rm cross into a mounted filesystem (it would walk the host's /proc).
trap 'umount -R -l "$work/root/proc" "$work/root/sys" "$work/root/dev" 2>/dev/null || true; rm -rf --one-file-system "$work"' EXIT
root="$work/root"

include=$(grep -v '^#' "$here/packages.txt" | grep -v '^$' | paste -sd, -)
debootstrap --variant=minbase --include="$include" "$suite" "$root" "$mirror" > "$work/debootstrap.log" 2>&1 \
    || { tail -30 "$work/debootstrap.log"; exit 1; }

after=$(sed -n 's/^#after: *//p' "$here/packages.txt" | xargs)
if [ -n "$after" ]; then
    # shellcheck disable=SC2086  # a word list
    chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $after \
        > "$work/apt-after.log" 2>&1 || { tail -30 "$work/apt-after.log"; exit 1; }
fi

echo slm-copilot > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 slm-copilot\n::1 localhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
cat > "$root/etc/systemd/network/10-dhcp.network" <<'NET'
[Match]
Name=en* eth*

[Network]
DHCP=yes
NET
chroot "$root" systemctl enable -q systemd-networkd.service systemd-networkd-wait-online.service
chroot "$root" systemctl disable -q nginx.service
install -d -m 0700 "$root/root/.ssh"
install -m 0600 "$pubkey" "$root/root/.ssh/authorized_keys"  # the image build's key; removed at cleanup
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/*_Packages "$root"/var/cache/apt/*.bin

release_date=$(sed -n 's/^Date: //p' "$root"/var/lib/apt/lists/*_InRelease "$root"/var/lib/apt/lists/*_Release 2>/dev/null | head -1)
kernel=$(basename "$(readlink -f "$root/vmlinuz")")

uuid=$(cat /proc/sys/kernel/random/uuid)
echo "UUID=$uuid / ext4 errors=remount-ro 0 1" > "$root/etc/fstab"
install -d "$root/boot/grub/i386-pc"
cp /usr/lib/grub/i386-pc/*.mod /usr/lib/grub/i386-pc/*.lst "$root/boot/grub/i386-pc/"
cat > "$root/boot/grub/grub.cfg" <<GRUB
serial --speed=115200
terminal_input console serial
terminal_output console serial
set timeout=0
menuentry 'SLM-Copilot (Debian ${suite})' {
    insmod part_msdos
    insmod ext2
    search --no-floppy --fs-uuid --set=root $uuid
    linux /vmlinuz root=UUID=$uuid ro console=tty0 console=ttyS0,115200n8 net.ifnames=0
    initrd /initrd.img
}
GRUB

mke2fs -q -t ext4 -L rootfs -U "$uuid" -d "$root" "$work/part.img" 2047M
truncate -s 2G "$work/disk.raw"
printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$work/disk.raw"
dd if="$work/part.img" of="$work/disk.raw" bs=1M seek=1 conv=notrunc status=none
# GRUB: boot.img in the MBR (first 440 bytes keep the partition table), core.img in the gap.
grub-mkimage -O i386-pc -o "$work/core.img" -p '(hd0,msdos1)/boot/grub' biosdisk part_msdos ext2 search_fs_uuid
dd if=/usr/lib/grub/i386-pc/boot.img of="$work/disk.raw" bs=440 count=1 conv=notrunc status=none
dd if="$work/core.img" of="$work/disk.raw" bs=512 seek=1 conv=notrunc status=none
qemu-img convert -c -O qcow2 "$work/disk.raw" "$out"

# shellcheck disable=SC2016  # ${Package} is dpkg-query syntax
cat > "$manifest" <<JSON
{"suite": "$suite", "mirror": "$mirror", "archive_release_date": "$release_date", "kernel": "$kernel",
 "packages": "$(chroot "$root" dpkg-query -W -f '${Package}=${Version} ' | sed 's/ $//')"}
JSON

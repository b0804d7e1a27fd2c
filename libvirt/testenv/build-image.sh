#!/usr/bin/env bash
# Builds the small real guest the libvirt tests boot: Debian's cloud kernel, a tiny initramfs
# (busybox + the virtio modules) that mounts /dev/vda and switches to it, and an ext4 root on a
# qcow2 disk with busybox init, Debian's qemu-guest-agent (its binary and shared libraries from
# the package and this machine), util-linux setsid/runuser (with a two-line PAM stack), a root
# and a `user` account. Nothing is installed on this machine: the .debs are fetched with
# `apt-get download` and unpacked with dpkg-deb.
#
# For the end-to-end job in a guest (`sdci_tests::libvirt_world`) the root also carries this
# machine's Debian userland the job's programs use — bash, make, GNU tar and coreutils,
# findutils, grep, sed, util-linux mount/unshare, Python 3 with its standard library (the
# Qubes stand-ins), git with its HTTP transport, the CA bundle — with their shared libraries, and the kernel
# modules for a virtio NIC and overlayfs. Network: only what a domain's restricted user network
# forwards (`sdci_libvirt::UserNet`); the guest sets up `10.0.2.15/24` when it has a NIC.
# A world disk: `sdci.world=PATH` on the kernel command line mounts `/dev/vdb` at PATH and runs
# `PATH/.sdci/rc` before the guest agent starts; `/etc/sdci-guest.env` (shell assignments) is
# the guest agent's environment, which every program it starts inherits.
#
# usage: build-image.sh OUTDIR    (writes OUTDIR/vmlinuz, OUTDIR/initrd.img, OUTDIR/root.qcow2)
# The caller caches OUTDIR under target/ keyed by the hash of this file and of the package
# versions it prints with --recipe.
set -euo pipefail

KERNEL_META=linux-image-cloud-amd64
# The Python 3 of this machine (Debian 12: 3.11), whose standard library the guest gets.
PY="python$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
kernel_pkg() { apt-cache depends "$KERNEL_META" 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}'; }

if [ "${1:-}" = "--recipe" ]; then
  # Everything the image is made from, one line each: the cache key (with this script's hash).
  k="$(kernel_pkg)"
  for p in "$k" qemu-guest-agent busybox-static; do
    echo "$p $(apt-cache policy "$p" | awk '/Candidate:/{print $2}')"
  done
  for p in util-linux libpam-modules libglib2.0-0 libc6 bash dash make tar coreutils findutils \
           grep sed mount "$PY-minimal" "lib$PY-stdlib" git libgcc-s1 ca-certificates; do
    echo "$p $(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || echo none)"
  done
  exit 0
fi

out="${1:?usage: build-image.sh OUTDIR}"
mkdir -p "$out"
work="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cd "$work"

kpkg="$(kernel_pkg)"
[ -n "$kpkg" ] || { echo "no kernel package behind $KERNEL_META (apt-get update?)" >&2; exit 1; }
apt-get download -q "$kpkg" qemu-guest-agent busybox-static 2>&1 | grep -v '^W: Download is performed unsandboxed' || true
mkdir debs
for d in ./*.deb; do dpkg-deb -x "$d" debs; done
kver="${kpkg#linux-image-}"
mods="debs/lib/modules/$kver/kernel"
cp "debs/boot/vmlinuz-$kver" vmlinuz

# --- initramfs: busybox, modules, /init ---------------------------------------------------
mkdir -p initrd/bin initrd/lib/modules initrd/dev initrd/proc initrd/sys initrd/newroot
cp debs/bin/busybox initrd/bin/busybox
for m in drivers/virtio/virtio.ko drivers/virtio/virtio_ring.ko \
         drivers/virtio/virtio_pci_legacy_dev.ko drivers/virtio/virtio_pci_modern_dev.ko \
         drivers/virtio/virtio_pci.ko drivers/block/virtio_blk.ko drivers/char/virtio_console.ko \
         drivers/acpi/button.ko drivers/input/evdev.ko; do
  cp "$mods/$m" initrd/lib/modules/
done
cat > initrd/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
# `sdci.probe`: the accelerator probe only needs to see the kernel reach userland.
if grep -qw sdci.probe /proc/cmdline; then echo sdci-probe-ok; poweroff -f; fi
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk \
         virtio_console button evdev; do
  insmod /lib/modules/$m.ko 2>/dev/null || echo "sdci-initrd: insmod $m failed"
done
i=0; while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do usleep 50000; i=$((i+1)); done
mount -t ext4 -o rw /dev/vda /newroot || { echo "sdci-initrd: no root on /dev/vda"; poweroff -f; }
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
INIT
chmod 755 initrd/init
(cd initrd && find . | cpio -o -H newc --quiet | gzip -1) > initrd.img

# --- root filesystem ------------------------------------------------------------------------
r=root
mkdir -p $r/bin $r/sbin $r/usr/bin $r/usr/sbin $r/etc/pam.d $r/dev $r/proc $r/sys $r/run \
         $r/tmp $r/root $r/home/user $r/var/log $r/lib/x86_64-linux-gnu/security $r/lib64 \
         $r/etc/acpi
cp debs/bin/busybox $r/bin/busybox
for a in $(debs/bin/busybox --list); do
  case "$a" in busybox|setsid) ;; *) [ -e "$r/bin/$a" ] || ln -s busybox "$r/bin/$a" ;; esac
done
ln -s ../bin/busybox $r/sbin/init
ln -s ../../bin/busybox $r/usr/bin/env
cp debs/usr/sbin/qemu-ga $r/usr/sbin/qemu-ga
cp /usr/bin/setsid $r/usr/bin/setsid
cp /usr/sbin/runuser $r/usr/sbin/runuser
sec=/lib/x86_64-linux-gnu/security
cp $sec/pam_rootok.so $sec/pam_permit.so $r$sec/
# --- the job's userland, from this machine's packages -------------------------------------
# Executables go to /usr/bin (and replace busybox's applet of the same name in /bin, which comes
# first in the guest agent's PATH): the job's scripts need GNU tar, mktemp, find...
for f in $(dpkg -L coreutils findutils grep sed bash make tar | grep -E '^/(usr/)?s?bin/[^/]+$') \
         /bin/mount /bin/umount /usr/bin/unshare "/usr/bin/$PY" /usr/bin/git; do
  [ -f "$f" ] || continue
  n="$(basename "$f")"
  rm -f "$r/usr/bin/$n"; cp -L "$f" "$r/usr/bin/$n"
  rm -f "$r/bin/$n"; ln -s "../usr/bin/$n" "$r/bin/$n"
done
ln -sf "$PY" $r/usr/bin/python3
# /bin/sh is dash, as on Debian: busybox's shell would run its own applets before PATH's tools.
cp -L /bin/dash $r/bin/dash; rm -f $r/bin/sh; ln -s dash $r/bin/sh
mkdir -p $r/usr/lib/git-core $r/usr/share/git-core "$r/etc/$PY" $r/usr/local/bin
cp -L /usr/lib/git-core/git-remote-http $r/usr/lib/git-core/
ln -s git-remote-http $r/usr/lib/git-core/git-remote-https
cp -a /usr/share/git-core/templates $r/usr/share/git-core/ 2>/dev/null || true
[ ! -e "/etc/$PY/sitecustomize.py" ] || cp -L "/etc/$PY/sitecustomize.py" "$r/etc/$PY/"
# The standard library with its compiled modules (so imports need no compiling under TCG),
# without its tests, IDLE, Tk and the like.
tar -C / --exclude="$PY/test" --exclude="$PY/idlelib" --exclude="$PY/tkinter" \
    --exclude="$PY/turtledemo" --exclude="$PY/ensurepip" --exclude='*/tests' \
    --exclude="$PY/config-*" -cf - "usr/lib/$PY" | tar -C $r -xf -
cp -L /usr/lib/os-release $r/etc/os-release
# The CA bundle: sdci-agent's GitHub client (octocrab over rustls with the system's roots)
# cannot be built without one, even for the stand-in's http:// base.
mkdir -p $r/etc/ssl/certs
cp -L /etc/ssl/certs/ca-certificates.crt $r/etc/ssl/certs/ca-certificates.crt
# What the workspace's Rust binaries (sdci-dom0, sdci-agent, copied in per test world) link.
for lib in /lib/x86_64-linux-gnu/libgcc_s.so.1 /lib/x86_64-linux-gnu/libm.so.6; do
  mkdir -p "$r$(dirname "$lib")"; cp -L "$lib" "$r$lib"
done
mkdir -p $r/lib/modules/sdci
for m in net/core/failover.ko drivers/net/net_failover.ko drivers/net/virtio_net.ko \
         fs/overlayfs/overlay.ko; do
  cp "$mods/$m" $r/lib/modules/sdci/
done

# Shared libraries of every dynamic binary, from this machine (Debian 12, same as the .debs).
find $r -type f \( -perm -u+x -o -name '*.so*' \) -print | while read -r b; do
  head -c 4 "$b" | grep -q 'ELF' || continue
  { ldd "$b" 2>/dev/null || true; } | awk '/=>/{print $3} /ld-linux/{print $1}' | while read -r lib; do
    [ -n "$lib" ] && [ "$lib" != "not" ] || continue
    [ -f "$lib" ] || { echo "missing library $lib for $b" >&2; exit 1; }
    [ -e "$r$lib" ] || { mkdir -p "$r$(dirname "$lib")"; cp -L "$lib" "$r$lib"; }
  done
done
printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n' > $r/etc/passwd
printf 'root:x:0:\nuser:x:1000:\n' > $r/etc/group
printf 'root:*:19000:0:99999:7:::\nuser:*:19000:0:99999:7:::\n' > $r/etc/shadow
chmod 600 $r/etc/shadow
printf 'auth sufficient pam_rootok.so\naccount sufficient pam_permit.so\nsession sufficient pam_permit.so\n' > $r/etc/pam.d/runuser
cp $r/etc/pam.d/runuser $r/etc/pam.d/other
chown 1000:1000 $r/home/user
echo sdci-guest > $r/etc/hostname
cat > $r/etc/inittab <<'TAB'
::sysinit:/etc/rc.sdci
::respawn:/etc/qemu-ga.sdci
::shutdown:/bin/sync
::shutdown:/bin/umount -a -r
TAB
cat > $r/etc/rc.sdci <<'RC'
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys
mount -t tmpfs -o mode=755 run /run; mount -t tmpfs -o mode=1777 tmp /tmp
mkdir -p /dev/pts; mount -t devpts devpts /dev/pts
mount -o remount,rw /
hostname -F /etc/hostname
ip link set lo up
# A NIC (a domain's restricted user network): the modules, the guest's address.
for m in failover net_failover virtio_net overlay; do insmod /lib/modules/sdci/$m.ko 2>/dev/null; done
if [ -e /sys/class/net/eth0 ]; then ip addr add 10.0.2.15/24 dev eth0; ip link set eth0 up; fi
# `sdci.world=PATH`: the world disk /dev/vdb at PATH, its own set-up first.
w="$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^sdci\.world=//p')"
if [ -n "$w" ]; then
  mkdir -p "$w" && mount -t ext4 -o commit=1 /dev/vdb "$w" && [ -x "$w/.sdci/rc" ] && "$w/.sdci/rc" "$w" \
    || echo "sdci-guest: world $w not set up"
fi
# `sdci.noacpi`: a guest that ignores the power button (shutdown must end in a power-off).
grep -qw sdci.noacpi /proc/cmdline || acpid -c /etc/acpi -a /etc/acpid.conf -l /run/acpid.log
echo "sdci-guest: up in $(cut -d' ' -f1 /proc/uptime) s"
RC
# The ACPI power button (libvirt's ACPI shutdown) powers off, as a full distribution would.
mkdir -p $r/etc/acpi/PWRF
printf 'PWRF PWRF/00000080\n' > $r/etc/acpid.conf
printf '#!/bin/sh\nexec /bin/busybox poweroff\n' > $r/etc/acpi/PWRF/00000080
chmod 755 $r/etc/acpi/PWRF/00000080
cat > $r/etc/qemu-ga.sdci <<'GA'
#!/bin/sh
# Kernel command line `sdci.noagent` = a guest whose agent never starts (the fault tests).
if grep -qw sdci.noagent /proc/cmdline; then exec sleep 2147483647; fi
# The guest agent's environment, which its programs inherit: a world disk's rc may add to it.
if [ -r /etc/sdci-guest.env ]; then set -a; . /etc/sdci-guest.env; set +a; fi
for p in /sys/class/virtio-ports/*; do
  if [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ]; then
    echo "sdci-guest: qemu-ga on /dev/$(basename "$p")" > /dev/console
    exec /usr/sbin/qemu-ga -m virtio-serial -p "/dev/$(basename "$p")" -t /run
  fi
done
echo "sdci-guest: no guest agent port" > /dev/console; exec sleep 5
GA
chmod 755 $r/etc/rc.sdci $r/etc/qemu-ga.sdci
# /sbin/shutdown, as qemu-ga's guest-shutdown calls it: power off through init.
printf '#!/bin/sh\nexec /bin/busybox poweroff\n' > $r/sbin/shutdown; chmod 755 $r/sbin/shutdown
mkfs.ext4 -q -F -L sdci-root -d $r root.raw "$(( $(du -sm $r | cut -f1) * 3 / 2 + 64 ))M"
qemu-img convert -q -f raw -O qcow2 root.raw root.qcow2

mv vmlinuz initrd.img root.qcow2 "$out/"
echo "built $out: kernel $kver, root $(du -h "$out/root.qcow2" | cut -f1) qcow2"

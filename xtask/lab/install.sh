#!/usr/bin/env bash
# Installs what haul's tests, demo and benchmarks need on a fresh Debian 12 machine of this kind,
# without touching the system libc:
#   - iptables, runc, busybox-static, qemu-user-static, iproute2, util-linux (nsenter) from bookworm;
#   - CRIU 4.1.1 from Debian 13 (trixie), unpacked with `dpkg -x` into a private prefix
#     (default /opt/haul-lab/criu) and started through that prefix's own dynamic loader by a
#     small `criu` wrapper in /usr/local/bin.
# Idempotent: every step is skipped when its result is already present.
set -euo pipefail

PREFIX=${HAUL_LAB_PREFIX:-/opt/haul-lab/criu}
WRAPPER=${HAUL_LAB_WRAPPER:-/usr/local/bin/criu}

log() { printf 'lab: %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  log "must run as root (installs packages and a criu wrapper)"; exit 1
fi

need_pkgs=()
for pair in iptables:iptables runc:runc busybox:busybox-static qemu-aarch64-static:qemu-user-static \
            ip:iproute2 nsenter:util-linux; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
# busybox may exist as a dynamic binary; the container rootfs needs the static one.
[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' || need_pkgs+=(busybox-static)

export DEBIAN_FRONTEND=noninteractive
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" file >/dev/null
fi

# CRIU's lazy page server (haul migrate --lazy) sizes a pipe to 3.2 MiB; above fs.pipe-max-size
# that needs CAP_SYS_RESOURCE, which root lacks on this kind of VM.
want_pipe=4194304
if [ "$(cat /proc/sys/fs/pipe-max-size 2>/dev/null || echo 0)" -lt "$want_pipe" ]; then
  log "raising fs.pipe-max-size to $want_pipe (CRIU lazy pages)"
  sysctl -q -w fs.pipe-max-size="$want_pipe" || log "note: cannot raise fs.pipe-max-size"
fi

criu_ok() { "$WRAPPER" --version 2>/dev/null | grep -q 'Version: 4\.'; }

# CRIU caches its kernel probes in /run/criu.kdat but writes the cache only on a tmpfs. On this
# kind of VM /run is not one, so every CRIU start would probe the kernel again (tens of ms, and
# for the restoring CRIU inside the freeze), unlike on a host whose /run is a tmpfs. Write the
# cache once per boot in a private mount namespace with a tmpfs on /run.
kdat_cache() {
  [ "$(stat -f -c %T /run 2>/dev/null)" = tmpfs ] && return 0
  boot=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || echo unknown)
  stamp=/run/haul-lab-criu.kdat.boot
  if [ -f /run/criu.kdat ] && [ "$(cat "$stamp" 2>/dev/null)" = "$boot" ]; then return 0; fi
  tmp=$(mktemp)
  if unshare -m sh -c "mount --make-rprivate / && mount -t tmpfs haul-lab /run && \"$WRAPPER\" check >/dev/null 2>&1; cat /run/criu.kdat" >"$tmp" 2>/dev/null && [ -s "$tmp" ]; then
    install -m 0600 "$tmp" /run/criu.kdat && echo "$boot" >"$stamp"
    log "criu: kernel probe cache written to /run/criu.kdat (this /run is not a tmpfs)"
  else
    log "note: could not write CRIU's kernel probe cache"
  fi
  rm -f -- "$tmp"
}

if [ -x "$WRAPPER" ] && criu_ok; then
  log "criu: $("$WRAPPER" --version | head -1)"
  kdat_cache
  exit 0
fi

# A trixie source pinned low so nothing else upgrades from it.
if [ ! -f /etc/apt/sources.list.d/haul-trixie.sources ]; then
  log "adding a low-priority trixie apt source for CRIU 4.x"
  cat >/etc/apt/sources.list.d/haul-trixie.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  cat >/etc/apt/preferences.d/haul-trixie <<'PIN'
Package: *
Pin: release n=trixie
Pin-Priority: 50
PIN
fi
apt-get update -qq

debs=(criu libcompel1 libc6 libbsd0 libmd0 libgnutls30t64 libnettle8t64 libhogweed6t64 libgmp10
      libidn2-0 libunistring5 libp11-kit0 libffi8 libtasn1-6 libnet1 libnftables1 libnftnl11 libmnl0
      libjansson4 libxtables12 libgcc-s1 libnl-3-200 libprotobuf-c1 libuuid1 libedit2 libtinfo6
      libbrotli1 libzstd1 libcap2 libselinux1 libpcre2-8-0 libnl-route-3-200 libaio1t64)
dl=$(mktemp -d)
trap 'rm -rf -- "$dl"' EXIT
( cd "$dl"
  for d in "${debs[@]}"; do
    apt-get download -qq -t trixie "$d" >/dev/null 2>&1 || log "note: $d not downloadable from trixie (skipped)"
  done )
mkdir -p "$PREFIX"
for f in "$dl"/*.deb; do dpkg -x "$f" "$PREFIX"; done
lib="$PREFIX/usr/lib/x86_64-linux-gnu"
[ -x "$PREFIX/usr/sbin/criu" ] || { log "criu binary missing after unpacking"; exit 1; }
cat >"$WRAPPER" <<WRAP
#!/bin/sh
# CRIU 4.x from Debian trixie in a private prefix (installed by haul's xtask/lab/install.sh).
exec $lib/ld-linux-x86-64.so.2 --library-path $lib:$PREFIX/lib/x86_64-linux-gnu $PREFIX/usr/sbin/criu "\$@"
WRAP
chmod 0755 "$WRAPPER"
if ! criu_ok; then
  log "criu wrapper does not run:"; "$WRAPPER" --version || true; exit 1
fi
log "criu: $("$WRAPPER" --version | head -1)"
kdat_cache

#!/usr/bin/env bash
# One entry point for a fresh Debian 12 machine, as root:
#   ./run.sh quickstart   install what is needed, then run the quickstart tour
#   ./run.sh test         install what is needed, then run every test tier (tox)
#   ./run.sh bench        install what is needed, then run the benchmarks
#   ./run.sh setup        only install
# Installing is idempotent: Debian packages already present are not fetched
# again, and the virtualenv is rebuilt only when setup.py changes.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

DEBS=(python3 python3-venv python3-dev gcc util-linux e2fsprogs xfsprogs btrfs-progs
      qemu-utils qemu-system-common qemu-system-x86 qemu-block-extra tgt libiscsi-bin
      libnbd-bin openssl libvirt-daemon-system libvirt-clients libvirt-dev pkg-config
      parted iproute2
      ceph-mon ceph-osd ceph-mgr ceph-common python3-rbd python3-rados
      prometheus postgresql-15)
# The librados/librbd bindings (python3-rados, python3-rbd) exist only for
# Debian's own interpreter, so the virtualenv is built from it and sees its
# system site-packages.
PYTHON=/usr/bin/python3
VENV=.venv

need_debs() {
    local missing=()
    for pkg in "${DEBS[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "run.sh: installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get -o DPkg::Lock::Timeout=600 update -qq
        apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
}

need_venv() {
    local stamp="$VENV/.vvhost-stamp" want
    want=$( { sha256sum setup.py run.sh; readlink -f "$PYTHON"; } | sha256sum | cut -c1-16)
    if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] \
        || ! "$VENV/bin/python" -c 'import rados, rbd' 2>/dev/null; then
        echo "run.sh: preparing $VENV"
        "$PYTHON" -m venv --clear --system-site-packages "$VENV"
        "$VENV/bin/pip" install -q --upgrade pip
        "$VENV/bin/pip" install -q -e '.[test]' tox ruff mypy
        echo "$want" > "$stamp"
    fi
}

[ "$(id -u)" = 0 ] || { echo "run.sh: run me as root (loop mounts, daemons)" >&2; exit 1; }
need_debs
need_venv
case "${1:-}" in
    setup) ;;
    quickstart) shift; exec "$VENV/bin/vvhost" quickstart "$@" ;;
    test) shift; exec "$VENV/bin/tox" run -e lint,type,unit,integration -- "$@" ;;
    bench) shift; exec "$VENV/bin/python" -m bench "$@" ;;
    *) echo "usage: $0 quickstart|test|bench|setup" >&2; exit 2 ;;
esac

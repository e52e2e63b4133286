"""The QEMU that domains with RBD disks in a RADOS namespace run: libvirt 9.0 has
no way to say "namespace" for an RBD disk, so this passes it on.

libvirt splits ``<source protocol='rbd' name='POOL/NS/IMAGE'>`` at the first
``/`` only and starts QEMU with an ``image`` that still holds the namespace;
QEMU's rbd driver takes the image name literally and librbd then looks in the
pool's default namespace, which a host's Ceph identity may not read. This
script, the domain's ``<emulator>``, rewrites exactly those nodes and execs the
real QEMU (same PID, every other argument untouched)::

    -blockdev {"driver":"rbd","pool":"P","image":"NS/IMAGE",...}
        -> -blockdev {"driver":"rbd","pool":"P","namespace":"NS","image":"IMAGE",...}

It also hands QEMU the host's current Ceph key. The identity and its key
last as long as the host (between bindings its caps are emptied, the key
stays); only ``token-rotate`` makes the key anew, and the hook, which binds
right before QEMU starts (start, restore, incoming migration) and writes the
key to ``CEPH_DIR/USER.key``, cannot update the libvirt secret (it must not
call libvirt), which may then still hold the old one. So where that file exists, the
node's ``key-secret`` names a secret object read from it instead of libvirt's::

    -blockdev {"driver":"rbd",...,"user":"U","key-secret":"libvirt-1-storage-auth-secret0"}
        -> -object {"qom-type":"secret","id":"vvkey-U","file":"CEPH_DIR/U.key","format":"base64"}
           -blockdev {"driver":"rbd",...,"user":"U","key-secret":"vvkey-U"}

Installed next to the hook (``install``) as ``/etc/libvirt/hooks/vvhost-qemu``:
libvirt runs no hook of that name, and a lab host's private /etc/libvirt/hooks
gives each host its own copy. RBD image names never hold a ``/`` (vvhost names
them), so the split is unambiguous. What it does not reach: nodes libvirt adds
over QMP to a running domain (block copy destinations, external snapshot
overlays) keep the namespace in the image name and fail to open.

This file is also the script itself: it imports only the standard library.
"""

from __future__ import annotations

import json
import os
import sys

REAL_QEMU = "/usr/bin/qemu-system-x86_64"
NAME = "vvhost-qemu"
PATH = "/etc/libvirt/hooks/" + NAME  # as libvirtd and QEMU see it
CEPH_DIR: str | None = None  # the host configuration's ceph_dir, set in the installed copy
KEY_PREFIX = "vvkey-"


def rewrite_node(node: dict[str, object]) -> dict[str, object]:
    """An rbd node whose image names its namespace, made explicit (others as they are)."""
    image = node.get("image")
    if node.get("driver") != "rbd" or not isinstance(image, str) or "/" not in image:
        return node
    if node.get("namespace"):
        return node
    namespace, _, name = image.partition("/")
    out: dict[str, object] = {}
    for key, value in node.items():
        if key == "image":
            out["namespace"] = namespace
            out["image"] = name
        else:
            out[key] = value
    return out


def key_file(ceph_dir: str | None, node: dict[str, object]) -> str | None:
    """The host's key file for an rbd node's user, when the hook has written one."""
    user = node.get("user")
    if node.get("driver") != "rbd" or not ceph_dir or not isinstance(user, str):
        return None
    if not user or "/" in user or user.startswith("."):
        return None
    path = os.path.join(ceph_dir, f"{user}.key")
    return path if os.path.isfile(path) else None


def rewrite(argv: list[str], ceph_dir: str | None = None) -> list[str]:
    """QEMU's arguments with every ``-blockdev`` JSON rbd node rewritten (and, with
    ``ceph_dir``, reading its key from the host's key file; each object once)."""
    out: list[str] = []
    keys: set[str] = set()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg != "-blockdev" or i + 1 >= len(argv) or not argv[i + 1].startswith("{"):
            out.append(arg)
            i += 1
            continue
        value = argv[i + 1]
        try:
            node = json.loads(value)
        except ValueError:
            node = None
        if isinstance(node, dict):
            fixed = rewrite_node(node)
            path = key_file(ceph_dir, fixed)
            if path is not None:
                secret = KEY_PREFIX + str(fixed["user"])
                if secret not in keys:
                    keys.add(secret)
                    obj = {"qom-type": "secret", "id": secret, "file": path, "format": "base64"}
                    out += ["-object", json.dumps(obj, separators=(",", ":"))]
                fixed = {**fixed, "key-secret": secret}
            if fixed != node:
                value = json.dumps(fixed, separators=(",", ":"))
        out += [arg, value]
        i += 2
    return out


def script(ceph_dir: str | None = None) -> str:
    """The installed script: this module's source under a system Python shebang,
    with the host's ``ceph_dir``."""
    with open(__file__, encoding="utf-8") as fh:
        source = fh.read()
    line = "CEPH_DIR: str | None = None"
    return "#!/usr/bin/python3 -I\n" + source.replace(
        line, f"CEPH_DIR: str | None = {ceph_dir!r}", 1
    )


def install(hooks_dir: str, ceph_dir: str | None = None) -> str:
    """Write the script into ``hooks_dir`` (libvirt's /etc/libvirt/hooks); idempotent."""
    path = os.path.join(hooks_dir, NAME)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(script(ceph_dir))
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path


def main() -> None:
    os.execv(REAL_QEMU, [REAL_QEMU, *rewrite(sys.argv[1:], CEPH_DIR)])


if __name__ == "__main__":
    main()

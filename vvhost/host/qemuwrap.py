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


def rewrite(argv: list[str]) -> list[str]:
    """QEMU's arguments with every ``-blockdev`` JSON rbd node rewritten."""
    out = list(argv)
    for i in range(len(out) - 1):
        if out[i] != "-blockdev" or not out[i + 1].startswith("{"):
            continue
        try:
            node = json.loads(out[i + 1])
        except ValueError:
            continue
        if isinstance(node, dict):
            fixed = rewrite_node(node)
            if fixed is not node:
                out[i + 1] = json.dumps(fixed, separators=(",", ":"))
    return out


def script() -> str:
    """The installed script: this module's source under a system Python shebang."""
    with open(__file__, encoding="utf-8") as fh:
        return "#!/usr/bin/python3 -I\n" + fh.read()


def install(hooks_dir: str) -> str:
    """Write the script into ``hooks_dir`` (libvirt's /etc/libvirt/hooks); idempotent."""
    path = os.path.join(hooks_dir, NAME)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(script())
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path


def main() -> None:
    os.execv(REAL_QEMU, [REAL_QEMU, *rewrite(sys.argv[1:])])


if __name__ == "__main__":
    main()

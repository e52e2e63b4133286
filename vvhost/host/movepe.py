"""The endpoint a VM binds through once ``move-storage`` has taken its disks to
another array (a ``dir`` file and an RBD image are not served by the same
endpoints)::

    arrays after     the target container's arrays + the arrays of disks that stay
    fitting          the endpoints the VM's datastore offers this host
                     (``datastore resolve``: each with the arrays it serves)
                     that serve every one of those arrays
    order            the VM's own endpoint while its disks stay on the same kinds
                     of array (a dir -> dir move keeps it), the host's configured
                     ``pe``, the host's ``protocol``, then the most direct path:
                     with RBD disks rbd, nbd, iscsi (over FUSE); else iscsi, nbd, file

A stopped VM takes the first fitting endpoint.  A running guest's disks are
block copied onto bindings libvirt can add to a running domain: an RBD image in
a RADOS namespace cannot be (libvirt 9.0 has no namespace field, see
``handles/rbd.py``), so the copy goes through the next fitting endpoint (nbd:
a qemu-storage-daemon rbd node), and the guest runs on that one from then on.
"""

from __future__ import annotations

from typing import Any

ORDER = ("rbd", "iscsi", "nbd", "file")  # dir arrays only: rbd never fits there
ORDER_RBD = ("rbd", "nbd", "iscsi", "file")  # fewest layers in front of librbd first


def fitting(
    offered: list[dict[str, Any]],
    arrays: set[str],
    current: str | None,
    conf_pe: str | None,
    protocol: str | None,
    rbd: bool = False,
) -> list[str]:
    """The names of the ``offered`` endpoints serving all of ``arrays``, best first
    (``current``: the VM's own endpoint when it should be kept if it can; ``rbd``:
    some of ``arrays`` are RBD arrays)."""
    order = ORDER_RBD if rbd else ORDER

    def rank(p: dict[str, Any]) -> tuple[int, int, int, str]:
        own = 0 if p["name"] == current else 1 if p["name"] == conf_pe else 2
        kind = order.index(p["protocol"]) if p["protocol"] in order else len(order)
        return own, 0 if p["protocol"] == protocol else 1, kind, str(p["name"])

    fits = [p for p in offered if arrays <= set(p.get("arrays") or ())]
    return [str(p["name"]) for p in sorted(fits, key=rank)]


def same_kinds(backends: dict[str, str], before: set[str], after: set[str]) -> bool:
    """Whether the arrays ``before`` and ``after`` are of the same backends."""
    return {backends.get(a) for a in before} == {backends.get(a) for a in after}

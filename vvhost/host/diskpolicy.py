"""What every vvol disk of a domain does when its array runs out, and with discards.

    <driver name='qemu' type='raw' ... error_policy='stop' rerror_policy='stop'
            discard='unmap'/>

``error_policy='stop'``: a write the array cannot take (ENOSPC from a full file
system behind a file, an NBD export or an iSCSI LUN; librados itself holds
writes to a full Ceph pool until there is room) pauses the guest instead of
failing its I/O; the failed request is issued again when the VM is resumed
(host/vmpause.py), so the guest never sees an error and loses nothing. ``stop``
rather than ``enospc``: tgtd reports a full backing file as an unspecified I/O
error, which ``enospc`` would hand to the guest.
``rerror_policy='stop'``: the same for reads.

``discard='unmap'``: the guest's discards (fstrim, blkdiscard) reach the array
(NBD trim, SCSI UNMAP, RBD discard, hole punching in files), so space the guest
frees comes back to the array.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

POLICY = {"error_policy": "stop", "rerror_policy": "stop", "discard": "unmap"}


def apply_policy(driver: ET.Element) -> None:
    """Give a disk's ``<driver>`` vvhost's error and discard policy."""
    for name, value in POLICY.items():
        driver.set(name, value)


def has_policy(driver: ET.Element | None) -> bool:
    return driver is not None and all(driver.get(k) == v for k, v in POLICY.items())

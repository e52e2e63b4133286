"""Names of everything the RBD array makes, derived from vvol ids and operation ids.

    pool (default namespace)     vvhost.array   marker: the id of the array owning the pool
                                 vvhost.index   the array's index (omap, see rbdindex.py)
    pool/<space>/vv-<vvol>                       a vvol's image
    pool/<space>/vv-<vvol>@vs-<snap>             a snapshot vvol: an RBD snapshot of its base
    pool/<space>/vv-<vvol>@vc-<clone>            the point a linked clone of a live vvol was
                                                 cut from (owned by the clone: removed with it)
    pool/<space>/vv-<vvol>.r-<op>                the data a revert staged (operation ``op``)
    pool/<space>/vv-<vvol>.p-<op>                a spare clone of the snapshot revert ``op``
                                                 went to, for the next revert to it

Nothing is named at random, so whatever a crash leaves half-made is found again
from the journal's ids alone.  Ids go into RADOS and RBD names verbatim and so
may only use a safe alphabet.
"""

from __future__ import annotations

import re

from ..errors import InvalidInput

MARKER = "vvhost.array"
INDEX = "vvhost.index"
IMAGE_PREFIX = "vv-"

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


def check_id(what: str, value: str) -> str:
    """``value`` if it is usable in an RBD or RADOS name, else ``InvalidInput``."""
    if not _SAFE.fullmatch(value) or ".." in value:
        raise InvalidInput(detail=f"{what} {value!r} cannot name RBD data (use A-Z a-z 0-9 _ . -)")
    return value


def image(vvol_id: str) -> str:
    return IMAGE_PREFIX + check_id("vvol id", vvol_id)


def snap(snap_id: str) -> str:
    return "vs-" + check_id("snapshot id", snap_id)


def clone_point(clone_id: str) -> str:
    return "vc-" + check_id("clone id", clone_id)


def staged(vvol_id: str, op: str) -> str:
    return f"{image(vvol_id)}.r-{check_id('operation id', op)}"


def spare(vvol_id: str, op: str) -> str:
    return f"{image(vvol_id)}.p-{check_id('operation id', op)}"


def namespace(space: str) -> str:
    """The RADOS namespace of a storage container (``""``: the pool's default one)."""
    return space if space == "" else check_id("storage container", space)


def ours(image_name: str) -> bool:
    """Whether an image name is one this backend makes (the reaper purges only those)."""
    return image_name.startswith(IMAGE_PREFIX)

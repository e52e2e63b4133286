"""The RBD array's durable index: one omap object in the pool's default namespace.

    vvhost.index  (omap; values are JSON)
      vvol:<id>             Entry   where a vvol's data is: namespace, image name and id,
                                    snapshot name (snapshot vvols), state, ...
      staged:<id>:<op>      Image   the clone a revert staged, until commit or undo
      retired:<image id>    Image   an image no vvol writes to any more, kept while
                                    snapshot vvols still read it
      spare:<snap id>       Image   a clone of that snapshot nobody wrote to, kept for
                                    the next revert to it (rbdrevert.py)
      space:<namespace>     ""      namespaces this array made (the reaper walks them)

A multi-key change is one RADOS write operation, so it lands whole or not at
all: a revert commit swaps the vvol's image and retires the old one at once.
An entry is written in state ``creating`` before its image or snapshot exists,
so whatever a crash leaves behind is named here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import rados

from ..errors import BackendError, Corrupt
from . import rbdnames
from .rbdconn import Cluster

PAGE = 512


@dataclass(frozen=True)
class Image:
    """An RBD image: namespace, name and id (the id survives renames and the trash)."""

    ns: str
    name: str
    image_id: str = ""


@dataclass(frozen=True)
class Entry:
    kind: str  # "image" (a data volume, clone) or "snap" (an RBD snapshot of ``image``)
    ns: str
    image: str
    image_id: str = ""
    snap: str | None = None
    state: str = "creating"  # "ready" once the data is whole
    readonly: bool = False
    chain: list[str] = field(default_factory=list)  # copy_in: the snapshot ids it makes
    clone_of: Image | None = None  # linked clone of a live vvol: the image of its cut point

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def ref(self) -> Image:
        return Image(self.ns, self.image, self.image_id)


def vvol_key(vvol_id: str) -> str:
    return f"vvol:{vvol_id}"


def staged_key(vvol_id: str, op: str) -> str:
    return f"staged:{vvol_id}:{op}"


def retired_key(image_id: str) -> str:
    return f"retired:{image_id}"


def spare_key(snap_id: str) -> str:
    return f"spare:{snap_id}"


def space_key(ns: str) -> str:
    return f"space:{ns}"


Record = Entry | Image | str


def encode(record: Record) -> bytes:
    return json.dumps(record if isinstance(record, str) else asdict(record)).encode()


def decode_entry(raw: bytes) -> Entry:
    data = json.loads(raw)
    known = {f.name for f in fields(Entry)}
    data = {k: v for k, v in data.items() if k in known}
    if data.get("clone_of") is not None:
        data["clone_of"] = Image(**data["clone_of"])
    return Entry(**data)


def decode_image(raw: bytes) -> Image:
    return Image(**json.loads(raw))


class Index:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def _items(self, prefix: str) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        after = ""
        with self.cluster.ioctx() as io:
            while True:
                with rados.ReadOpCtx() as op:
                    it, _ = io.get_omap_vals(op, after, prefix, PAGE)
                    try:
                        io.operate_read_op(op, rbdnames.INDEX)
                    except rados.ObjectNotFound:
                        return out
                    except rados.Error as exc:
                        raise self._error("reading the index", exc) from None
                    page = [(str(k), bytes(v)) for k, v in it]
                out.update(page)
                if len(page) < PAGE:
                    return out
                after = page[-1][0]

    def _one(self, key: str) -> bytes | None:
        return self._items(key).get(key)

    def pick(self, keys: list[str]) -> dict[str, bytes]:
        """The values of exactly these keys (those that exist), in one read."""
        with self.cluster.ioctx() as io, rados.ReadOpCtx() as op:
            it, _ = io.get_omap_vals_by_keys(op, tuple(keys))
            try:
                io.operate_read_op(op, rbdnames.INDEX)
            except rados.ObjectNotFound:
                return {}
            except rados.Error as exc:
                raise self._error("reading the index", exc) from None
            return {str(k): bytes(v) for k, v in it}

    def apply(self, put: dict[str, Record] | None = None, drop: list[str] | None = None) -> None:
        """Set and remove keys in one atomic write."""
        put, drop = put or {}, drop or []
        with self.cluster.ioctx() as io, rados.WriteOpCtx() as op:
            if put:
                io.set_omap(op, tuple(put), tuple(encode(v) for v in put.values()))
            if drop:
                io.remove_omap_keys(op, tuple(drop))
            try:
                io.operate_write_op(op, rbdnames.INDEX)
            except rados.Error as exc:
                raise self._error("writing the index", exc) from None

    def _error(self, what: str, exc: Exception) -> BackendError:
        return BackendError(array=self.cluster.array, detail=f"{what}: {exc}")

    # -- typed views ------------------------------------------------------------------
    def entry(self, vvol_id: str) -> Entry | None:
        raw = self._one(vvol_key(vvol_id))
        return None if raw is None else self.decode(vvol_id, raw)

    def entries(self) -> dict[str, Entry]:
        return {
            key.split(":", 1)[1]: self.decode(key, raw) for key, raw in self._items("vvol:").items()
        }

    def decode(self, ref: str, raw: bytes) -> Entry:
        try:
            return decode_entry(raw)
        except (ValueError, TypeError) as exc:
            raise Corrupt(kind="rbd index entry", ref=ref, detail=str(exc)) from None

    def put(self, vvol_id: str, entry: Entry) -> None:
        self.apply(put={vvol_key(vvol_id): entry})

    def staged(self, vvol_id: str) -> dict[str, Image]:
        """op -> staged image, for every revert of ``vvol_id`` not yet committed or undone."""
        prefix = staged_key(vvol_id, "")
        return {k[len(prefix) :]: decode_image(v) for k, v in self._items(prefix).items()}

    def spare(self, snap_id: str) -> Image | None:
        raw = self._one(spare_key(snap_id))
        return None if raw is None else decode_image(raw)

    def spares(self) -> dict[str, Image]:
        """snapshot id -> its spare clone."""
        return {k.split(":", 1)[1]: decode_image(v) for k, v in self._items("spare:").items()}

    def retired(self) -> dict[str, Image]:
        return {k.split(":", 1)[1]: decode_image(v) for k, v in self._items("retired:").items()}

    def spaces(self) -> list[str]:
        return sorted(k.split(":", 1)[1] for k in self._items("space:"))


def users(entries: dict[str, Any], image_id: str) -> list[str]:
    """Ids of the vvols whose data lives on image ``image_id`` (its own vvol, its snapshots)."""
    return sorted(vid for vid, e in entries.items() if e.image_id == image_id)

"""The document a config vvol holds (a VM's domain XML and disk descriptors),
written into the volume itself so it travels with the storage::

    offset 0   b"VVHCFG01"            magic
           8   u64 little endian      length of the JSON that follows
          16   JSON (UTF-8)

Saving is compare-and-set on the config vvol's generation: ``get`` answers the
generation it read, ``put`` with that generation writes only if nobody saved in
between (else 409 ``stale-generation``) and bumps it, so a lost update is
impossible.  A snapshot's document (a read-only vvol) is never replaced.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from ..catalog import vvolrepo
from ..errors import Corrupt, InvalidInput, ReadOnly
from ..model import Vvol
from .context import Context

MAGIC = b"VVHCFG01"
HEADER = struct.Struct("<8sQ")


class ConfigDocs:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def _config(self, ref: str) -> Vvol:
        with self.ctx.db.tx() as conn:
            v = self.ctx.ready(self.ctx.vvol(conn, ref))
        if v.type != "config":
            raise InvalidInput(detail=f"vvol {ref!r} is a {v.type} vvol, not a config vvol")
        self.ctx.source(v)  # online, with its data there
        return v

    def put(
        self, ref: str, document: dict[str, Any], generation: int | None = None
    ) -> dict[str, Any]:
        """Write the document; with ``generation``, only if the vvol is still at it."""
        cfg = self._config(ref)
        size, vid = cfg.size, cfg.id
        data = json.dumps(document, sort_keys=True).encode()
        if HEADER.size + len(data) > size:
            raise InvalidInput(
                detail=f"the document ({len(data)} bytes) does not fit the {size}-byte config vvol"
            )
        with self.ctx.locks.hold([vid]), self.ctx.db.tx() as conn:
            v = self.ctx.ready(self.ctx.vvol(conn, vid))
            if v.readonly:
                raise ReadOnly(ref=v.name or v.id, action="replace its config document")
            self.ctx.expect(v, generation)
            vvolrepo.change(conn, v)  # generation + 1, or StaleGeneration if it moved
            with self.ctx.backend(v.array).open(v.id, writable=True) as io:
                io.write(0, HEADER.pack(MAGIC, len(data)) + data)
                io.flush()
        return {"vvol": vid, "bytes": len(data), "generation": v.generation + 1}

    def get(self, ref: str) -> dict[str, Any]:
        cfg = self._config(ref)
        size, vid = cfg.size, cfg.id
        with self.ctx.db.tx() as conn:
            generation = self.ctx.vvol(conn, vid).generation
        with self.ctx.backend(cfg.array).open(vid) as io:
            head = io.read(0, HEADER.size)
            magic, length = HEADER.unpack(head) if len(head) == HEADER.size else (b"", 0)
            if magic != MAGIC:
                raise InvalidInput(detail=f"config vvol {ref!r} holds no vvhost document")
            if length > size - HEADER.size:
                raise Corrupt(
                    kind="config vvol", ref=ref, detail=f"its header claims {length} bytes"
                )
            raw = io.read(HEADER.size, length)
        return {"vvol": vid, "document": parse_document(ref, raw), "generation": generation}


def parse_document(ref: str, raw: bytes) -> dict[str, Any]:
    """The stored JSON object, or :class:`Corrupt` saying what is wrong with it."""
    try:
        document = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise Corrupt(kind="config vvol", ref=ref, detail="its document is not UTF-8") from None
    except ValueError as exc:
        raise Corrupt(
            kind="config vvol", ref=ref, detail=f"its document is not valid JSON ({exc})"
        ) from None
    if not isinstance(document, dict):
        raise Corrupt(
            kind="config vvol",
            ref=ref,
            detail=f"its document is a JSON {type(document).__name__}, not an object",
        )
    return document

"""Data movement: move a vvol (with its snapshots) between containers, chunk
bitmaps, and copying only the chunks that changed between two points."""

from __future__ import annotations

import os
from contextlib import ExitStack
from typing import Any

from .. import bitmap
from ..arrays import ArrayBackend, volio
from ..arrays.base import Changed, Progress
from ..arrays.sources import FileSource
from ..catalog import repo, vvolrepo
from ..errors import (
    ArrayOffline,
    BackendError,
    DataMissing,
    HasDependants,
    InvalidInput,
    PathConflict,
    ReadOnly,
    VvhostError,
)
from ..model import FAILED, MOVING, READY, SNAPSHOT, WRITING, Container, JournalEntry, Vvol
from ..units import parse_size
from .bindings import ensure_unbound
from .context import Context
from .vvols import VvolOps


def parse_chunk(chunk: str | int | None) -> int:
    if chunk is None:
        return bitmap.DEFAULT_CHUNK
    value = parse_size(chunk, what="chunk", align=4096)
    if value & (value - 1):
        raise InvalidInput(detail=f"chunk {value} is not a power of two")
    return value


class DataOps:
    def __init__(self, ctx: Context, vvols: VvolOps) -> None:
        self.ctx = ctx
        self.vvols = vvols

    # -- move ---------------------------------------------------------------------------
    def move(self, ref: str, container: str, op_id: str | None = None) -> dict[str, Any]:
        op = self.ctx.new_op(op_id)
        with self.ctx.db.tx() as conn:
            v = self.ctx.vvol(conn, ref)
            family = [v.id] + [d.id for d in vvolrepo.dependants(conn, v.id)]
        with self.ctx.locks.hold(family):
            with self.ctx.db.tx() as conn:
                v = self.ctx.ready(self.ctx.vvol(conn, ref))
                if v.is_snapshot:
                    raise InvalidInput(
                        detail=f"{ref!r} is a snapshot: move its base vvol, snapshots move with it"
                    )
                members = self._family(conn, v)
                for m in members:
                    ensure_unbound(conn, m, "move it")
                src_c = self.vvols.containers.get(conn, v.container)
                dst_c = self.vvols.containers.get(conn, container)
                if dst_c.id == src_c.id:
                    return self.vvols.describe(conn, v)
                total = sum(m.charge for m in members)
                self.vvols.space.admit(conn, dst_c, total, sum(m.held for m in members), "move")
                if v.array in dst_c.arrays:  # same array: the array relocates, if it cares
                    for m in members:
                        vvolrepo.change(conn, m, bump=False, state=MOVING, op=op)
                    args = {
                        "members": [m.id for m in members],
                        "src_container": src_c.id,
                        "dst_container": dst_c.id,
                        "total": total,
                    }
                    self.ctx.journal(conn, op, "relocate", v.id, args)
                else:
                    args = self._prepare_copy(conn, op, v, members, src_c, dst_c, total)
            if v.array in dst_c.arrays:
                return self._relocate(op, v, args)
            dst_array = str(args["dst_array"])
            entry = JournalEntry(id=op, op="move", vvol=v.id, step="begin", args=args, created=0)
            src, dst = self.ctx.backend(v.array), self.ctx.backend(dst_array)
            try:
                with self.ctx.undo_on_error(lambda: undo_move(self.ctx, entry), op):
                    with ExitStack() as stack:
                        chain = [(m.id, stack.enter_context(src.open(m.id))) for m in members]
                        dst.copy_in(v.id, dst_c.id, chain, self.ctx.progress.callback(op))
                    self.ctx.fault("move", "copied")
                    with self.ctx.db.tx() as conn:
                        for m in members:
                            vvolrepo.force(
                                conn,
                                m.id,
                                container=dst_c.id,
                                array=dst_array,
                                state=READY,
                                op=None,
                                generation=m.generation + 1,
                                locator=dst.locator(m.id),
                            )
                        repo.reserve(conn, src_c.id, -total)
                        repo.journal_step(conn, op, "committed")
            finally:
                self.ctx.progress.drop(op)
            finish_move(self.ctx, entry)
            return self.vvols.show(v.id)

    def _prepare_copy(
        self,
        conn: Any,
        op: str,
        v: Vvol,
        members: list[Vvol],
        src_c: Container,
        dst_c: Container,
        total: int,
    ) -> dict[str, Any]:
        """The catalog half of a move onto another array: the destination array,
        the members ``moving`` and the journal entry (whose arguments it returns)."""
        if v.parent:
            raise InvalidInput(
                detail=f"{v.name or v.id!r} is a linked clone and stays on its parent's "
                "array; make a full clone into the other container"
            )
        dst_array = self.vvols.place(dst_c)
        for m in members:
            self.ctx.source(m)
        self._apart(v.array, dst_array, members)
        for m in members:
            vvolrepo.change(conn, m, bump=False, state=MOVING, op=op)
        args = {
            "members": [m.id for m in members],
            "src_array": v.array,
            "dst_array": dst_array,
            "src_container": src_c.id,
            "dst_container": dst_c.id,
            "total": total,
        }
        self.ctx.journal(conn, op, "move", v.id, args)
        return args

    def _relocate(self, op: str, v: Vvol, args: dict[str, Any]) -> dict[str, Any]:
        """A move between two containers of one array: the array puts the data where
        the new container wants it (RBD: its namespace), then the catalog follows."""
        entry = JournalEntry(id=op, op="relocate", vvol=v.id, step="begin", args=args, created=0)
        try:
            finish_relocate(self.ctx, entry)
        except ArrayOffline:
            raise  # journaled: the next start finishes it
        except VvhostError:
            undo_relocate(self.ctx, entry)
            raise
        finally:
            self.ctx.progress.drop(op)
        return self.vvols.show(v.id)

    def _apart(self, src_id: str, dst_id: str, members: list[Vvol]) -> None:
        """Refuse a move between two arrays that are one directory (or nested): the
        copy would be the source itself and the cleanup would delete the only copy."""
        src, dst = self.ctx.backend(src_id), self.ctx.backend(dst_id)
        for m in members:
            if _same_data(src, dst, m.id):
                raise PathConflict(
                    path=dst.source(m.id).label(),
                    reason=f"is the file of vvol {m.name or m.id} itself: arrays "
                    f"{src.name} and {dst.name} overlap, the move would lose its data",
                )

    def _family(self, conn: Any, v: Vvol) -> list[Vvol]:
        deps = vvolrepo.dependants(conn, v.id)
        clones = [d for d in deps if d.relation != SNAPSHOT]
        clones += [c for s in deps if s.refs for c in vvolrepo.dependants(conn, s.id)]
        if clones:
            raise HasDependants(
                kind="vvol",
                ref=v.name or v.id,
                what="linked clones",
                names=", ".join(c.name or c.id for c in clones),
            )
        snaps = sorted((self.ctx.ready(s) for s in deps), key=lambda s: s.created)
        return snaps + [v]  # oldest point first, the vvol itself last

    def _copy_target(self, conn: Any, ref: str) -> Vvol:
        """The destination of copy-diffs: writable and ready, or failed by an earlier
        copy that stopped (copying again is how it recovers)."""
        v = self.ctx.vvol(conn, ref)
        if v.state != FAILED:
            return self.vvols._writable(conn, ref, "copy into it", None)
        if v.readonly:
            raise ReadOnly(ref=v.name or v.id, action="copy into it")
        self.ctx.source(v)
        return v

    # -- reading and writing data (the same from any machine, on any array) -------------
    def read(self, ref: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes of the vvol from ``offset`` (less at its end)."""
        with self.ctx.db.tx() as conn:
            v = self.ctx.ready(self.ctx.vvol(conn, ref))
        _check_window(v, offset, length)
        self.ctx.source(v)
        with self.ctx.backend(v.array).open(v.id) as io:
            return io.read(offset, min(length, v.size - offset))

    def write(self, ref: str, offset: int, data: bytes, zero: int = 0) -> dict[str, Any]:
        """Write ``data`` at ``offset`` into a writable vvol no host has bound; or,
        with ``zero``, make that many bytes from ``offset`` read as zeros."""
        with self.ctx.db.tx() as conn:
            vid = self.ctx.vvol(conn, ref).id
        with self.ctx.locks.hold([vid]):
            with self.ctx.db.tx() as conn:
                v = self.vvols._writable(conn, vid, "write into it", None)
                ensure_unbound(conn, v, "write into it")
            length = zero or len(data)
            if zero and data:
                raise InvalidInput(detail="write data or zeros, not both")
            if offset < 0 or offset + length > v.size:
                raise InvalidInput(detail=f"the write ends past the vvol's {v.size} bytes")
            with self.ctx.backend(v.array).open(v.id, writable=True) as io:
                if zero:
                    io.zero(offset, zero)
                else:
                    io.write(offset, data)
                io.flush()
        return {"vvol": v.id, "offset": offset, "bytes": length}

    # -- bitmaps ------------------------------------------------------------------------
    def bitmap(
        self,
        ref: str,
        base: str | None = None,
        chunk: str | int | None = None,
        method: str | None = None,
    ) -> dict[str, Any]:
        size = parse_chunk(chunk)
        if method not in (None, "fiemap", "compare"):
            raise InvalidInput(detail=f"method {method!r} is not fiemap or compare")
        with self.ctx.db.tx() as conn:
            v = self.ctx.vvol(conn, ref)
            b = self.ctx.vvol(conn, base) if base else None
        found = changed(self.ctx, v, b, size, method)
        ranges, how = found.ranges, found.method
        return {
            "vvol": v.id,
            "base": b.id if b else None,
            "chunk": size,
            "method": how,
            "size": v.size,
            "bytes": bitmap.ranges_total(ranges),
            "ranges": [[off, length] for off, length in ranges],
        }

    def copy_diffs(
        self, src_ref: str, base_ref: str, dst_ref: str, op_id: str | None = None
    ) -> dict[str, Any]:
        op = self.ctx.new_op(op_id)
        with self.ctx.db.tx() as conn:
            ids = [self.ctx.vvol(conn, r).id for r in (src_ref, base_ref, dst_ref)]
        if len(set(ids)) != 3:
            raise InvalidInput(detail="source, base and destination must be three different vvols")
        with self.ctx.locks.hold(ids):
            with self.ctx.db.tx() as conn:
                src = self.ctx.ready(self.ctx.vvol(conn, src_ref))
                base = self.ctx.ready(self.ctx.vvol(conn, base_ref))
                self.ctx.source(src)
                self.ctx.source(base)
                dst = self._copy_target(conn, dst_ref)
                ensure_unbound(conn, dst, "copy into it")
                if dst.size < src.size:
                    raise InvalidInput(
                        detail=f"destination is {dst.size} bytes, smaller than the "
                        f"source's {src.size}; extend it first"
                    )
                vvolrepo.change(conn, dst, bump=False, state=WRITING, op=op)
                args = {"src": src.id, "base": ids[1]}
                self.ctx.journal(conn, op, "copy-diffs", dst.id, args)
            self.ctx.fault("copy-diffs", "begin")
            entry = JournalEntry(
                id=op, op="copy-diffs", vvol=dst.id, step="begin", args=args, created=0
            )
            try:
                return finish_copy_diffs(self.ctx, entry)
            finally:
                self.ctx.progress.drop(op)


MAX_WINDOW = 16 << 20  # bytes one read or write of data may move


def _check_window(v: Vvol, offset: int, length: int) -> None:
    if offset < 0 or length < 0 or offset > v.size:
        raise InvalidInput(detail=f"offset {offset} is outside the vvol's {v.size} bytes")
    if length > MAX_WINDOW:
        raise InvalidInput(detail=f"at most {MAX_WINDOW} bytes at a time, not {length}")


def _copying(ctx: Context, op_id: str) -> Progress:
    """The copy's progress report; the first one is a crash point (a block written)."""
    report = ctx.progress.callback(op_id)
    first = [True]

    def step(done: int, total: int) -> None:
        report(done, total)
        if first[0]:
            first[0] = False
            ctx.fault("copy-diffs", "copying")

    return step


def finish_copy_diffs(ctx: Context, entry: JournalEntry) -> dict[str, Any]:
    """Copy what changed; idempotent, so recovery simply runs it again.

    Writing in place cannot be rolled back: when it stops (a full array, an I/O
    error) the destination becomes ``failed`` with the reason, and copying the
    diffs into it again (or deleting it) is the way out.  An array that went
    offline leaves the operation journaled for the next start."""
    with ctx.db.tx() as conn:
        dst = vvolrepo.get(conn, entry.vvol or "")
        src = vvolrepo.get(conn, entry.args["src"])
        base = vvolrepo.get(conn, entry.args["base"])
    result: dict[str, Any] = {"bytes": 0, "ranges": 0, "method": None}
    if dst is not None and src is not None and base is not None:
        try:
            diff = _to_copy(ctx, src, base)
            with ctx.backend(src.array).open(src.id) as io:
                copied = ctx.backend(dst.array).write_ranges(
                    io, dst.id, diff.ranges, _copying(ctx, entry.id)
                )
        except ArrayOffline:
            raise
        except (VvhostError, OSError, ValueError) as exc:
            detail = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
            reason = f"copy-diffs stopped, the data is partly copied ({detail})"
            ctx.fail(entry.id, [dst.id], reason + "; copy the diffs again or delete it")
            raise BackendError(
                array=ctx.backend(dst.array).name, detail=f"vvol {dst.name or dst.id}: {reason}"
            ) from exc
        result = {"bytes": copied, "ranges": len(diff.ranges), "method": diff.method}
    with ctx.db.tx() as conn:
        if dst is not None:
            vvolrepo.force(
                conn, dst.id, state=READY, op=None, failure=None, generation=dst.generation + 1
            )
        repo.journal_remove(conn, entry.id)
    return result


def _to_copy(ctx: Context, src: Vvol, base: Vvol) -> Changed:
    """What copy-diffs copies: ``changed``, except that a base on another array
    holding no data at all (the empty start of a copy onto another array, as
    ``vm move-storage`` makes) differs wherever ``src`` holds data, which its
    array tells without reading either."""
    chunk = bitmap.DEFAULT_CHUNK
    if base.array != src.array:
        ctx.source(base)
        if not ctx.backend(base.array).changed(base.id, None, chunk).ranges:
            ctx.source(src)
            return ctx.backend(src.array).changed(src.id, None, chunk)
    return changed(ctx, src, base, chunk, None)


def changed(ctx: Context, v: Vvol, base: Vvol | None, chunk: int, method: str | None) -> Changed:
    """The chunks of ``v`` that differ from ``base`` (or hold data): the array
    tells when both live on it, else both are read and compared."""
    backend = ctx.backend(v.array)
    ctx.source(v)
    if base is None or base.array == v.array:
        if base is not None:
            ctx.source(base)
        return backend.changed(v.id, base.id if base else None, chunk, method)
    if method not in (None, "compare"):
        raise InvalidInput(
            detail=f"{method} needs both vvols on the same filesystem (one array); use compare"
        )
    ctx.source(base)
    with backend.open(v.id) as a, ctx.backend(base.array).open(base.id) as b:
        try:
            return Changed(volio.differing(a, b, chunk), "compare")
        except OSError as exc:
            raise BackendError(
                array=backend.name, detail=f"cannot compare {v.id}: {exc.strerror or exc}"
            ) from exc


def _same_data(src: ArrayBackend, dst: ArrayBackend, vid: str) -> bool:
    """Two arrays that are one directory (or nested) would see one file twice."""
    a = src.source(vid)
    if not isinstance(a, FileSource):
        return False
    try:
        b = dst.source(vid)  # an array that is not a directory has no such vvol yet
    except DataMissing:
        return False
    if not isinstance(b, FileSource):
        return False
    try:
        return os.path.samefile(a.path, b.path)
    except OSError:
        return False


def undo_move(ctx: Context, entry: JournalEntry) -> None:
    src = ctx.backend(entry.args["src_array"])
    dst = ctx.backend(entry.args["dst_array"])
    for member in entry.args["members"]:
        if not _same_data(src, dst, member):
            dst.remove(member)
    with ctx.db.tx() as conn:
        repo.reserve(conn, entry.args["dst_container"], -int(entry.args["total"]))
        for member in entry.args["members"]:
            v = vvolrepo.get(conn, member)
            if v is not None and v.op == entry.id:
                vvolrepo.force(conn, member, state=READY, op=None)
        repo.journal_remove(conn, entry.id, outcome="rolled back")


def finish_move(ctx: Context, entry: JournalEntry) -> None:
    src = ctx.backend(entry.args["src_array"])
    dst = ctx.backend(entry.args["dst_array"])
    for member in entry.args["members"]:
        if _same_data(src, dst, member):
            continue  # the source is the destination: never delete the only copy
        src.remove(member)
    with ctx.db.tx() as conn:
        repo.journal_remove(conn, entry.id)


def finish_relocate(ctx: Context, entry: JournalEntry) -> None:
    """Put the members into the destination container's space (idempotent), then
    move them there in the catalog."""
    members = entry.args["members"]
    with ctx.db.tx() as conn:
        v = vvolrepo.get(conn, entry.vvol or "")
    if v is not None:
        backend = ctx.backend(v.array)
        backend.relocate(members, entry.args["dst_container"], ctx.progress.callback(entry.id))
        ctx.fault("relocate", "relocated")
        with ctx.db.tx() as conn:
            repo.reserve(conn, entry.args["src_container"], -int(entry.args["total"]))
            for member in members:
                m = vvolrepo.get(conn, member)
                if m is not None:
                    vvolrepo.force(
                        conn,
                        member,
                        container=entry.args["dst_container"],
                        state=READY,
                        op=None,
                        generation=m.generation + (1 if member == v.id else 0),
                        locator=backend.locator(member),
                    )
    with ctx.db.tx() as conn:
        repo.journal_remove(conn, entry.id)


def undo_relocate(ctx: Context, entry: JournalEntry) -> None:
    """A relocation that failed goes back to the source container's space; if even
    that fails the members are ``failed`` with the reason."""
    members = entry.args["members"]
    with ctx.db.tx() as conn:
        v = vvolrepo.get(conn, entry.vvol or "")
    try:
        if v is not None:
            ctx.backend(v.array).relocate(members, entry.args["src_container"])
    except VvhostError as exc:
        ctx.fail(entry.id, members, f"relocation stopped halfway: {exc.message}")
        return
    with ctx.db.tx() as conn:
        repo.reserve(conn, entry.args["dst_container"], -int(entry.args["total"]))
        for member in members:
            if vvolrepo.get(conn, member) is not None:
                vvolrepo.force(conn, member, state=READY, op=None)
        repo.journal_remove(conn, entry.id, outcome="rolled back")

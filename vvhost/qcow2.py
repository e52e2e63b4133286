"""A one-pass writer of qcow2 version 3 images (the layers of a redo chain).

The writer is made for layers that hold a few scattered clusters: guest data
is appended as it arrives, the metadata is laid out behind it when the image
is closed, and the header goes in last, so what is written is the data plus
a little metadata::

    host cluster 0          1 .. D              D+1 ..      ..        ..
    |header|ext|backing|  |data|data|...|data| |L2|..|L2| |L1..| |RB..| |RT..|
     ^ written last         guest clusters in    one per     L1     refcount
                            arrival order        512 MiB     table  blocks, table

Fixed choices: 64 KiB clusters (``cluster_bits`` 16), 16-bit refcounts
(``refcount_order`` 4), no compression, no encryption, no internal
snapshots, no extended L2 entries.  The header is the 104-byte version 3
header (all numbers big-endian), followed by header extensions, each
``type u32 | length u32 | data padded to 8 bytes``: the backing file format
name (type ``0xE2792ACA``) when there is a backing file, then the end marker
(type 0).  The backing file name follows, unterminated; the header's
``backing_file_offset``/``backing_file_size`` point at it.

Entries of the tables::

    L1 entry   bit 63 COPIED | bits 9-55 host offset of an L2 table (0: none)
    L2 entry   bit 63 COPIED | bits 9-55 host offset of a data cluster | bit 0 ZERO
    refcount table entry     bits 9-63 host offset of a refcount block

A guest cluster whose L2 entry is 0 is unallocated: it reads from the backing
file (or zeros without one).  ``ZERO`` alone marks it all-zero whatever the
backing holds.  Every host cluster in use has refcount 1, so every entry that
points at a cluster carries ``COPIED``.
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import struct
import sys
from dataclasses import dataclass
from types import TracebackType

CLUSTER_BITS = 16
CLUSTER = 1 << CLUSTER_BITS
L2_ENTRIES = CLUSTER // 8  # one L2 table maps L2_ENTRIES * CLUSTER = 512 MiB
REFCOUNT_ORDER = 4  # 16-bit refcounts
REFCOUNTS_PER_BLOCK = CLUSTER * 8 // (1 << REFCOUNT_ORDER)

MAGIC = b"QFI\xfb"
VERSION = 3
HEADER_LENGTH = 104
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_END = 0
MAX_BACKING_NAME = 1023

COPIED = 1 << 63
ZERO_FLAG = 1
OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00

# magic, version, backing_file_offset, backing_file_size, cluster_bits, size,
# crypt_method, l1_size, l1_table_offset, refcount_table_offset,
# refcount_table_clusters, nb_snapshots, snapshots_offset, incompatible,
# compatible, autoclear features, refcount_order, header_length
_NO_COPY_RANGE = {errno.EXDEV, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS}

_HEADER = struct.Struct(">4sIQIIQIIQQIIQQQQII")
_EXT = struct.Struct(">II")


def _pad8(n: int) -> int:
    return (n + 7) & ~7


def _clusters(nbytes: int) -> int:
    return (nbytes + CLUSTER - 1) // CLUSTER


def _big_endian(values: array.array[int]) -> bytes:
    """The table's entries as big-endian bytes (qcow2 byte order)."""
    if sys.byteorder == "little":
        values = array.array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


@dataclass
class Stats:
    """What one image holds and what writing it cost."""

    data_clusters: int = 0
    zero_clusters: int = 0
    metadata_clusters: int = 0
    bytes_written: int = 0  # data + metadata + header actually written to the file
    file_size: int = 0

    @property
    def data_bytes(self) -> int:
        return self.data_clusters * CLUSTER


def header_bytes(
    size: int,
    l1_size: int,
    l1_offset: int,
    refcount_table_offset: int,
    refcount_table_clusters: int,
    backing: str | None = None,
    backing_format: str | None = None,
) -> bytes:
    """The content of host cluster 0 up to the end of the backing file name."""
    exts = b""
    if backing is not None and backing_format:
        fmt = backing_format.encode()
        exts += _EXT.pack(EXT_BACKING_FORMAT, len(fmt)) + fmt.ljust(_pad8(len(fmt)), b"\0")
    exts += _EXT.pack(EXT_END, 0)
    name = backing.encode() if backing is not None else b""
    name_offset = HEADER_LENGTH + len(exts) if name else 0
    head = _HEADER.pack(
        MAGIC,
        VERSION,
        name_offset,
        len(name),
        CLUSTER_BITS,
        size,
        0,  # crypt_method
        l1_size,
        l1_offset,
        refcount_table_offset,
        refcount_table_clusters,
        0,  # nb_snapshots
        0,  # snapshots_offset
        0,  # incompatible features
        0,  # compatible features
        0,  # autoclear features
        REFCOUNT_ORDER,
        HEADER_LENGTH,
    )
    out = head + exts + name
    if len(out) > CLUSTER:
        raise ValueError("header, extensions and backing name do not fit in one cluster")
    return out


def refcount_layout(used: int) -> tuple[int, int]:
    """(refcount blocks, refcount table clusters) needed to count ``used`` host
    clusters plus the refcount structures themselves."""
    blocks = table = 0
    while True:
        total = used + blocks + table
        need_blocks = (total + REFCOUNTS_PER_BLOCK - 1) // REFCOUNTS_PER_BLOCK
        need_table = _clusters(need_blocks * 8)
        if (need_blocks, need_table) == (blocks, table):
            return blocks, table
        blocks, table = need_blocks, need_table


class Writer:
    """Write a new qcow2 image at ``path`` (which must not exist).

    ``write(offset, data)`` stores guest data (cluster-aligned offset; whole
    clusters, except that the last cluster of the disk may be short),
    ``zero(offset, length)`` marks whole clusters all-zero, ``close()`` lays
    out the metadata and writes the header.  Used as a context manager, an
    exception inside the block removes the file.  ``backing`` is stored as
    given (a name relative to the image's directory is the usual choice).
    """

    def __init__(
        self,
        path: str,
        size: int,
        backing: str | None = None,
        backing_format: str | None = "qcow2",
    ) -> None:
        if size < 0:
            raise ValueError(f"virtual size {size} is negative")
        if backing is not None and len(backing.encode()) > MAX_BACKING_NAME:
            raise ValueError(f"backing file name is longer than {MAX_BACKING_NAME} bytes")
        self.path = path
        self.size = size
        self.backing = backing
        self.backing_format = backing_format if backing is not None else None
        header_bytes(size, 0, 0, 0, 0, self.backing, self.backing_format)  # fits?
        self.stats = Stats()
        self._l2: dict[int, array.array[int]] = {}
        self._next = 1  # next free host cluster; cluster 0 is the header
        self._use_cfr = True  # copy_file_range works between these files so far
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)

    # -- guest data --------------------------------------------------------------------
    def write(
        self, offset: int, data: bytes | memoryview, source: tuple[int, int] | None = None
    ) -> None:
        """Store ``data`` at guest ``offset``.

        ``source`` = (fd, offset) says the same bytes are in that file: they are
        then copied inside the kernel (``copy_file_range``; on XFS or btrfs a
        reflink that shares the blocks), falling back to writing ``data``."""
        view = memoryview(data).cast("B")
        self._check(offset, len(view), partial_tail=True)
        pos = 0
        while pos < len(view):
            index = (offset + pos) // CLUSTER
            entry = self._entry(index)
            if entry & OFFSET_MASK:  # written before: overwrite in place
                piece = view[pos : pos + CLUSTER]
                self._pwrite(piece, entry & OFFSET_MASK)
                pos += len(piece)
                continue
            # a run of clusters not yet allocated goes to consecutive host clusters
            end = pos
            while end < len(view) and not self._entry((offset + end) // CLUSTER) & OFFSET_MASK:
                end += CLUSTER
            run = view[pos : min(end, len(view))]
            host = self._next * CLUSTER
            if source is None:
                self._pwrite(run, host)
            else:
                self._copy(run, host, source[0], source[1] + pos)
            count = _clusters(len(run))
            for i in range(count):
                self._set(index + i, COPIED | (host + i * CLUSTER))
            self._next += count
            self.stats.data_clusters += count
            pos += len(run)

    def zero(self, offset: int, length: int) -> None:
        """Make the whole clusters of ``[offset, offset+length)`` read as zeros."""
        self._check(offset, length, partial_tail=True)
        first = offset // CLUSTER
        for index in range(first, first + _clusters(length)):
            entry = self._entry(index)
            if entry & OFFSET_MASK:  # the data cluster stays allocated, its content is zeroed
                self._pwrite(bytes(CLUSTER), entry & OFFSET_MASK)
            elif not entry & ZERO_FLAG:
                self._set(index, ZERO_FLAG)
                self.stats.zero_clusters += 1

    def _check(self, offset: int, length: int, partial_tail: bool) -> None:
        if self._fd is None:
            raise ValueError(f"{self.path} is closed")
        if offset % CLUSTER or offset < 0:
            raise ValueError(f"offset {offset} is not a multiple of the cluster size")
        end = offset + length
        if end > self.size:
            raise ValueError(f"[{offset}, {end}) is past the virtual size {self.size}")
        if length % CLUSTER and not (partial_tail and end == self.size):
            raise ValueError(f"length {length} is not a whole number of clusters")

    def _entry(self, index: int) -> int:
        table = self._l2.get(index // L2_ENTRIES)
        return 0 if table is None else table[index % L2_ENTRIES]

    def _set(self, index: int, value: int) -> None:
        table = self._l2.get(index // L2_ENTRIES)
        if table is None:
            table = self._l2[index // L2_ENTRIES] = array.array("Q", bytes(CLUSTER))
        table[index % L2_ENTRIES] = value

    def _copy(self, data: memoryview, offset: int, src_fd: int, src_offset: int) -> None:
        """Put ``data`` at ``offset`` by copying it from ``src_fd`` in the kernel."""
        assert self._fd is not None
        done = 0
        while self._use_cfr and done < len(data):
            try:
                n = os.copy_file_range(
                    src_fd, self._fd, len(data) - done, src_offset + done, offset + done
                )
            except OSError as exc:
                if exc.errno not in _NO_COPY_RANGE:
                    raise
                self._use_cfr = False
                break
            if n == 0:  # the source ended early: write what we hold
                break
            done += n
            self.stats.bytes_written += n
        if done < len(data):
            self._pwrite(data[done:], offset + done)

    def _pwrite(self, data: bytes | memoryview, offset: int) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, offset)
            view, offset = view[n:], offset + n
            self.stats.bytes_written += n

    # -- finishing ---------------------------------------------------------------------
    def close(self) -> Stats:
        """Write L2 tables, L1 table, refcounts and the header; fsync; return stats."""
        if self._fd is None:
            return self.stats
        l2_offsets: dict[int, int] = {}
        for l1_index in sorted(self._l2):
            l2_offsets[l1_index] = self._next * CLUSTER
            self._pwrite(_big_endian(self._l2[l1_index]), self._next * CLUSTER)
            self._next += 1
        l1_size = (_clusters(self.size) + L2_ENTRIES - 1) // L2_ENTRIES
        l1 = array.array("Q", bytes(8 * l1_size))
        for l1_index, host in l2_offsets.items():
            l1[l1_index] = COPIED | host
        l1_offset = self._next * CLUSTER if l1_size else 0
        if l1_size:
            self._pwrite(_big_endian(l1), l1_offset)
            self._next += _clusters(8 * l1_size)
        blocks, table_clusters = refcount_layout(self._next)
        first_block = self._next
        table_offset = (first_block + blocks) * CLUSTER
        total = first_block + blocks + table_clusters
        for b in range(blocks):
            counts = array.array("H", bytes(CLUSTER))
            for i in range(min(REFCOUNTS_PER_BLOCK, total - b * REFCOUNTS_PER_BLOCK)):
                counts[i] = 1
            self._pwrite(_big_endian(counts), (first_block + b) * CLUSTER)
        table = array.array("Q", bytes(table_clusters * CLUSTER))
        for b in range(blocks):
            table[b] = (first_block + b) * CLUSTER
        self._pwrite(_big_endian(table), table_offset)
        head = header_bytes(
            self.size,
            l1_size,
            l1_offset,
            table_offset,
            table_clusters,
            self.backing,
            self.backing_format,
        )
        self._pwrite(head, 0)
        assert self._fd is not None
        if os.fstat(self._fd).st_size != total * CLUSTER:
            os.ftruncate(self._fd, total * CLUSTER)
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        self.stats.metadata_clusters = total - self.stats.data_clusters
        self.stats.file_size = total * CLUSTER
        return self.stats

    def abort(self) -> None:
        """Close and remove the unfinished image."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def __enter__(self) -> Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

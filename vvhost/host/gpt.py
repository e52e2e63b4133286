"""Move a GPT's backup header to the end of a grown disk, through the control
plane's data API (so it works from any host, on any array).

After a disk grows, its GPT still ends where the disk used to end: the backup
header sits in the middle and the new space is unusable.  The fix (what
``parted``'s "Fix" does)::

    LBA 0        protective MBR: its 0xEE partition grows to the new end
    LBA 1        primary header: backup LBA and last usable LBA move, CRC again
    LBA 2..      primary partition entries (unchanged)
    ...          the new space
    N-1-E..N-2   backup partition entries (a copy of the primary ones)
    N-1          backup header (current/backup LBAs swapped, entries LBA, CRC)

The old backup header is cleared so nothing finds a stale table.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..errors import InvalidInput

SECTOR = 512
SIGNATURE = b"EFI PART"
HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")  # the 92 bytes of a GPT header
PROTECTIVE = 0xEE

Read = Callable[[int, int], bytes]
Write = Callable[[int, bytes], Any]


@dataclass(frozen=True)
class Header:
    revision: int
    size: int
    current: int
    backup: int
    first_usable: int
    last_usable: int
    guid: bytes
    entries_lba: int
    entries: int
    entry_size: int
    entries_crc: int

    @classmethod
    def parse(cls, raw: bytes, where: str) -> Header:
        fields = HEADER.unpack_from(raw)
        if fields[0] != SIGNATURE:
            raise InvalidInput(detail=f"{where} holds no GPT (no 'EFI PART' header at LBA 1)")
        sig, rev, size, crc, _res, cur, bak, first, last, guid, elba, n, esize, ecrc = fields
        if not HEADER.size <= size <= SECTOR or zlib.crc32(_zero_crc(raw[:size])) != crc:
            raise InvalidInput(detail=f"{where}: the GPT header is damaged (size or CRC)")
        return cls(rev, size, cur, bak, first, last, guid, elba, n, esize, ecrc)

    def pack(self) -> bytes:
        fields = [SIGNATURE, self.revision, self.size, 0, 0, self.current, self.backup]
        fields += [self.first_usable, self.last_usable, self.guid, self.entries_lba]
        fields += [self.entries, self.entry_size, self.entries_crc]
        body = HEADER.pack(*fields).ljust(self.size, b"\0")
        crc = zlib.crc32(body)
        return (body[:16] + struct.pack("<I", crc) + body[20:]).ljust(SECTOR, b"\0")


def _zero_crc(header: bytes) -> bytes:
    return header[:16] + bytes(4) + header[20:]


def fix_gpt(read: Read, write: Write, size: int, where: str) -> dict[str, Any]:
    """Make the GPT of a ``size``-byte disk (read and written with ``read``/``write``)
    span the whole disk; returns what was done."""
    sectors = size // SECTOR
    primary = Header.parse(read(SECTOR, SECTOR), where)
    last = sectors - 1
    if primary.backup == last:
        return {"fixed": False, "sectors": sectors}
    table = read(primary.entries_lba * SECTOR, primary.entries * primary.entry_size)
    if zlib.crc32(table) != primary.entries_crc:
        raise InvalidInput(detail=f"{where}: the GPT partition entries are damaged (CRC)")
    table_sectors = -(-len(table) // SECTOR)
    backup_entries = last - table_sectors
    if backup_entries <= primary.last_usable:
        raise InvalidInput(detail=f"{where}: the disk did not grow past its GPT's end")
    old_backup = primary.backup
    primary = replace(primary, backup=last, last_usable=backup_entries - 1)
    backup = replace(primary, current=last, backup=primary.current, entries_lba=backup_entries)
    write(backup_entries * SECTOR, table.ljust(table_sectors * SECTOR, b"\0"))
    write(last * SECTOR, backup.pack())
    write(SECTOR, primary.pack())
    if old_backup < backup_entries:  # the GPT's own old sector, past every partition
        write(old_backup * SECTOR, bytes(SECTOR))
    _grow_protective_mbr(read, write, last)
    return {"fixed": True, "sectors": sectors}


def _grow_protective_mbr(read: Read, write: Write, last: int) -> None:
    """The protective MBR's 0xEE entry covers LBA 1 to the end (at most 2^32 - 1)."""
    mbr = bytearray(read(0, SECTOR))
    if mbr[510:512] != b"\x55\xaa":
        return
    for slot in range(4):
        entry = 446 + 16 * slot
        if mbr[entry + 4] == PROTECTIVE:
            struct.pack_into("<I", mbr, entry + 12, min(last, 0xFFFFFFFF))
            write(0, bytes(mbr))
            return

"""The file endpoint's record: one file per entry, so a bind or unbind reads and
writes its own entry only; a record kept in one entries.json is converted."""

from __future__ import annotations

import json
import os

import pytest

from vvhost.arrays.sources import FileSource
from vvhost.pe.base import Attachment
from vvhost.pe.filepe import FileEndpoint
from vvhost.tools import EndpointError


def _setup(tmp_path: str, count: int) -> tuple[FileEndpoint, list[Attachment]]:
    data = os.path.join(tmp_path, "array")
    os.makedirs(data)
    atts = []
    for i in range(count):
        path = os.path.join(data, f"v{i}.raw")
        with open(path, "wb") as fh:
            fh.write(bytes([i + 1]) * 512)
        atts.append(Attachment(f"v{i}.h", f"v{i}.h", FileSource(path), 512, False, f"v{i}"))
    ep = FileEndpoint("f1", os.path.join(tmp_path, "nfs"), os.path.join(tmp_path, "run"))
    ep.start()
    return ep, atts


def test_each_entry_is_its_own_record(tmp_path: str) -> None:
    ep, atts = _setup(str(tmp_path), 5)
    assert ep.attach_many(atts) == {}
    entries = os.path.join(str(tmp_path), "run", "entries")
    assert sorted(os.listdir(entries)) == [f"v{i}.h" for i in range(5)]
    assert ep.recorded() == {a.key: a.source.path for a in atts}  # type: ignore[union-attr]
    assert ep.present() == {a.key for a in atts}
    with open(os.path.join(ep.directory, "v3.h"), "rb") as fh:
        assert fh.read() == bytes([4]) * 512  # the link reads the vvol's data
    stamp = os.stat(os.path.join(entries, "v0.h")).st_mtime_ns
    ep.detach("v2.h")
    assert os.stat(os.path.join(entries, "v0.h")).st_mtime_ns == stamp  # others untouched
    assert "v2.h" not in os.listdir(entries) and not os.path.lexists(ep.directory + "/v2.h")
    assert ep.present() == {a.key for a in atts} - {"v2.h"}
    ep.detach("v2.h")  # again: nothing to do


def test_a_foreign_file_is_never_taken_over_nor_removed(tmp_path: str) -> None:
    ep, atts = _setup(str(tmp_path), 1)
    foreign = os.path.join(ep.directory, atts[0].key)
    with open(foreign, "w") as fh:
        fh.write("someone's")
    with pytest.raises(EndpointError, match="vvhost did not make it"):
        ep.attach(atts[0])
    assert ep.recorded() == {}
    ep.detach(atts[0].key)
    with open(foreign) as fh:
        assert fh.read() == "someone's"


def test_a_single_file_record_is_converted(tmp_path: str) -> None:
    ep, atts = _setup(str(tmp_path), 3)
    for a in atts[:2]:  # links an earlier version made, recorded in one entries.json
        os.symlink(a.source.path, os.path.join(ep.directory, a.key))  # type: ignore[union-attr]
    old = os.path.join(ep.rundir, "entries.json")
    with open(old, "w") as fh:
        json.dump({a.key: a.source.path for a in atts[:2]}, fh)  # type: ignore[union-attr]
    assert ep.present() == {"v0.h", "v1.h"}
    assert not os.path.exists(old)
    ep.attach(atts[2])
    ep.detach("v0.h")
    assert ep.present() == {"v1.h", "v2.h"} and not os.path.lexists(ep.directory + "/v0.h")

"""Reading one cephx key out of a Ceph keyring file (never written here)::

[client.admin]                 one section per entity
    key = AQD...==             base64 secret: what QEMU's ``key-secret`` wants
    caps mon = "allow *"       anything else is ignored
"""

from __future__ import annotations

from ..errors import InvalidInput


def read_key(path: str, user: str | None) -> str:
    """The key of ``client.<user>`` (``client.admin`` when ``user`` is None) in ``path``."""
    entity = f"client.{user or 'admin'}"
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise InvalidInput(detail=f"cannot read keyring {path}: {exc.strerror or exc}") from None
    section = None
    for raw in lines:
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == entity and "=" in line:
            name, _, value = line.partition("=")
            if name.strip() == "key" and value.strip():
                return value.strip()
    raise InvalidInput(detail=f"keyring {path} has no key for {entity}")

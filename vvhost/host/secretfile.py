"""A secret a QEMU on this host reads from a file: kept 0600 in a 0700 directory,
written atomically, and rewritten only when it changed."""

from __future__ import annotations

import os

from ..errors import InvalidInput


def keep(path: str, text: str, what: str) -> str:
    """Make ``path`` hold exactly ``text`` (no newline: QEMU reads the whole file);
    returns ``path``.  ``what`` names the secret in the error."""
    try:
        with open(path, encoding="ascii") as fh:
            if fh.read().strip() == text:
                return path
    except (OSError, UnicodeDecodeError):
        pass
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        tmp = f"{path}.tmp{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="ascii") as fh:
            fh.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError as exc:
        raise InvalidInput(
            detail=f"cannot write {what} into {directory}: {exc.strerror or exc}"
        ) from None
    return path

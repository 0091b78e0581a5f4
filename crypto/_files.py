"""Atomic, permission-aware file writes for key material.

A key file must never be observable half-written (a crash mid-write would otherwise leave a
truncated secret that fails to load, or worse, a world-readable one). We write to a temporary file
in the same directory created with the final mode, fsync it, ``os.replace`` it over the target and
fsync the directory, so the name points either at the old file or at the complete new one.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from crypto.errors import InsecureKeyFile, KeyFileUnreadable

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int, exclusive: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically with permission bits ``mode`` (umask does not widen it).
    ``exclusive``: never replace an existing file (``FileExistsError``): the complete temporary file
    is hard-linked into place instead of renamed over it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed or the fs widened the creation mode
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    if exclusive:
        try:
            os.link(tmp, target)
        finally:
            tmp.unlink()
    else:
        os.replace(tmp, target)
    _fsync_dir(target.parent)
    return target


def write_secret(path: str | os.PathLike[str], data: bytes, *, exclusive: bool = False) -> Path:
    """Write secret key material: owner read/write only (0600), atomically (see :func:`write_atomic`)."""
    return write_atomic(path, data, mode=SECRET_MODE, exclusive=exclusive)


def write_public(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write public material (0644), atomically."""
    return write_atomic(path, data, mode=PUBLIC_MODE)


def read_secret(path: str | os.PathLike[str]) -> bytes:
    """Read a secret file, refusing one that group or others can access (as ssh does for its keys)."""
    p = Path(path)
    st = _stat_key_file(p)
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise InsecureKeyFile(
            f"{p}: secret key file has mode {stat.S_IMODE(st.st_mode):04o}; "
            "it must not be accessible to group or others (chmod 600)"
        )
    return p.read_bytes()


def _stat_key_file(p: Path) -> os.stat_result:
    """``p``'s status if it is a regular file; a :class:`KeyFileUnreadable` naming it otherwise."""
    try:
        st = p.stat()
    except FileNotFoundError:
        raise KeyFileUnreadable(f"{p}: key file not found") from None
    except OSError as exc:
        raise KeyFileUnreadable(f"{p}: cannot read key file ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileUnreadable(f"{p}: is a directory or special file, expected a key file")
    return st


def read_public(path: str | os.PathLike[str]) -> bytes:
    """Read a public key file (any mode); a missing or non-file path is a :class:`KeyFileUnreadable`."""
    p = Path(path)
    _stat_key_file(p)
    return p.read_bytes()

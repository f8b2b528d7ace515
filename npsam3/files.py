"""Writing user files safely: a file holds either its old content or all of the new one, never a
part, and an existing file is replaced only when the caller says so."""

import os
import secrets

from .errors import Npsam3Error


class OutputExists(Npsam3Error):
    """An output file exists already and overwriting was not allowed."""


def _fsync_dir(folder):
    """Make a rename in ``folder`` durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path, data, overwrite=True):
    """Write bytes ``data`` to ``path``: a hidden temp file in the same folder (which must exist)
    is written, fsynced and then renamed over ``path`` (``overwrite``) or hard-linked to it, which
    fails if ``path`` exists (no ``overwrite``: raises OutputExists, even if the file appeared
    after a caller's own check). On any error the temp file is removed. The new file gets the
    default permissions (0666 minus the umask)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"could not create a temp file next to {path}")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise OutputExists(f"{path} exists already (pass --force to replace it)") from None
            os.unlink(tmp)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)

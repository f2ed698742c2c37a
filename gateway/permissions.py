"""Files private by default: what omnirelay writes is readable by its own user only.

The store holds every customer's messages and the embedded default's API token. Outside
systemd (whose unit sets ``UMask=0077`` and ``StateDirectoryMode=0700``) the data dir was
0755 and the database, blobs and backups followed the caller's umask, often 022: readable
by every local user. So the daemon and the CLI commands that write set umask 077 first, the
data dir is created or forced to 0700, and the database files to 0600, whatever the umask
or the service manager did before.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import structlog

from gateway.config import StoreConfig

log = structlog.get_logger(__name__)

PRIVATE_UMASK = 0o077
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
# SQLite's companions of the database file, and the daemon's lock beside it.
_DATABASE_SUFFIXES = ("", "-wal", "-shm", "-journal", ".lock")


def restrict_umask() -> None:
    """Make every file and directory this process creates from now on private."""
    os.umask(PRIVATE_UMASK)


def make_store_private(store: StoreConfig) -> None:
    """Create or force the data dir (and its blobs) 0700 and the database files 0600.

    Only directories this user owns are changed, so a data dir pointed at a shared place
    is reported, not taken over. The database's own directory is created private when
    missing but left alone otherwise (it may be a shared parent such as ``/var/lib``).
    """
    for directory in (store.data_dir, store.data_dir / "blobs"):
        _private_dir(directory, force=True)
    database = store.sqlite_path
    _private_dir(database.parent, force=False)
    for suffix in _DATABASE_SUFFIXES:
        make_file_private(database.with_name(database.name + suffix))


def make_file_private(path: Path) -> None:
    """Force an existing file to 0600 (a missing one is fine)."""
    try:
        mode = path.stat().st_mode
        if stat.S_IMODE(mode) != PRIVATE_FILE_MODE:
            path.chmod(PRIVATE_FILE_MODE)
    except FileNotFoundError:
        return
    except PermissionError as exc:
        log.warning("files.not_private", path=str(path), error=exc.strerror)


def _private_dir(path: Path, *, force: bool) -> None:
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE, parents=True)
        return
    except FileExistsError:
        pass
    except PermissionError as exc:
        log.warning("files.not_private", path=str(path), error=exc.strerror)
        return
    if not force:
        return
    info = path.stat()
    if stat.S_IMODE(info.st_mode) == PRIVATE_DIR_MODE:
        return
    if info.st_uid != os.geteuid():
        log.warning("files.not_private", path=str(path),
                    error="owned by another user; not changed",
                    hint="give omnirelay a data dir of its own (mode 0700)")
        return
    path.chmod(PRIVATE_DIR_MODE)

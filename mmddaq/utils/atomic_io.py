# Copyright (c) mmddaq contributors. All rights reserved.
"""Crash-safe writes of local files (checkpoints, ``last_checkpoint``).

A file is written to a temporary file in the same folder, flushed to disk
(``fsync``) and only then renamed over the target with :func:`os.replace`,
which is atomic on POSIX and Windows. A crash or kill at any point leaves
either the complete old file or the complete new one, never a truncated
file under the target name; at worst a hidden ``.<name>.*.tmp`` file is
left behind, which :func:`remove_stale_temp_files` clears.

:class:`AtomicLocalBackend` brings this to MMEngine: it is a
``LocalBackend`` whose ``put`` / ``put_text`` write atomically, registered
in MMEngine's file-backend registry as ``'mmddaq_atomic_local'``, so that
``backend_args=dict(backend='mmddaq_atomic_local')`` selects it wherever
MMEngine takes ``backend_args`` (``CheckpointHook``,
``Runner.save_checkpoint``, ``mmengine.runner.save_checkpoint``).
"""
import glob
import os
import os.path as osp
import tempfile
from pathlib import Path
from typing import List, Union

from mmengine.fileio import LocalBackend, register_backend

__all__ = [
    'ATOMIC_BACKEND', 'AtomicLocalBackend', 'atomic_write_bytes',
    'atomic_write_text', 'remove_stale_temp_files'
]

#: Name of :class:`AtomicLocalBackend` in MMEngine's file-backend registry.
ATOMIC_BACKEND = 'mmddaq_atomic_local'
_TMP_SUFFIX = '.tmp'


def _fsync_dir(dirname: str) -> None:
    """Flush a folder's entry table so that a rename survives a power cut.

    Not every platform lets a folder be opened (Windows does not); there
    the rename is still atomic, only its durability is up to the OS.

    Args:
        dirname (str): The folder.
    """
    try:
        fd = os.open(dirname, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash never leaves it half-written.

    Args:
        path (str | Path): The target file. Its folder is created if needed.
        data (bytes): The new content.

    Raises:
        OSError: If writing fails; the previous content of ``path`` (if
            any) is then left untouched and the temporary file is removed.
    """
    path = osp.abspath(os.fspath(path))
    dirname = osp.dirname(path)
    os.makedirs(dirname, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=dirname, prefix=f'.{osp.basename(path)}.', suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if osp.exists(path):
            # keep the permissions the user gave the file
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        else:
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(dirname)


def atomic_write_text(path: Union[str, Path],
                      text: str,
                      encoding: str = 'utf-8') -> None:
    """Text version of :func:`atomic_write_bytes`.

    Args:
        path (str | Path): The target file.
        text (str): The new content.
        encoding (str): Text encoding. Defaults to 'utf-8'.
    """
    atomic_write_bytes(path, text.encode(encoding))


def remove_stale_temp_files(dirname: Union[str, Path],
                            target: str = '*') -> List[str]:
    """Delete temporary files left in ``dirname`` by interrupted writes.

    Only hidden files named like the temporary files of
    :func:`atomic_write_bytes` (``.<target>.<random>.tmp``) are removed.

    Args:
        dirname (str | Path): The folder to clean.
        target (str): Glob pattern of the target file names whose leftovers
            are removed, e.g. ``'*.pth'``. Defaults to ``'*'``.

    Returns:
        list[str]: The removed files.
    """
    removed = []
    pattern = osp.join(
        glob.escape(os.fspath(dirname)), f'.{target}.*{_TMP_SUFFIX}')
    for path in sorted(glob.glob(pattern)):
        if osp.isfile(path):
            try:
                os.remove(path)
            except OSError:
                continue
            removed.append(path)
    return removed


def _umask() -> int:
    """The process umask, read without changing it (0o022 if unknown)."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


class AtomicLocalBackend(LocalBackend):
    """MMEngine ``LocalBackend`` whose writes are atomic.

    ``put`` and ``put_text`` go through :func:`atomic_write_bytes`; reading,
    listing and removing are those of ``LocalBackend``.
    """

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        """Atomically write bytes to ``filepath``.

        Args:
            obj (bytes): Data to be written.
            filepath (str | Path): Path to write data to.
        """
        atomic_write_bytes(filepath, obj)

    def put_text(self,
                 obj: str,
                 filepath: Union[str, Path],
                 encoding: str = 'utf-8') -> None:
        """Atomically write text to ``filepath``.

        Args:
            obj (str): Text to be written.
            filepath (str | Path): Path to write text to.
            encoding (str): Text encoding. Defaults to 'utf-8'.
        """
        atomic_write_text(filepath, obj, encoding=encoding)


register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)

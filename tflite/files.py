"""Writing model files: atomically, so that a failure never leaves a half-written file.

Shared by `convert` (the `.tflite`) and `metadata` (its sidecar files); it imports neither.
"""
from __future__ import annotations

import os
import tempfile

from .errors import ConversionError


def check_folder(path):
    """Raises `ConversionError` unless the folder of `path` exists and is writable."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(folder):
        raise ConversionError(
            f"Cannot write '{path}': the folder '{folder}' does not exist (or is a file). "
            "Create it first (os.makedirs).")
    if not os.access(folder, os.W_OK):
        raise ConversionError(
            f"Cannot write '{path}': the folder '{folder}' is not writable. Pick another path "
            "or fix the folder's permissions.")


def write_atomic(path, content: bytes):
    """Writes bytes to `path` via a temporary file in the same folder and `os.replace`.

    Same folder, because `os.replace` is only atomic within one file system.
    """
    path = os.fspath(path)
    check_folder(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; the model is an artifact to hand on (an app build, a
        # board), so it gets the permissions a plain open() would give it.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise ConversionError(f"Writing '{path}' failed ({e}); nothing was written.") from e
        raise


__all__ = ["write_atomic", "check_folder"]

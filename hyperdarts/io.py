"""Result files: read with one clear error, written so that an interrupted write never
destroys an earlier result."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write to a temporary file in the same directory, then rename it over ``path``."""
    return atomic_write_bytes(path, text.encode())


def read_json(path: Path, error: type[Exception], what: str) -> Any:
    """The JSON in ``path``, or ``error`` saying the file is missing or not JSON."""
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{path}: not valid JSON ({err})") from None


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write to a temporary file in the same directory, then rename it over ``path``.

    The same directory, not the system's temporary one: a rename across file systems is a copy,
    which a crash can cut short.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

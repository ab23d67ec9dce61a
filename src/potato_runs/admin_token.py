"""The AdminService bearer token of the embedded default: `<data-dir>/admin.token`.

`POTATO_ADMIN_TOKEN` wins when set. Otherwise `serve` on the embedded cluster
creates a random token in the data directory (mode 0600, never through a symbolic
link) and the CLI reads it from there, so an operator on the same machine needs
no setup.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from potato_runs.storage.embedded import _read_nofollow

TOKEN_FILE = "admin.token"


def token_path(data_dir: Path) -> Path:
    return Path(data_dir) / TOKEN_FILE


def read_token(data_dir: Path) -> str | None:
    """The stored token, or None when there is none (it must be ours and 0600)."""
    text = _read_nofollow(token_path(data_dir), limit=4096, private=True)
    token = None if text is None else text.strip()
    return token or None


def load_or_create_token(data_dir: Path) -> str:
    """The stored token, created (random, 0600) when missing."""
    existing = read_token(data_dir)
    if existing:
        return existing
    token = secrets.token_urlsafe(32)
    path = token_path(data_dir)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except FileExistsError:   # created meanwhile (or an empty file): read what is there
        again = read_token(data_dir)
        if again:
            return again
        raise
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token

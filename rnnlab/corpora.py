"""Corpora by URL: ``data.path=https://…`` is downloaded once into a user cache and read from there.

The known public corpora (makemore's names, char-rnn's Tiny Shakespeare) are checked against a pinned
sha256, so an experiment reads the same bytes on every machine; another URL is cached as downloaded.
A download goes to a temporary file beside its final place and is renamed only when whole (and checked),
so an interrupted download leaves nothing behind. Offline, the error names the URL and how to pass a
local copy instead.

The cache is ``$RNNLAB_CACHE`` if set, else ``$XDG_CACHE_HOME/rnnlab`` (``~/.cache/rnnlab``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .data import DataError

# url -> sha256 of the file's bytes
KNOWN = {
    "https://raw.githubusercontent.com/karpathy/makemore/master/names.txt":
        "0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d",
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt":
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
}
TIMEOUT = 30.0   # seconds without an answer before a download is given up


def is_url(path) -> bool:
    return isinstance(path, str) and path.startswith(("https://", "http://"))


def cache_dir() -> Path:
    root = os.environ.get("RNNLAB_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rnnlab"
    return Path(root) / "corpora"


def cached_path(url: str) -> Path:
    """Where ``url`` is cached: a folder per URL (a digest of it), the file under its own name."""
    name = url.rstrip("/").rsplit("/", 1)[-1] or "corpus.txt"
    return cache_dir() / hashlib.sha256(url.encode()).hexdigest()[:16] / name


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, sha256: str | None = None) -> Path:
    """The local copy of ``url``, downloaded on first use; checked against ``sha256`` (by default the
    pinned digest of a known corpus). ``DataError`` (its message starting with ``path``, the option it is
    about) if it cannot be downloaded or does not match."""
    expected = sha256 or KNOWN.get(url)
    path = cached_path(url)
    if path.is_file() and (expected is None or sha256_of(path) == expected):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".download-")
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT) as response:
                shutil.copyfileobj(response, out)
        except (OSError, urllib.error.URLError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise DataError(f"path {url} could not be downloaded ({reason}). Without a network: download it "
                            f"elsewhere (e.g. curl -LO {url}) and pass data.path=/path/to/{path.name}") from None
        got = sha256_of(Path(tmp))
        if expected is not None and got != expected:
            raise DataError(f"path {url} did not download as expected: its sha256 is {got}, the pinned one "
                            f"is {expected}; the file changed upstream or the download was altered. Download it "
                            f"yourself and pass data.path=/path/to/file")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path

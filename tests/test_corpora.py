"""Corpora by URL, served from 127.0.0.1 only: downloaded once into the cache, checked against a pinned
sha256, an offline or altered download refused by name with what to do instead."""

import hashlib
import http.server
import threading
from functools import partial

import pytest

from rnnlab import corpora
from rnnlab.data import DataError
from test_cli import cli

NAMES = "".join(f"{a}{b}{c}\n" for a in "abcdefgh" for b in "aeiou" for c in "lmnrst")


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www, counting the requests."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "names.txt").write_text(NAMES)
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root, hits
    httpd.shutdown()
    httpd.server_close()


def test_a_url_is_downloaded_once_and_checked(server, tmp_path, monkeypatch):
    base, root, hits = server
    monkeypatch.setenv("RNNLAB_CACHE", str(tmp_path / "cache"))
    url = f"{base}/names.txt"
    good = hashlib.sha256(NAMES.encode()).hexdigest()
    path = corpora.fetch(url, sha256=good)
    assert path.read_text() == NAMES and str(path).startswith(str(tmp_path / "cache"))
    assert corpora.fetch(url, sha256=good) == path and len(hits) == 1          # cached: one download
    with pytest.raises(DataError, match="did not download as expected: its sha256 is"):
        corpora.fetch(f"{base}/names.txt?again", sha256="0" * 64)
    assert not corpora.cached_path(f"{base}/names.txt?again").exists()         # nothing half-kept
    assert [p.name for p in (tmp_path / "cache").rglob(".download-*")] == []


def test_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNLAB_CACHE", str(tmp_path / "cache"))
    from conftest import free_port
    url = f"http://127.0.0.1:{free_port()}/names.txt"                          # nothing listens there
    with pytest.raises(DataError, match=r"could not be downloaded .* pass data.path=/path/to/names.txt"):
        corpora.fetch(url)


def test_the_command_line_trains_on_a_url_and_refuses_a_dead_one(server, tmp_path):
    base, root, hits = server
    cache = str(tmp_path / "cache")
    args = ["data=lines", f"data.path={base}/names.txt", "steps=10", "eval_every=5", "cell.hidden_size=8",
            "tracking=none", "report_samples=0"]
    out = cli(args, tmp_path, RNNLAB_CACHE=cache)
    assert out.returncode == 0, out.stderr
    again = cli(args, tmp_path, RNNLAB_CACHE=cache)
    assert again.returncode == 0 and len(hits) == 1
    dead = cli(["data=lines", f"data.path={base}/missing.txt", "tracking=none"], tmp_path, RNNLAB_CACHE=cache)
    assert dead.returncode == 2 and "Traceback" not in dead.stderr
    assert f"rnnlab: error: data.path {base}/missing.txt could not be downloaded (" in dead.stderr
    assert "curl -LO" in dead.stderr


def test_the_known_corpora_are_pinned_to_the_reference_copies():
    """The pinned digests are those of the reference copies (../shared/data), where present."""
    from conftest import shared_file
    for url, name in [("makemore/master/names.txt", "names.txt"),
                      ("char-rnn/master/data/tinyshakespeare/input.txt", "tinyshakespeare.txt")]:
        (full,) = [u for u in corpora.KNOWN if u.endswith(url)]
        assert corpora.KNOWN[full] == corpora.sha256_of(shared_file(name))

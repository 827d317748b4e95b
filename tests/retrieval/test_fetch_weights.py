"""fetch_weights against a local HTTP server: verified downloads, refused bad files, fast offline."""

import hashlib
import http.server
import socket
import threading
import time
from dataclasses import replace

import pytest
from django.core.management import CommandError, call_command

from retrieval.encoders import registry
from retrieval.weights import weights_fetch

PAYLOAD = b"pretend these are model weights\n" * 1000


@pytest.fixture
def server(tmp_path):
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "model.bin").write_bytes(PAYLOAD)
    handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path / "served"), **kw)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
def one_weight(settings, tmp_path, monkeypatch):
    """Point the CLIP entry at a test URL and a fresh weights folder; returns a setter for url/hash."""
    settings.IMAGINAITION_WEIGHTS_DIR = tmp_path / "weights"
    spec = registry.MODELS["openclip/ViT-B-32/openai"]

    def set_source(url: str, sha256: str):
        weight = replace(spec.weights[0], url=url, sha256=sha256, convert=None)
        monkeypatch.setitem(registry.MODELS, spec.key, replace(spec, weights=(weight,)))
        return weight.path()

    return set_source


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_downloads_verifies_and_skips_when_present(server, one_weight):
    target = one_weight(f"{server}/model.bin", hashlib.sha256(PAYLOAD).hexdigest())
    report = weights_fetch(keys=["openclip/ViT-B-32/openai"], progress=False)
    assert report.ok and [r.status for r in report.results] == ["downloaded"]
    assert target.read_bytes() == PAYLOAD
    again = weights_fetch(keys=["openclip/ViT-B-32/openai"], progress=False)
    assert [r.status for r in again.results] == ["present"]


def test_hash_prefix_is_accepted(server, one_weight):
    target = one_weight(f"{server}/model.bin", hashlib.sha256(PAYLOAD).hexdigest()[:8])
    assert weights_fetch(keys=["openclip/ViT-B-32/openai"], progress=False).ok and target.exists()


def test_wrong_hash_keeps_nothing(server, one_weight):
    target = one_weight(f"{server}/model.bin", "0" * 64)
    report = weights_fetch(keys=["openclip/ViT-B-32/openai"], progress=False)
    assert not report.ok and "mismatch" in report.results[0].message
    assert not target.exists() and list(target.parent.iterdir()) == []  # no partial file either
    with pytest.raises(CommandError, match="verification"):
        call_command("fetch_weights")


def test_unreachable_network_returns_quickly_with_the_offline_message(one_weight, capsys):
    one_weight(f"http://127.0.0.1:{closed_port()}/model.bin", "0" * 64)
    started = time.monotonic()
    call_command("fetch_weights", "--timeout", "5")
    assert time.monotonic() - started < 30
    out = capsys.readouterr().out
    assert "offline profile will be used" in out and "active model profile: offline" in out

"""Downloads from a local HTTP server: resume after interruption, checksum rejection, safe extraction."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from lifebench.download import CHECKSUMS_FILE, download, extract
from lifebench.errors import DataError

PAYLOAD = bytes(range(256)) * 4000  # 1 MB


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    cut_after: dict[str, int] = {}  # serve only this many bytes of a file once, then close
    honour_range = True
    requests: list[tuple[str, str | None]] = []

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        data = self.files.get(self.path)
        rng = self.headers.get("Range")
        type(self).requests.append((self.path, rng))
        if data is None:
            self.send_error(404)
            return
        start = 0
        if rng and self.honour_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        cut = self.cut_after.pop(self.path, None)
        body = data[start:] if cut is None else data[start:cut]
        self.wfile.write(body)


@pytest.fixture
def server():
    _Handler.files, _Handler.cut_after, _Handler.requests, _Handler.honour_range = {}, {}, [], True
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler
    httpd.shutdown()


def test_download_verifies_published_checksum(server, tmp_path):
    url, h = server
    h.files["/a.bin"] = PAYLOAD
    out = download(url + "/a.bin", tmp_path / "a.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest(), show_progress=False)
    assert out.read_bytes() == PAYLOAD and not (tmp_path / CHECKSUMS_FILE).exists()
    # idempotent: a second call sends nothing
    n = len(h.requests)
    download(url + "/a.bin", tmp_path / "a.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest(), show_progress=False)
    assert len(h.requests) == n


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    url, h = server
    h.files["/big.bin"] = PAYLOAD
    h.cut_after["/big.bin"] = 300_000
    out = download(url + "/big.bin", tmp_path / "big.bin", md5=hashlib.md5(PAYLOAD).hexdigest(), show_progress=False,
                   retries=2)
    assert out.read_bytes() == PAYLOAD
    assert h.requests[0] == ("/big.bin", None) and h.requests[1] == ("/big.bin", "bytes=300000-")
    assert not (tmp_path / "big.bin.part").exists()


def test_resume_across_runs_from_a_part_file(server, tmp_path):
    url, h = server
    h.files["/c.bin"] = PAYLOAD
    (tmp_path / "c.bin.part").write_bytes(PAYLOAD[:123_456])
    download(url + "/c.bin", tmp_path / "c.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest(), show_progress=False)
    assert h.requests == [("/c.bin", "bytes=123456-")]
    assert (tmp_path / "c.bin").read_bytes() == PAYLOAD


def test_server_without_range_support_restarts_cleanly(server, tmp_path):
    url, h = server
    h.honour_range = False
    h.files["/d.bin"] = PAYLOAD
    (tmp_path / "d.bin.part").write_bytes(b"garbage" * 10)
    download(url + "/d.bin", tmp_path / "d.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest(), show_progress=False)
    assert (tmp_path / "d.bin").read_bytes() == PAYLOAD


def test_corrupted_download_is_rejected_and_removed(server, tmp_path):
    url, h = server
    h.files["/e.bin"] = PAYLOAD[:-1] + b"\x00"
    with pytest.raises(DataError, match="checksum mismatch for e.bin"):
        download(url + "/e.bin", tmp_path / "e.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest(), show_progress=False)
    assert not (tmp_path / "e.bin").exists() and not (tmp_path / "e.bin.part").exists()


def test_without_published_checksum_the_first_download_is_recorded_and_enforced(server, tmp_path):
    url, h = server
    h.files["/f.bin"] = PAYLOAD
    download(url + "/f.bin", tmp_path / "f.bin", show_progress=False)
    recorded = json.loads((tmp_path / CHECKSUMS_FILE).read_text())
    assert recorded == {"f.bin": hashlib.sha256(PAYLOAD).hexdigest()}
    (tmp_path / "f.bin").write_bytes(PAYLOAD[:1000])  # later corruption on disk
    with pytest.raises(DataError, match="recorded sha256"):
        download(url + "/f.bin", tmp_path / "f.bin", show_progress=False)


def test_http_errors_are_clear(server, tmp_path):
    url, _ = server
    with pytest.raises(DataError, match="HTTP 404"):
        download(url + "/missing.bin", tmp_path / "m.bin", show_progress=False)


def _tar(members: dict[str, bytes], path: Path, links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return path


def test_extract_tar_and_zip_idempotently(tmp_path):
    arc = _tar({"images/a.png": b"a", "labels.csv": b"x,y\n"}, tmp_path / "d.tar.gz")
    out = extract(arc, tmp_path / "data")
    assert (out / "images" / "a.png").read_bytes() == b"a"
    (out / "images" / "a.png").write_bytes(b"kept")
    extract(arc, tmp_path / "data")  # finished target is kept, not re-extracted
    assert (out / "images" / "a.png").read_bytes() == b"kept"
    z = tmp_path / "d.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("train/x.jpg", b"j")
    assert (extract(z, tmp_path / "zdata") / "train" / "x.jpg").read_bytes() == b"j"


@pytest.mark.parametrize("members, links", [({"../evil.txt": b"x"}, None), ({"/abs.txt": b"x"}, None),
                                            ({"ok.txt": b"x"}, {"link": "../../etc/passwd"})])
def test_extract_refuses_path_escapes_and_leaves_nothing(tmp_path, members, links):
    arc = _tar(members, tmp_path / "bad.tar.gz", links)
    with pytest.raises(DataError, match="outside the target|escapes the target"):
        extract(arc, tmp_path / "data")
    assert not (tmp_path / "data").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.tar.gz"]
    assert not (tmp_path.parent / "evil.txt").exists()


def test_disk_full_during_extraction_leaves_nothing(tmp_path, monkeypatch):
    import errno

    arc = _tar({"a.txt": b"a"}, tmp_path / "a.tar.gz")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "extractall", full)
    with pytest.raises(DataError, match="disk full while extracting a.tar.gz"):
        extract(arc, tmp_path / "data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz"]

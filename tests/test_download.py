"""Downloads from a local HTTP server: resume after interruption, checksum rejection, safe extraction."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lifebench.download import CHECKSUMS_FILE, download, extract
from lifebench.errors import DataError

PAYLOAD = bytes(range(256)) * 4000  # 1 MB


def test_download_verifies_published_checksum(http_server, tmp_path):
    url, h = http_server
    h.files["/a.bin"] = PAYLOAD
    out = download(url + "/a.bin", tmp_path / "a.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest(), show_progress=False)
    assert out.read_bytes() == PAYLOAD and not (tmp_path / CHECKSUMS_FILE).exists()
    # idempotent: a second call sends nothing
    n = len(h.requests)
    download(url + "/a.bin", tmp_path / "a.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest(), show_progress=False)
    assert len(h.requests) == n


def test_interrupted_download_resumes_with_a_range_request(http_server, tmp_path):
    url, h = http_server
    h.files["/big.bin"] = PAYLOAD
    h.cut_after["/big.bin"] = 300_000
    out = download(url + "/big.bin", tmp_path / "big.bin", md5=hashlib.md5(PAYLOAD).hexdigest(), show_progress=False,
                   retries=2)
    assert out.read_bytes() == PAYLOAD
    assert h.requests[0] == ("/big.bin", None) and h.requests[1] == ("/big.bin", "bytes=300000-")
    assert not (tmp_path / "big.bin.part").exists()


def test_resume_across_runs_from_a_part_file(http_server, tmp_path):
    url, h = http_server
    h.files["/c.bin"] = PAYLOAD
    (tmp_path / "c.bin.part").write_bytes(PAYLOAD[:123_456])
    download(url + "/c.bin", tmp_path / "c.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest(), show_progress=False)
    assert h.requests == [("/c.bin", "bytes=123456-")]
    assert (tmp_path / "c.bin").read_bytes() == PAYLOAD


def test_server_without_range_support_restarts_cleanly(http_server, tmp_path):
    url, h = http_server
    h.honour_range = False
    h.files["/d.bin"] = PAYLOAD
    (tmp_path / "d.bin.part").write_bytes(b"garbage" * 10)
    download(url + "/d.bin", tmp_path / "d.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest(), show_progress=False)
    assert (tmp_path / "d.bin").read_bytes() == PAYLOAD


def test_corrupted_download_is_rejected_and_removed(http_server, tmp_path):
    url, h = http_server
    h.files["/e.bin"] = PAYLOAD[:-1] + b"\x00"
    with pytest.raises(DataError, match="checksum mismatch for e.bin"):
        download(url + "/e.bin", tmp_path / "e.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest(), show_progress=False)
    assert not (tmp_path / "e.bin").exists() and not (tmp_path / "e.bin.part").exists()


def test_without_published_checksum_the_first_download_is_recorded_and_enforced(http_server, tmp_path):
    url, h = http_server
    h.files["/f.bin"] = PAYLOAD
    download(url + "/f.bin", tmp_path / "f.bin", show_progress=False)
    recorded = json.loads((tmp_path / CHECKSUMS_FILE).read_text())
    assert recorded == {"f.bin": hashlib.sha256(PAYLOAD).hexdigest()}
    (tmp_path / "f.bin").write_bytes(PAYLOAD[:1000])  # later corruption on disk
    with pytest.raises(DataError, match="recorded sha256"):
        download(url + "/f.bin", tmp_path / "f.bin", show_progress=False)
    h.files["/f.bin"] = PAYLOAD[::-1]  # the source changed: a fresh download must not be trusted silently
    with pytest.raises(DataError, match=f"recorded sha256.*remove its line from {CHECKSUMS_FILE}"):
        download(url + "/f.bin", tmp_path / "f.bin", show_progress=False)
    h.files["/f.bin"] = PAYLOAD
    assert download(url + "/f.bin", tmp_path / "f.bin", show_progress=False).read_bytes() == PAYLOAD


def test_http_errors_are_clear(http_server, tmp_path):
    url, _ = http_server
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
    out = tmp_path / "data"
    assert extract(arc, out) == [out / "images", out / "labels.csv"]
    assert (out / "images" / "a.png").read_bytes() == b"a"
    (out / "images" / "a.png").write_bytes(b"kept")
    extract(arc, out)  # a finished extraction is kept, not redone
    assert (out / "images" / "a.png").read_bytes() == b"kept"
    z = tmp_path / "d.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("train/x.jpg", b"j")
    extract(z, out)  # a second archive into the same folder
    assert (out / "train" / "x.jpg").read_bytes() == b"j" and (out / "labels.csv").exists()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["images", "labels.csv", "train"]


@pytest.mark.parametrize("members, links", [({"../evil.txt": b"x"}, None), ({"/abs.txt": b"x"}, None),
                                            ({"ok.txt": b"x"}, {"link": "../../etc/passwd"})])
def test_extract_refuses_path_escapes_and_leaves_nothing(tmp_path, members, links):
    arc = _tar(members, tmp_path / "bad.tar.gz", links)
    with pytest.raises(DataError, match="outside the target|escapes the target"):
        extract(arc, tmp_path / "data")
    assert list((tmp_path / "data").iterdir()) == []
    assert not (tmp_path.parent / "evil.txt").exists()


def test_disk_full_during_extraction_leaves_nothing(tmp_path, monkeypatch):
    import errno

    arc = _tar({"a.txt": b"a"}, tmp_path / "a.tar.gz")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "extractall", full)
    with pytest.raises(DataError, match="disk full while extracting a.tar.gz"):
        extract(arc, tmp_path / "data")
    assert list((tmp_path / "data").iterdir()) == []


def test_kill_minus_9_during_extraction_leaves_nothing_trusted(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    rng = np.random.default_rng(0)
    archive = tmp_path / "big.tar"
    with tarfile.open(archive, "w") as tar:
        for i in range(400):
            data = rng.integers(0, 255, 100_000, dtype=np.uint8).tobytes()
            info = tarfile.TarInfo(f"images/{i:04d}.bin")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    dest = tmp_path / "out"
    code = f"from lifebench.download import extract; extract({str(archive)!r}, {str(dest)!r})"
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 60
    while not list(dest.glob(".extracting-*")) and time.monotonic() < deadline:  # extraction has begun
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert list(dest.glob(".extracting-*")), "the kill came before the extraction started"
    # killed mid-way: nothing outside the hidden staging folder, no completion marker
    assert not (dest / "images").exists() and not (dest / ".lifebench-extracted-big.tar").exists()
    entries = extract(archive, dest)
    assert [e.name for e in entries] == ["images"] and len(list((dest / "images").iterdir())) == 400
    assert not list(dest.glob(".extracting-*"))  # a killed run's staging folder is cleaned up


@pytest.mark.parametrize("kind, name", [(tarfile.CHRTYPE, "character device"), (tarfile.BLKTYPE, "block device"),
                                        (tarfile.FIFOTYPE, "named pipe (fifo)")])
def test_extract_refuses_device_files_and_deletes_the_archive(tmp_path, kind, name):
    """A device file or fifo in a data archive is hostile (tar would make /dev/sda-like nodes as root, or a fifo
    that hangs a reader): refused in one line, and the archive goes with its recorded checksum, so a rerun fetches
    it again instead of trusting the copy that was refused."""
    arc = tmp_path / ".downloads" / "bad.tar"
    arc.parent.mkdir()
    with tarfile.open(arc, "w") as tar:
        tar.addfile(tarfile.TarInfo("ok.txt"), io.BytesIO(b""))
        info = tarfile.TarInfo("dev/sda")
        info.type, info.devmajor, info.devminor = kind, 8, 0
        tar.addfile(info)
    (arc.parent / CHECKSUMS_FILE).write_text(json.dumps({"bad.tar": "0" * 64, "other.zip": "1" * 64}))
    with pytest.raises(DataError) as err:
        extract(arc, tmp_path / "data")
    assert str(err.value) == (f"bad.tar: member 'dev/sda' is a {name}, which no data archive holds; not extracting: "
                              "the archive was deleted, so a rerun downloads it again")
    assert not arc.exists() and list((tmp_path / "data").iterdir()) == []
    assert json.loads((arc.parent / CHECKSUMS_FILE).read_text()) == {"other.zip": "1" * 64}


def test_extract_refused_escape_and_corrupt_archives_are_deleted(tmp_path):
    arc = _tar({"../evil.txt": b"x"}, tmp_path / "esc.tar.gz")
    with pytest.raises(DataError, match="would be written outside the target; not extracting: the archive was "
                                        "deleted"):
        extract(arc, tmp_path / "data")
    assert not arc.exists()
    good = _tar({f"f{i}.bin": bytes(np.random.default_rng(i).integers(0, 255, 5000, dtype=np.uint8))
                 for i in range(4)}, tmp_path / "cut.tar.gz")
    good.write_bytes(good.read_bytes()[:-3000])  # truncated mid-stream: readable header, broken body
    with pytest.raises(DataError, match=r"cut.tar.gz is corrupt or truncated \(.+\); not extracting: the archive "
                                        "was deleted"):
        extract(good, tmp_path / "data2")
    assert not good.exists() and list((tmp_path / "data2").iterdir()) == []


def test_damaged_checksum_table_is_an_error_not_an_empty_table(http_server, tmp_path):
    """Before, a damaged lifebench-checksums.json read as empty: every recorded file went unchecked and the next
    record overwrote the table."""
    url, h = http_server
    h.files["/g.bin"] = PAYLOAD
    (tmp_path / CHECKSUMS_FILE).write_bytes(b'{"g.bin": "ab\xff')
    with pytest.raises(DataError, match=f"{CHECKSUMS_FILE} is not a JSON object of file name -> sha256; restore it, "
                                        "or delete it"):
        download(url + "/g.bin", tmp_path / "g.bin", show_progress=False)
    assert (tmp_path / CHECKSUMS_FILE).read_bytes() == b'{"g.bin": "ab\xff'

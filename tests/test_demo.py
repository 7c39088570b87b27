"""The demo on its real data (Tux Paint photos via apt-get), its offline fallback, and the .deb reader."""

from __future__ import annotations

import io
import json
import lzma
import shutil
import tarfile
from pathlib import Path

import pytest

from lifebench.cli import main
from lifebench.errors import DataError
from lifebench.tasks import tuxpaint

HAVE_APT = shutil.which("apt-get") is not None


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_APT, reason="apt-get is not available, so the Tux Paint photos cannot be fetched")
def test_demo_on_real_photos_pretrained_model_wins_the_paired_test(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["-q", "demo", "--out", str(out)])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert "tuxpaint-organisms: 161 images (bird 38, fish 11, flower 25, insect 20, mammal 67)" in stdout
    board = json.loads((out / "leaderboard.json").read_text())
    cells = {c["backbone"]: c for c in board["cells"]}
    assert set(cells) == {"efficientnet-lite0", "random-vit", "pixels"}
    eff = cells["efficientnet-lite0"]
    assert eff["is_best"] and eff["n_test"] == 161
    for baseline in ("random-vit", "pixels"):
        # the paired test separates them (marginal intervals can touch while the paired difference is clear)
        assert not cells[baseline]["tied"] and cells[baseline]["point"] < eff["point"], (baseline, cells[baseline])
    assert cells["pixels"]["high"] < eff["low"]  # raw pixels are far behind: even the marginal intervals part
    # a frozen ImageNet model + probe reached about 0.82 accuracy on these photos; majority class 0.42
    acc_line = next(line for line in stdout.splitlines() if line.strip().startswith("efficientnet-lite0 ")
                    and "[" in line and "*" not in line)
    assert float(acc_line.split()[1]) > 0.75
    assert "(majority class)     0.416" in stdout
    # second run: everything from the store, no forward pass
    code = main(["-q", "demo", "--out", str(out)])
    stdout, _ = capsys.readouterr()
    assert code == 0 and "0 models evaluated, 3 already in" in stdout and "0 images through a model" in stdout


def test_demo_falls_back_to_generated_task_without_apt(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LIFEBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(tuxpaint.shutil, "which", lambda name: None)
    monkeypatch.setattr(tuxpaint, "INSTALLED_STAMPS", tmp_path / "not-installed")
    code = main(["-q", "demo", "--out", str(tmp_path / "demo"), "--workers", "0"])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert "apt-get is not available" in stderr and "generated shapes task" in stderr
    assert "task synthetic-shapes: 120 images" in stdout
    assert (tmp_path / "demo" / "leaderboard.md").exists()


def _fake_deb(tmp_path: Path, members: dict[str, bytes], version: str = "9.9-1") -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    body = lzma.compress(buf.getvalue())

    def entry(name: str, data: bytes) -> bytes:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        return header + data + (b"\n" if len(data) % 2 else b"")

    deb = tmp_path / f"tuxpaint-stamps-default_{version}_all.deb"
    deb.write_bytes(b"!<arch>\n" + entry("debian-binary", b"2.0\n") + entry("data.tar.xz", body))
    return deb


def test_deb_reader_extracts_only_the_class_pngs(tmp_path):
    png = b"\x89PNG fake"
    deb = _fake_deb(tmp_path, {
        "./usr/share/tuxpaint/stamps/animals/birds/owl.png": png,
        "./usr/share/tuxpaint/stamps/animals/birds/owl.txt": b"owl",
        "./usr/share/tuxpaint/stamps/food/fruit/apple.png": png,
    })
    with tuxpaint._read_data_tar(deb) as tar:
        names = [m.name for m in tar.getmembers()]
    assert "./usr/share/tuxpaint/stamps/animals/birds/owl.png" in names and len(names) == 3


def test_checksum_mismatch_is_rejected(tmp_path, monkeypatch):
    deb = _fake_deb(tmp_path, {"./x.png": b"x"}, version="2022.06.04-1")
    with pytest.raises(DataError, match="checksum mismatch"):
        tuxpaint._verify(deb)
    monkeypatch.setitem(tuxpaint.KNOWN_SHA256, "2022.06.04-1", __import__("hashlib").sha256(deb.read_bytes()).hexdigest())
    assert tuxpaint._verify(deb)


def test_not_a_deb(tmp_path):
    bad = tmp_path / "x.deb"
    bad.write_bytes(b"hello")
    with pytest.raises(DataError, match="not a Debian package"):
        tuxpaint._read_data_tar(bad)

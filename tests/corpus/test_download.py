"""e2i download: a real HTTP server on 127.0.0.1 (Range support) serving small archives the test makes."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
import wave
import zipfile
from pathlib import Path

import numpy as np
import pytest

from e2i.cli import main as cli_main
from e2i.corpus import download as dl
from e2i.errors import E2IError


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET with optional ``Range: bytes=N-``; records requests; can cut the body short or ignore ranges."""

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        path = srv.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng and srv.ranges:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_after is not None:  # simulate a dropped connection: promise N bytes, send fewer
            body = body[: srv.cut_after]
            srv.cut_after = None
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.root, httpd.requests, httpd.ranges, httpd.cut_after = root, [], True, None
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _wav_bytes(seconds: float = 0.5, sr: int = 32000, seed: int = 0) -> bytes:
    x = (np.random.default_rng(seed).standard_normal(int(seconds * sr)) * 3000).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(x.tobytes())
    return buf.getvalue()


def _make_clotho_like(served: Path) -> tuple[dl.RemoteFile, ...]:
    """A zip and a tar.gz of audio (one name with a space, as in Clotho) plus a captions CSV."""
    with zipfile.ZipFile(served / "audio_development.zip", "w") as z:  # stored: ~32 KB per clip
        z.writestr("development/dog bark.wav", _wav_bytes(seed=1))
        z.writestr("development/rain.wav", _wav_bytes(seed=2))
    with tarfile.open(served / "audio_validation.tar.gz", "w:gz") as t:
        data = _wav_bytes(seed=3)
        info = tarfile.TarInfo("validation/wind.wav")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    (served / "clotho_captions_development.csv").write_text(
        "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
        + "dog bark.wav,a dog barks,a dog barks twice,barking,a dog,woof\n"
        + "rain.wav,rain falls,rain on a roof,heavy rain,rain,it rains\n"
    )
    return tuple(
        dl.RemoteFile(p.name, hashlib.md5(p.read_bytes()).hexdigest(), dl._split_of(p.name))
        for p in sorted(served.iterdir())
    )


def test_download_extract_and_report_spaces(server, tmp_path):
    files = _make_clotho_like(server.root)
    spec = dl.DatasetSpec("toyclotho", server.url, files, "test")
    root = tmp_path / "data"
    s = dl.download_dataset(spec, root, progress=False)
    assert sorted(s["downloaded"]) == sorted(f.name for f in files) and s["present"] == []
    assert (root / "development" / "rain.wav").read_bytes() == _wav_bytes(seed=2)
    assert (root / "validation" / "wind.wav").exists()
    assert s["spaces"] == ["development/dog bark.wav"] and s["renamed"] == []
    assert not list(root.glob("*.part"))
    # A re-run checks the md5s, downloads nothing and does not extract again.
    n_requests = len(server.requests)
    s2 = dl.download_dataset(spec, root, progress=False, rename=True)
    assert s2["downloaded"] == [] and sorted(s2["present"]) == sorted(f.name for f in files)
    assert s2["extracted"] == [] and len(server.requests) == n_requests
    assert s2["renamed"] == [("development/dog bark.wav", "development/dog_bark.wav")]
    assert (root / "development" / "dog_bark.wav").exists()
    assert "dog_bark.wav" in (root / "renamed_files.csv").read_text()


def test_renamed_files_are_found_by_the_clotho_reader(server, tmp_path):
    pytest.importorskip("e2i.corpus.readers")
    from e2i.corpus import read_corpus

    spec = dl.DatasetSpec("toyclotho", server.url, _make_clotho_like(server.root), "test")
    dl.download_dataset(spec, tmp_path / "data", splits=["development"], rename=True, progress=False)
    corpus = read_corpus("clotho", tmp_path / "data", split="development")
    assert {Path(it.path).name for it in corpus.items} == {"dog_bark.wav", "rain.wav"}
    assert corpus.rejected == []


def test_resume_after_dropped_connection(server, tmp_path):
    blob = np.random.default_rng(0).bytes(300_000)
    (server.root / "big.zip").write_bytes(blob)
    md5 = hashlib.md5(blob).hexdigest()
    dest = tmp_path / "big.zip"
    server.cut_after = 100_000
    with pytest.raises(dl.DownloadError, match="re-run to resume"):
        dl.download_file(server.url + "big.zip", dest, md5, retries=0, progress=False)
    part = tmp_path / "big.zip.part"
    assert part.stat().st_size == 100_000 and not dest.exists()
    assert dl.download_file(server.url + "big.zip", dest, md5, retries=0, progress=False) == "downloaded"
    assert server.requests[-1] == ("/big.zip", "bytes=100000-")  # resumed, not restarted
    assert dest.read_bytes() == blob and not part.exists()


def test_retry_resumes_within_one_call(server, tmp_path):
    blob = np.random.default_rng(1).bytes(200_000)
    (server.root / "f.bin").write_bytes(blob)
    server.cut_after = 50_000
    dl.download_file(
        server.url + "f.bin", tmp_path / "f.bin", hashlib.md5(blob).hexdigest(), retries=2, progress=False
    )
    assert [r[1] for r in server.requests] == [None, "bytes=50000-"]
    assert (tmp_path / "f.bin").read_bytes() == blob


def test_server_without_range_support_restarts(server, tmp_path):
    blob = np.random.default_rng(2).bytes(120_000)
    (server.root / "f.bin").write_bytes(blob)
    (tmp_path / "f.bin.part").write_bytes(b"garbage that must not be kept")
    server.ranges = False
    dl.download_file(server.url + "f.bin", tmp_path / "f.bin", hashlib.md5(blob).hexdigest(), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == blob


def test_checksum_mismatch_is_an_error_and_file_is_not_used(server, tmp_path):
    files = _make_clotho_like(server.root)
    bad = tuple(dl.RemoteFile(f.name, "0" * 32 if f.name.endswith(".zip") else f.md5, f.split) for f in files)
    spec = dl.DatasetSpec("toyclotho", server.url, bad, "test")
    root = tmp_path / "data"
    with pytest.raises(dl.ChecksumError, match=r"audio_development\.zip: md5 .* != expected 0{32}"):
        dl.download_dataset(spec, root, progress=False)
    assert not (root / "audio_development.zip").exists() and (root / "audio_development.zip.bad").exists()
    assert not (root / "development").exists()  # nothing extracted from the bad archive


def test_http_404_is_a_clear_error(server, tmp_path):
    with pytest.raises(dl.DownloadError, match="HTTP 404"):
        dl.download_file(server.url + "missing.7z", tmp_path / "missing.7z", None, progress=False)


def test_archive_members_outside_root_are_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../outside.txt", "x")
    with pytest.raises(E2IError, match="outside"):
        dl.extract_archive(evil, tmp_path / "out")
    assert not (tmp_path / "outside.txt").exists()


def test_7z_extraction(tmp_path):
    py7zr = pytest.importorskip("py7zr")
    src = tmp_path / "src" / "evaluation"
    src.mkdir(parents=True)
    (src / "a b.wav").write_bytes(_wav_bytes(seed=4))
    with py7zr.SevenZipFile(tmp_path / "clotho_audio_evaluation.7z", "w") as z:
        z.writeall(src, arcname="evaluation")
    assert dl.extract_archive(tmp_path / "clotho_audio_evaluation.7z", tmp_path / "out") >= 1
    assert (tmp_path / "out" / "evaluation" / "a b.wav").read_bytes() == _wav_bytes(seed=4)


def test_clotho_table_and_checksums_file(tmp_path):
    names = {f.name for f in dl.CLOTHO_V21.files}
    assert len(names) == 9 and all(len(f.md5) == 32 for f in dl.CLOTHO_V21.files)
    assert {f.split for f in dl.CLOTHO_V21.files} == {"development", "validation", "evaluation"}
    table = tmp_path / "MD5SUMS"
    table.write_text(
        "# comment\nc8b05bc7acdb13895bb3c6a29608667e  clotho_audio_development.7z\n"
        "d41d8cd98f00b204e9800998ecf8427e *other_evaluation.csv\n"
    )
    files = dl.read_checksums(table, dl.CLOTHO_V21.files)
    assert [(f.name, f.split) for f in files] == [
        ("clotho_audio_development.7z", "development"),
        ("other_evaluation.csv", "evaluation"),
    ]
    table.write_text("not-a-checksum file\n")
    with pytest.raises(E2IError, match="MD5SUMS:1"):
        dl.read_checksums(table)


def test_cli_download(server, tmp_path, capsys):
    files = _make_clotho_like(server.root)
    table = tmp_path / "MD5SUMS"
    table.write_text("".join(f"{f.md5}  {f.name}\n" for f in files))
    argv = [
        "download",
        "clotho",
        "--root",
        str(tmp_path / "d"),
        "--base-url",
        server.url,
        "--checksums",
        str(table),
        "--splits",
        "development",
        "--no-progress",
    ]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "2 downloaded" in out and "1 archives extracted" in out and "1 file names with spaces kept" in out
    assert (tmp_path / "d" / "development" / "rain.wav").exists()
    assert not (tmp_path / "d" / "audio_validation.tar.gz").exists()  # split filter
    table.write_text("".join(f"{'f' * 32}  {f.name}\n" for f in files))  # a table that no file matches
    assert cli_main(argv) == 2
    assert "e2i: error: " in capsys.readouterr().err

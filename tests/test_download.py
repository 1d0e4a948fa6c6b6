"""The VCC 2016 downloader against a real HTTP server on 127.0.0.1 (no internet).

The server supports ``Range`` requests and can cut a response off halfway, refuse ranges, or
serve damaged archives, so resume, restart, verification and atomic extraction run for real.
"""

from __future__ import annotations

import io
import re
import socket
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cyclegan_vc.audio import load_audio
from cyclegan_vc.data.corpus import list_audio_files
from cyclegan_vc.data.download import DownloadError, download_file, download_vcc2016

RATE = 16000


def _wav_bytes(freq: float) -> bytes:
    t = np.arange(int(0.25 * RATE)) / RATE
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(2 * np.pi * freq * t), RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _vcc_zip(top: str, first_id: int, extra: dict[str, bytes] | None = None) -> bytes:
    """A small archive in the VCC layout: TOP/{SF1,TM3}/<id>.wav, two sentences per speaker."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{top}/", b"")
        for k, speaker in enumerate(("SF1", "TM3")):
            for i in range(2):
                zf.writestr(f"{top}/{speaker}/{first_id + i}.wav", _wav_bytes(200 + 100 * k + 10 * i))
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


TRAIN_ZIP = _vcc_zip("vcc2016_training", 100001, {"__MACOSX/vcc2016_training/._junk": b"\0" * 10})
EVAL_ZIP = _vcc_zip("evaluation_all", 200001)


@dataclass
class FakeDataShare:
    """State of the loopback server: what it serves and every request it saw."""

    port: int = 0
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    cut_once: set[str] = field(default_factory=set)  # paths whose next response stops halfway
    honour_range: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/vcc") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def publish(self) -> None:
        self.files = {"/vcc/vcc2016_training.zip": TRAIN_ZIP, "/vcc/evaluation_all.zip": EVAL_ZIP}


def _handler(state: FakeDataShare) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:
            range_header = self.headers.get("Range")
            with state.lock:
                state.requests.append((self.path, range_header))
                data = state.files.get(self.path)
                cut = self.path in state.cut_once
                state.cut_once.discard(self.path)
            if data is None:
                self.send_error(404, "Not Found")
                return
            start = 0
            if range_header and state.honour_range:
                start = int(re.fullmatch(r"bytes=(\d+)-", range_header).group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if cut:  # announce everything, send half, hang up
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def server():
    state = FakeDataShare()
    state.publish()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _leftovers(dest: Path) -> list[str]:
    """Temporary things a finished or failed call must not leave behind."""
    hidden = [p for p in dest.rglob("*") if p.name.startswith(".extract-") or p.name.endswith(".part")]
    return [str(p.relative_to(dest)) for p in hidden]


def _assert_layout(dest: Path) -> None:
    for top, first in (("vcc2016_training", 100001), ("evaluation_all", 200001)):
        for speaker in ("SF1", "TM3"):
            files = list_audio_files(dest / top / speaker)
            assert [p.name for p in files] == [f"{first}.wav", f"{first + 1}.wav"]
    wave, rate = load_audio(dest / "evaluation_all/TM3/200002.wav")
    expected, _ = sf.read(io.BytesIO(_wav_bytes(310)), dtype="float64")
    assert rate == RATE and np.allclose(wave, expected)


def test_full_download_and_extraction(server, tmp_path):
    dest = tmp_path / "vcc2016"
    assert download_vcc2016(dest, server.url(), progress=True) == dest
    _assert_layout(dest)
    assert [path for path, _ in server.requests] == ["/vcc/vcc2016_training.zip", "/vcc/evaluation_all.zip"]
    assert all(rng is None for _, rng in server.requests)
    assert not (dest / "__MACOSX").exists()  # only the expected top folder is unpacked
    assert not (dest / ".downloads").exists() and _leftovers(dest) == []


def test_second_call_makes_no_request(server, tmp_path, caplog):
    dest = tmp_path / "vcc2016"
    download_vcc2016(dest, server.url(), progress=False)
    seen = len(server.requests)
    with caplog.at_level("INFO", logger="cyclegan_vc.data.download"):
        download_vcc2016(dest, server.url(), progress=False)
    assert len(server.requests) == seen
    assert "nothing to download" in caplog.text


def test_cut_off_download_resumes_with_range(server, tmp_path):
    url = server.url("/vcc/vcc2016_training.zip")
    final = tmp_path / "dl" / "vcc2016_training.zip"
    part = final.with_name(final.name + ".part")
    server.cut_once.add("/vcc/vcc2016_training.zip")
    with pytest.raises(DownloadError, match="did not finish.*run again to resume"):
        download_file(url, final, progress=False, retries=0)
    half = len(TRAIN_ZIP) // 2
    assert not final.exists() and part.stat().st_size == half

    assert download_file(url, final, progress=False, retries=0) == final
    assert final.read_bytes() == TRAIN_ZIP and not part.exists()
    assert server.requests[-1] == ("/vcc/vcc2016_training.zip", f"bytes={half}-")


def test_cut_off_download_resumes_within_one_call(server, tmp_path):
    server.cut_once.update(server.files)  # both archives break off once
    dest = tmp_path / "vcc2016"
    download_vcc2016(dest, server.url(), progress=False)
    _assert_layout(dest)
    ranges = [rng for _, rng in server.requests]
    assert ranges == [None, f"bytes={len(TRAIN_ZIP) // 2}-", None, f"bytes={len(EVAL_ZIP) // 2}-"]


def test_server_without_range_support_restarts_from_zero(server, tmp_path):
    server.honour_range = False
    final = tmp_path / "evaluation_all.zip"
    final.with_name(final.name + ".part").write_bytes(b"stale bytes from another file")
    download_file(server.url("/vcc/evaluation_all.zip"), final, progress=False)
    assert final.read_bytes() == EVAL_ZIP
    assert server.requests[-1][1] == "bytes=29-"  # asked to resume, got 200, started again


def test_complete_part_file_is_finished_by_416(server, tmp_path):
    final = tmp_path / "evaluation_all.zip"
    final.with_name(final.name + ".part").write_bytes(EVAL_ZIP)  # crashed just before the rename
    download_file(server.url("/vcc/evaluation_all.zip"), final, progress=False)
    assert final.read_bytes() == EVAL_ZIP
    assert server.requests == [("/vcc/evaluation_all.zip", f"bytes={len(EVAL_ZIP)}-")]  # answered 416


def _flip_byte_in_member(archive: bytes) -> bytes:
    data = bytearray(archive)
    data[archive.index(b"RIFF") + 200] ^= 0xFF  # inside the first WAV's samples: CRC mismatch
    return bytes(data)


@pytest.mark.parametrize(
    "damaged, message",
    [
        (b"<html>this is an error page, not a zip</html>" * 50, "not a valid zip archive"),
        (_flip_byte_in_member(TRAIN_ZIP), "fails its CRC check"),
        (_vcc_zip("somewhere_else", 100001), "expected top folder vcc2016_training/"),
        (_vcc_zip("vcc2016_training", 100001, {"vcc2016_training/../../evil.wav": b"x"}), "unsafe"),
    ],
    ids=["not-a-zip", "bad-crc", "wrong-folder", "path-traversal"],
)
def test_corrupt_archive_is_rejected_and_removed(server, tmp_path, damaged, message):
    server.files["/vcc/vcc2016_training.zip"] = damaged
    dest = tmp_path / "vcc2016"
    with pytest.raises(DownloadError, match=message) as caught:
        download_vcc2016(dest, server.url(), progress=False)
    assert "vcc2016_training.zip" in str(caught.value) and "run again" in str(caught.value)
    assert not (dest / "vcc2016_training").exists() and not (tmp_path / "evil.wav").exists()
    assert not (dest / ".downloads/vcc2016_training.zip").exists() and _leftovers(dest) == []

    server.publish()  # the mirror is repaired: a rerun downloads afresh and succeeds
    download_vcc2016(dest, server.url(), progress=False)
    _assert_layout(dest)
    assert all(rng is None for _, rng in server.requests)


def test_unreachable_host_raises_clear_error(tmp_path):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/vcc"
    with pytest.raises(DownloadError) as caught:
        download_vcc2016(tmp_path / "vcc2016", url, timeout=5, progress=False)
    text = str(caught.value)
    assert f"{url}/vcc2016_training.zip" in text and "--base-url" in text and "by hand" in text
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_http_error_names_status_and_url(server, tmp_path):
    expected = r"could not download http://127\.0\.0\.1:\d+/missing/vcc2016_training\.zip: HTTP 404"
    with pytest.raises(DownloadError, match=expected):
        download_vcc2016(tmp_path / "vcc2016", server.url("/missing"), progress=False)


def test_archive_saved_by_hand_is_used_and_kept(server, tmp_path):
    dest = tmp_path / "vcc2016"
    dest.mkdir()
    (dest / "vcc2016_training.zip").write_bytes(TRAIN_ZIP)
    download_vcc2016(dest, server.url(), progress=False)
    _assert_layout(dest)
    assert [path for path, _ in server.requests] == ["/vcc/evaluation_all.zip"]
    assert (dest / "vcc2016_training.zip").read_bytes() == TRAIN_ZIP


def test_folder_without_audio_in_the_way_is_reported(server, tmp_path):
    dest = tmp_path / "vcc2016"
    (dest / "vcc2016_training").mkdir(parents=True)
    (dest / "vcc2016_training/notes.txt").write_text("not audio")
    with pytest.raises(DownloadError, match="exists but holds no audio"):
        download_vcc2016(dest, server.url(), progress=False)
    assert server.requests == []


def test_the_download_command_extracts_and_says_where(server, tmp_path, capsys):
    from cyclegan_vc import cli

    dest = tmp_path / "vcc2016"
    assert cli.main(["download", "vcc2016", "--dest", str(dest), "--base-url", server.url()]) == 0
    _assert_layout(dest)
    assert capsys.readouterr().out.strip() == f"VCC 2016 is in {dest}"


def test_the_download_command_reports_an_unreachable_mirror_in_one_line_with_status_1(tmp_path, capsys):
    from cyclegan_vc import cli

    with socket.socket() as probe:  # a loopback port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = cli.main(["download", "vcc2016", "--dest", str(tmp_path / "v"), "--base-url", f"http://127.0.0.1:{port}/vcc/"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and err.startswith("cyclegan-vc download: failed:"), err
    assert "Traceback" not in err

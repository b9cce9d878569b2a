"""Archive unpacking that cannot escape its folder, downloads that resume and verify (against a local
HTTP server with Range support), and `bertkit download-model` without a network."""

import base64
import hashlib
import http.server
import io
import os
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from bertkit import BertkitError
from bertkit import fetch as fetch_module
from bertkit.fetch import extract, fetch
from bertkit.pretrained import download_model
from conftest import REPO


def run_cli(*args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "bertkit", *args], capture_output=True, text=True,
                       timeout=60, env=env)
    return r, time.monotonic() - start


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ---- unpacking -----------------------------------------------------------------------------------

def make_zip(path: Path, members: list[tuple[str, bytes, int | None]]) -> Path:
    """members: (name, data, unix mode or None)."""
    with zipfile.ZipFile(path, "w") as z:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            if mode is not None:
                info.external_attr = mode << 16
            z.writestr(info, data)
    return path


def make_tar(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for info in members:
            data = b"x" * info.size if info.isfile() else None
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = 4 if kind == tarfile.REGTYPE else 0
    return info


def bad_archives(tmp_path: Path) -> list[tuple[str, Path, str]]:
    """(case, archive, error pattern). Every archive also holds one harmless member first."""
    abs_target = str(tmp_path / "abs_evil")
    ok = ("model/vocab.txt", b"[PAD]\n", None)
    return [
        ("zip ..", make_zip(tmp_path / "dotdot.zip", [ok, ("model/../../evil", b"x", None)]), "outside"),
        ("zip ../", make_zip(tmp_path / "dotdot2.zip", [ok, ("../evil", b"x", None)]), "outside"),
        ("zip abs", make_zip(tmp_path / "abs.zip", [ok, (abs_target, b"x", None)]), "absolute path"),
        ("zip link", make_zip(tmp_path / "link.zip", [ok, ("model/link", b"../../evil", stat.S_IFLNK | 0o777)]),
         "symbolic link"),
        ("tar ..", make_tar(tmp_path / "dotdot.tar.gz", [tar_member("model/a"), tar_member("../evil")]), "outside"),
        ("tar abs", make_tar(tmp_path / "abs.tar.gz", [tar_member("model/a"), tar_member(abs_target)]),
         "absolute path"),
        ("tar symlink", make_tar(tmp_path / "sym.tar.gz", [tar_member("model/a"),
                                                           tar_member("model/l", tarfile.SYMTYPE, "/etc/passwd")]),
         "link or special file"),
        ("tar hardlink", make_tar(tmp_path / "hard.tar.gz", [tar_member("model/a"),
                                                             tar_member("model/h", tarfile.LNKTYPE, "../../evil")]),
         "link or special file"),
    ]


def test_archives_that_escape_are_refused_before_writing(tmp_path):
    archives = tmp_path / "archives"
    archives.mkdir()
    for case, archive, pattern in bad_archives(archives):
        target = tmp_path / "out" / case.replace(" ", "_")
        before = files_under(tmp_path)
        with pytest.raises(BertkitError, match=pattern) as e:
            extract(archive, target)
        assert str(archive) in str(e.value), case
        created = files_under(tmp_path) - before
        # Only the (empty) target folder itself may appear: nothing inside it, nothing outside.
        assert created <= {"out", f"out/{target.name}"}, (case, created)
        assert not (tmp_path / "evil").exists() and not (tmp_path / "abs_evil").exists()
        assert not any(target.iterdir()), case


def test_good_archives_unpack(tmp_path):
    z = make_zip(tmp_path / "ok.zip", [("m/vocab.txt", b"abc", None), ("m/sub/x.bin", b"\0\1", None)])
    root = extract(z, tmp_path / "z")
    assert (root / "m" / "vocab.txt").read_bytes() == b"abc" and (root / "m/sub/x.bin").read_bytes() == b"\0\1"
    t = make_tar(tmp_path / "ok.tar.gz", [tar_member("m/a")])
    assert (extract(t, tmp_path / "t") / "m" / "a").read_bytes() == b"xxxx"
    (tmp_path / "junk.zip").write_bytes(b"not an archive at all")
    with pytest.raises(BertkitError, match="not a zip or tar archive"):
        extract(tmp_path / "junk.zip", tmp_path / "j")


def test_cli_refuses_evil_zip(tmp_path):
    evil = make_zip(tmp_path / "evil.zip", [("m/bert_config.json", b"{}", None), ("../evil", b"x", None)])
    scratch = tmp_path / "scratch"  # where convert unpacks: "../evil" would land beside it
    scratch.mkdir()
    r, _ = run_cli("convert", "--input", str(evil), "--output", str(tmp_path / "out"),
                   env={"TMPDIR": str(scratch)})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "'../evil'" in lines[0] and "refusing to unpack" in lines[0]
    assert sorted(files_under(tmp_path)) == ["evil.zip", "scratch"]  # no output, no evil, no temp left


# ---- a local HTTP server with Range support ----------------------------------------------------

PAYLOAD = bytes(range(256)) * 4000  # 1,024,000 bytes: several of fetch's 1 MiB reads


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at any path except /missing. `server.mode` bends the rules:
    "cut" sends half the body then drops the connection; "norange" ignores Range headers;
    "md5" / "badmd5" add Google Cloud Storage's x-goog-hash header; "garbage" is not HTTP at all."""

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        server = self.server
        server.requests.append(self.headers.get("Range"))
        if server.mode == "garbage":
            self.wfile.write(b"SSH-2.0-OpenSSH_9.6\r\n")
            return
        if self.path == "/missing":
            self.send_error(404)
            return
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and server.mode != "norange":
            start = int(rng.removeprefix("bytes=").removesuffix("-"))
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = PAYLOAD[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        if server.mode in ("md5", "badmd5"):
            md5 = hashlib.md5(PAYLOAD if server.mode == "md5" else b"other").digest()
            self.send_header("x-goog-hash", f"crc32c=AAAAAA==,md5={base64.b64encode(md5).decode()}")
        self.end_headers()
        if server.mode == "cut":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        server.sent += len(body)  # before the write: the client may return as soon as it has the bytes
        self.wfile.write(body)


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.mode, httpd.requests, httpd.sent = "normal", [], 0
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_interrupted_download_resumes_from_part(server, tmp_path):
    dest = tmp_path / "file.bin"
    part = tmp_path / "file.bin.part"
    server.mode = "cut"
    with pytest.raises(BertkitError, match="run again to resume"):
        fetch(server.url + "/file.bin", dest)
    assert not dest.exists()
    half = part.stat().st_size
    assert half == len(PAYLOAD) // 2 and part.read_bytes() == PAYLOAD[:half]

    server.mode = "normal"
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    assert fetch(server.url + "/file.bin", dest, sha256=sha) == dest
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert server.requests == [None, f"bytes={half}-"]
    assert server.sent == len(PAYLOAD) - half  # only the rest came over the wire

    # A complete, verified file is not fetched again.
    assert fetch(server.url + "/file.bin", dest, sha256=sha) == dest
    assert len(server.requests) == 2


def test_server_that_ignores_range_restarts_cleanly(server, tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(b"stale bytes that must not stay in front")
    server.mode = "norange"
    fetch(server.url + "/file.bin", dest)
    assert server.requests[0].startswith("bytes=")
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_is_finished_without_a_body(server, tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD)
    fetch(server.url + "/file.bin", dest, sha256=hashlib.sha256(PAYLOAD).hexdigest())  # server says 416
    assert dest.read_bytes() == PAYLOAD and server.sent == 0


def test_wrong_sha256_deletes_part_and_errors(server, tmp_path):
    dest = tmp_path / "file.bin"
    with pytest.raises(BertkitError, match="does not match its known sha256"):
        fetch(server.url + "/file.bin", dest, sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_server_md5_is_checked(server, tmp_path):
    server.mode = "md5"
    assert fetch(server.url + "/a.bin", tmp_path / "a.bin").read_bytes() == PAYLOAD
    server.mode = "badmd5"
    with pytest.raises(BertkitError, match="server's MD5"):
        fetch(server.url + "/b.bin", tmp_path / "b.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_http_errors_are_one_line(server, tmp_path):
    with pytest.raises(BertkitError, match="HTTP 404"):
        fetch(server.url + "/missing", tmp_path / "m.bin")
    server.mode = "garbage"  # e.g. a URL that points at the wrong service
    with pytest.raises(BertkitError, match="cannot download"):
        fetch(server.url + "/x.bin", tmp_path / "x.bin")
    assert list(tmp_path.iterdir()) == []


def test_silent_server_times_out(tmp_path, monkeypatch):
    """A server that accepts the connection and never answers: the timeout, not a hang."""
    monkeypatch.setattr(fetch_module, "TIMEOUT_S", 0.5)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        start = time.monotonic()
        with pytest.raises(BertkitError, match="cannot download"):
            fetch(f"http://127.0.0.1:{s.getsockname()[1]}/x", tmp_path / "x")
    assert time.monotonic() - start < 10


# ---- download-model ------------------------------------------------------------------------------

def test_download_model_from_a_mirror(server, tmp_path, google_zip, monkeypatch):
    """The whole path: fetch the zip, unpack, convert, check the shape; the cache serves a rerun."""
    monkeypatch.setattr(sys.modules[__name__], "PAYLOAD", google_zip.read_bytes())
    out = download_model("tiny", tmp_path / "tiny", cache=tmp_path / "cache", base_url=server.url)
    assert sorted(p.name for p in out.iterdir()) == ["bert_config.json", "bertkit.json", "model.safetensors",
                                                     "vocab.txt"]
    assert (tmp_path / "cache" / "uncased_L-2_H-128_A-2.zip").read_bytes() == google_zip.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "tiny"]  # no temporary folder left
    download_model("tiny", tmp_path / "again", cache=tmp_path / "cache", base_url=server.url)
    assert len(server.requests) == 1

    # An existing output folder is never deleted without --overwrite.
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    with pytest.raises(BertkitError, match="already exists"):
        download_model("tiny", keep, cache=tmp_path / "cache", base_url=server.url)
    assert (keep / "notes.txt").read_text() == "precious"
    download_model("tiny", keep, cache=tmp_path / "cache", base_url=server.url, overwrite=True)
    assert not (keep / "notes.txt").exists() and (keep / "model.safetensors").is_file()


def test_download_model_of_the_wrong_shape_is_refused(server, tmp_path, google_zip, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "PAYLOAD", google_zip.read_bytes())
    with pytest.raises(BertkitError, match="another shape"):
        download_model("mini", tmp_path / "mini", cache=tmp_path / "cache", base_url=server.url)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_download_model_uses_a_zip_placed_in_the_cache(tmp_path, google_zip, monkeypatch):
    """What the offline error message advises: put the zip in the cache, and no network is needed."""
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")  # any network use would fail
    monkeypatch.setenv("no_proxy", "")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "uncased_L-2_H-128_A-2.zip").write_bytes(google_zip.read_bytes())
    out = download_model("uncased_L-2_H-128_A-2", tmp_path / "tiny", cache=cache)
    assert (out / "model.safetensors").is_file() and (out / "bertkit.json").is_file()

def assert_offline_failure(r: subprocess.CompletedProcess, seconds: float, out: Path, cache: Path):
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bertkit download-model: error: cannot download"), r.stderr
    assert seconds < 30
    assert not out.exists()
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))  # no .part


def test_download_model_offline_fails_fast(tmp_path):
    """This machine has no network; a proxy on a closed local port makes it so anywhere."""
    with socket.socket() as s:  # a free port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proxy = f"http://127.0.0.1:{port}"
    out, cache = tmp_path / "DIR", tmp_path / "cache"
    r, seconds = run_cli("download-model", "tiny", "-o", str(out), "--cache", str(cache),
                         env={"https_proxy": proxy, "HTTPS_PROXY": proxy, "no_proxy": "", "NO_PROXY": "",
                              "HOME": str(tmp_path)})
    assert_offline_failure(r, seconds, out, cache)
    assert "storage.googleapis.com/bert_models/2020_02_20/uncased_L-2_H-128_A-2.zip" in r.stderr


def test_download_model_dns_failure_fails_fast(tmp_path):
    """A host name that never resolves (.invalid, RFC 2606), in the seed's BASE_URL NAME form."""
    out, cache = tmp_path / "DIR", tmp_path / "cache"
    r, seconds = run_cli("download-model", "https://bert-models.invalid/2020_02_20", "uncased_L-2_H-128_A-2",
                         "-o", str(out), "--cache", str(cache), env={"HOME": str(tmp_path)})
    assert_offline_failure(r, seconds, out, cache)

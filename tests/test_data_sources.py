"""Downloading and extracting the seed's corpora, against a local HTTP server that stands in for
dumps.wikimedia.org and smashwords (range requests included), and offline."""

import bz2
import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest

from bertkit.cli import main as bertkit
from bertkit.data.shards import read_manifest
from bertkit.data.sources import sha1_list_url

DUMP_NAME = "enwiki-latest-pages-articles.xml.bz2"
PAGE = """  <page>
    <title>{title}</title>
    <ns>0</ns>
    <id>{id}</id>
    <revision>
      <id>{rev}</id>
      <text xml:space="preserve">{text}</text>
    </revision>
  </page>
"""
ARTICLES = {
    "Lobster": "'''Lobsters''' are a family of [[crustacean|marine crustaceans]]. They have long bodies with "
               "muscular tails. They live in crevices on the sea floor.\n\n== Anatomy ==\nLobsters have eight "
               "walking legs. The front three pairs bear claws. The first pair is larger than the others.",
    "Crab": "'''Crabs''' are decapod crustaceans. They are covered with a thick exoskeleton. Crabs walk "
            "sideways. Most crabs live in the sea. Some live in fresh water or on land.",
    "Shrimp": "'''Shrimp''' are small crustaceans with elongated bodies. They swim forward by paddling. "
              "Many shrimp are eaten by people. They are found in oceans, rivers and lakes.",
}


def make_dump() -> bytes:
    pages = "".join(PAGE.format(title=t, id=i + 1, rev=100 + i, text=text)
                    for i, (t, text) in enumerate(ARTICLES.items()))
    xml = ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10" xml:lang="en">\n'
           "  <siteinfo>\n    <sitename>Wikipedia</sitename>\n    <dbname>enwiki</dbname>\n"
           "    <base>https://en.wikipedia.org/wiki/Main_Page</base>\n    <generator>MediaWiki 1.41</generator>\n"
           '    <case>first-letter</case>\n    <namespaces>\n      <namespace key="0" case="first-letter" />\n'
           '      <namespace key="10" case="first-letter">Template</namespace>\n'
           "    </namespaces>\n  </siteinfo>\n" + pages + "</mediawiki>\n")
    return bz2.compress(xml.encode())


class Server:
    """Serves `files` (name -> bytes), honouring Range requests, and logs the requests."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.log = files, []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.lstrip("/")
                owner.log.append((name, self.headers.get("Range")))
                if name not in owner.files:
                    self.send_error(404)
                    return
                data, start = owner.files[name], 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    self.send_response(206)
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def server():
    dump = make_dump()
    book = ("Chapter one of book {n}.\nThe hero walked home. It was late. The moon was up.\n\n"
            "Chapter two.\nShe opened the door. Nobody was there. She sat down to wait.\n")
    books = {f"books/{n}.txt": book.format(n=n).encode() for n in (1, 2)}
    books["books/2.txt"] += "The caf\u00e9 was closed.\n".encode("latin-1")  # not UTF-8: kept, repaired
    listing = "".join(json.dumps({"page": f"https://www.smashwords.com/books/view/{n}", "epub": "",
                                  "txt": f"{{url}}/books/{n}.txt", "title": f"Book {n}"}) + "\n" for n in (1, 2, 3))
    sums = f"{hashlib.sha1(dump).hexdigest()}  {DUMP_NAME}\n".encode()
    srv = Server({DUMP_NAME: dump, "enwiki-latest-sha1sums.txt": sums, **books})
    srv.files["url_list.jsonl"] = listing.replace("{url}", srv.url).encode()  # book 3 is missing: 404
    yield srv
    srv.close()


def test_sha1_list_sits_beside_the_dump():
    assert sha1_list_url("https://dumps.wikimedia.org/enwiki/latest/enwiki-latest-pages-articles.xml.bz2") == \
        "https://dumps.wikimedia.org/enwiki/latest/enwiki-latest-sha1sums.txt"


def test_download_checks_sha1_and_resumes(server, tmp_path, capsys):
    out = tmp_path / "download"
    dump = server.files[DUMP_NAME]
    part = out / "wikicorpus_en" / f"{DUMP_NAME}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(dump[:len(dump) // 2])  # an earlier download broke off halfway
    url = f"{server.url}/{DUMP_NAME}"
    assert bertkit(["data", "download", "-o", str(out), "--wiki-url", url]) == 0
    assert (out / "wikicorpus_en" / DUMP_NAME).read_bytes() == dump
    assert (DUMP_NAME, f"bytes={len(dump) // 2}-") in server.log  # resumed, not restarted
    assert not part.exists()
    server.log.clear()
    assert bertkit(["data", "download", "-o", str(out), "--wiki-url", url]) == 0
    assert server.log == []  # verified before: nothing fetched again


def test_download_with_a_wrong_checksum_leaves_nothing(server, tmp_path, capsys):
    server.files["enwiki-latest-sha1sums.txt"] = f"{'0' * 40}  {DUMP_NAME}\n".encode()
    out = tmp_path / "download"
    assert bertkit(["data", "download", "-o", str(out), "--wiki-url", f"{server.url}/{DUMP_NAME}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SHA-1" in err[0]
    assert [p for p in out.rglob("*") if p.is_file()] == []


def test_offline_is_a_clear_error_and_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "download"
    assert bertkit(["data", "download", "-o", str(out), "--wiki-url", f"http://127.0.0.1:9/{DUMP_NAME}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot download" in err[0] and "no network?" in err[0]
    assert not out.exists() or [p for p in out.rglob("*") if p.is_file()] == []


def test_prepare_wiki_books_end_to_end(server, tmp_path, capsys):
    """The seed's `create_datasets_from_start.sh wiki_books`, against the local server: download,
    extract with wikiextractor, fetch books (one of three fails and is counted), format, shard, and
    make phase-1 and phase-2 datasets in the seed's layout."""
    work = tmp_path / "work"
    assert bertkit(["data", "prepare", "wiki_books", "--workdir", str(work), "--wiki-url", f"{server.url}/{DUMP_NAME}",
                    "--books-list-url", f"{server.url}/url_list.jsonl", "--phases", "64:10,128:20",
                    "--dupe-factor", "3", "--test-fraction", "0", "--workers", "1"]) == 0
    captured = capsys.readouterr()
    assert "1 of 3 books failed" in captured.err
    assert sorted(p.name for p in (work / "download" / "bookscorpus" / "books").iterdir()) == ["1__1.txt", "2__2.txt"]
    text = "".join(p.read_text() for p in sorted((work / "formatted").glob("*.txt")))
    assert "Lobsters are a family of marine crustaceans." in text and "The hero walked home." in text
    assert "The caf\ufffd was closed." in text
    assert "Lobster\n" not in text  # wikiextractor's title line is not a sentence
    for length in (64, 128):
        manifest = read_manifest(work / f"seq_len_{length}" / "books_wiki_en_corpus" / "training")
        assert manifest["instances"] > 0
        assert manifest["counts"]["documents"] == len(ARTICLES) + 2  # three articles, two books
        assert manifest["settings"]["input_formats"] == ["books", "wikiextractor"]
    assert Path(work / "extracted" / "wikicorpus_en").is_dir()


def test_extracting_something_that_is_not_a_dump(tmp_path, capsys):
    junk = tmp_path / "junk.xml"
    junk.write_text("<html><body>not a wiki dump</body></html>\n")
    assert bertkit(["data", "extract", str(junk), "-o", str(tmp_path / "out"), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "junk.xml" in err[0]
    assert not (tmp_path / "out").exists()  # nothing half-made


def test_offline_names_a_lasting_place_for_the_sha1_list_and_the_next_run_uses_it(server, tmp_path, capsys):
    out = tmp_path / "download"
    assert bertkit(["data", "download", "-o", str(out), "--wiki-url", f"http://127.0.0.1:9/{DUMP_NAME}"]) == 2
    err = capsys.readouterr().err
    place = out / "wikicorpus_en" / "enwiki-latest-sha1sums.txt"
    assert f"place it at {place})" in err  # in the workdir, not a temporary folder
    # The user fetches the list elsewhere and puts it there; the next run takes it from there.
    place.parent.mkdir(parents=True, exist_ok=True)
    place.write_bytes(server.files["enwiki-latest-sha1sums.txt"])
    del server.files["enwiki-latest-sha1sums.txt"]
    assert bertkit(["data", "download", "-o", str(out), "--wiki-url", f"{server.url}/{DUMP_NAME}"]) == 0
    assert [name for name, _ in server.log] == [DUMP_NAME]  # the list was not fetched again
    assert (out / "wikicorpus_en" / f"{DUMP_NAME}.sha1").is_file()  # and the dump was checked against it

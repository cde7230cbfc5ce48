"""`vdd data download` against an HTTP server on the loopback address serving a release built from the toy.

The test release has the official layout: a devkit `.tar.gz` with `decathlon-1.0/annotations/`, a data
`.tar.gz` of one `<task>.tar` per task, and an archive the user must supply (as ImageNet's is).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

import vdd_bench.download as download_module
from vdd_bench.cli import main
from vdd_bench.download import Archive, Release, download_decathlon
from vdd_bench.errors import DataError
from vdd_bench.fetch import Expected
from vdd_bench.verify import verify

SERVED = ("colors", "stripes", "shapes")  # in the data tarball
SUPPLIED = "signs"  # only from the user (--archive), like ImageNet's images


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _tar(files: dict[str, bytes], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in files.items():
            _add(tar, name, data)
    return buffer.getvalue()


def _task_files(toy: Path, task: str) -> dict[str, bytes]:
    return {
        str(p.relative_to(toy / "data")): p.read_bytes() for p in sorted((toy / "data" / task).rglob("*.jpg"))
    }


@pytest.fixture(scope="module")
def archives(toy_root: Path) -> dict[str, bytes]:
    annotations = {
        f"decathlon-1.0/annotations/{p.name}": p.read_bytes()
        for task in (*SERVED, SUPPLIED)
        for p in sorted((toy_root / "annotations").glob(f"{task}_*.json"))
    }
    return {
        "devkit.tar.gz": _tar({"decathlon-1.0/README.txt": b"devkit\n", **annotations}, "w:gz"),
        "data.tar.gz": _tar({f"{t}.tar": _tar(_task_files(toy_root, t)) for t in SERVED}, "w:gz"),
        "supplied.tar": _tar(_task_files(toy_root, SUPPLIED)),
    }


def _expected(data: bytes) -> Expected:
    return Expected(len(data), hashlib.sha256(data).hexdigest())


def _release(base: str, archives: dict[str, bytes]) -> Release:
    return Release(
        devkit=Archive("devkit.tar.gz", _expected(archives["devkit.tar.gz"]), base + "devkit.tar.gz"),
        images=(
            Archive(
                "data.tar.gz", _expected(archives["data.tar.gz"]), base + "data.tar.gz", SERVED, nested=True
            ),
            Archive("supplied.tar", _expected(archives["supplied.tar"]), None, (SUPPLIED,)),
        ),
        annotations="decathlon-1.0/annotations/",
        how_to_get="get supplied.tar from its owner, then pass --archive FILE",
    )


@dataclass
class Site:
    """What the loopback server serves and what it was asked."""

    files: dict[str, bytes]
    cut_at: dict[str, int] = field(default_factory=dict)  # name -> byte after which the next reply stops
    ignore_range: bool = False
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (name, Range header)
    base: str = ""


def _handler(site: Site) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep the test output clean
            pass

        def do_GET(self) -> None:
            name = self.path.lstrip("/")
            header = self.headers.get("Range")
            site.requests.append((name, header))
            data = site.files.get(name)
            if data is None:
                self.send_error(404)
                return
            start = 0
            if header and not site.ignore_range:
                start = int(header.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_error(416)
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            stop = site.cut_at.pop(name, len(data))
            self.wfile.write(data[start:stop])
            self.close_connection = True

    return Handler


@pytest.fixture
def site(archives: dict[str, bytes]) -> Iterator[Site]:
    site = Site(dict(archives))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(site))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    site.base = f"http://127.0.0.1:{server.server_address[1]}/"
    yield site
    server.shutdown()
    server.server_close()


def _same_as_toy(root: Path, toy: Path, tasks: tuple[str, ...]) -> None:
    for task in tasks:
        for name, data in _task_files(toy, task).items():
            assert (root / "data" / name).read_bytes() == data, name
        for p in (toy / "annotations").glob(f"{task}_*.json"):
            assert (root / "annotations" / p.name).read_bytes() == p.read_bytes()


def test_a_whole_download_lands_every_served_task_and_verifies(site, archives, toy_root, tmp_path):
    root = tmp_path / "root"
    chosen = download_decathlon(root, release=_release(site.base, archives))
    assert chosen == list(SERVED)  # the supplied archive's task needs the user's file
    _same_as_toy(root, toy_root, SERVED)
    assert not (root / "data" / SUPPLIED).exists()
    assert not (root / "annotations" / f"{SUPPLIED}_train.json").exists()
    assert (root / "downloads" / "data.tar.gz").read_bytes() == archives["data.tar.gz"]
    assert not list((root / "downloads").glob("*.part"))
    report = verify(root)
    assert report.ok, report.problems
    assert sorted(row.task for row in report.rows) == sorted(SERVED)
    # a second run fetches and extracts nothing
    site.requests.clear()
    download_decathlon(root, release=_release(site.base, archives))
    assert site.requests == []


def test_a_transfer_cut_in_the_middle_resumes_with_a_range_request(site, archives, toy_root, tmp_path):
    half = len(archives["data.tar.gz"]) // 2
    site.cut_at["data.tar.gz"] = half
    root = tmp_path / "root"
    download_decathlon(root, ["stripes"], release=_release(site.base, archives))
    data_requests = [r for name, r in site.requests if name == "data.tar.gz"]
    assert data_requests == [None, f"bytes={half}-"]
    _same_as_toy(root, toy_root, ("stripes",))
    assert verify(root).ok


def test_a_part_left_by_a_killed_process_is_resumed_never_taken_whole(site, archives, toy_root, tmp_path):
    root = tmp_path / "root"
    data = archives["data.tar.gz"]
    third = len(data) // 3
    (root / "downloads").mkdir(parents=True)
    (root / "downloads" / "data.tar.gz.part").write_bytes(data[:third])
    download_decathlon(root, ["colors"], release=_release(site.base, archives))
    assert ("data.tar.gz", f"bytes={third}-") in site.requests
    assert (root / "downloads" / "data.tar.gz").read_bytes() == data
    _same_as_toy(root, toy_root, ("colors",))


def test_a_server_that_ignores_ranges_sends_the_file_again_from_the_start(site, archives, tmp_path):
    root = tmp_path / "root"
    data = archives["data.tar.gz"]
    (root / "downloads").mkdir(parents=True)
    (root / "downloads" / "data.tar.gz.part").write_bytes(b"x" * 100)  # not even a prefix: must not survive
    site.ignore_range = True
    download_decathlon(root, ["colors"], release=_release(site.base, archives))
    assert (root / "downloads" / "data.tar.gz").read_bytes() == data


def test_a_corrupted_byte_is_one_line_naming_the_file_and_nothing_is_extracted(site, archives, tmp_path):
    data = bytearray(archives["data.tar.gz"])
    data[len(data) // 2] ^= 0xFF
    site.files["data.tar.gz"] = bytes(data)
    root = tmp_path / "root"
    with pytest.raises(DataError) as err:
        download_decathlon(root, ["colors"], release=_release(site.base, archives))
    message = str(err.value)
    assert "\n" not in message and "data.tar.gz" in message and "sha256" in message
    assert "run the command again" in message
    assert not (root / "data").exists() and not (root / "annotations").exists()
    assert not list((root / "downloads").glob("data.tar.gz*"))  # neither a whole file nor a part kept


def test_a_corrupted_local_archive_is_refused_by_name(site, archives, tmp_path):
    bad = tmp_path / "supplied.tar"
    data = bytearray(archives["supplied.tar"])
    data[-1000] ^= 0x01
    bad.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"supplied\.tar: sha256 .* not the expected"):
        download_decathlon(tmp_path / "root", [SUPPLIED], [bad], release=_release(site.base, archives))


def test_the_supplied_archive_is_asked_for_then_read_from_a_local_file(site, archives, toy_root, tmp_path):
    release = _release(site.base, archives)
    root = tmp_path / "root"
    with pytest.raises(DataError, match=f"{SUPPLIED}: get supplied.tar from its owner"):
        download_decathlon(root, [SUPPLIED], release=release)
    local = tmp_path / "supplied.tar"
    local.write_bytes(archives["supplied.tar"])
    assert download_decathlon(root, [SUPPLIED], [local], release=release) == [SUPPLIED]
    _same_as_toy(root, toy_root, (SUPPLIED,))
    assert not (root / "downloads" / "supplied.tar").exists()  # used where it is, not copied
    with pytest.raises(DataError, match="--tasks: unknown task 'nope'"):
        download_decathlon(root, ["nope"], release=release)


@pytest.mark.parametrize(
    ("member", "kind"),
    [("../x", "outside"), ("/tmp/vdd-hostile-x", "outside"), ("colors/link", "symlink")],
)
def test_a_hostile_member_stops_the_extraction_nothing_lands_outside(site, archives, tmp_path, member, kind):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        _add(tar, "colors/train/0001/000001.jpg", b"jpeg")
        if kind == "symlink":
            link = tarfile.TarInfo(member)
            link.type, link.linkname = tarfile.SYMTYPE, "../../../.."
            tar.addfile(link)
        else:
            _add(tar, member, b"escaped")
    site.files["data.tar.gz"] = _tar({"colors.tar": buffer.getvalue()}, "w:gz")
    archives = {**archives, "data.tar.gz": site.files["data.tar.gz"]}
    root = tmp_path / "deep" / "root"
    with pytest.raises(DataError) as err:
        download_decathlon(root, ["colors"], release=_release(site.base, archives))
    message = str(err.value)
    assert "colors.tar" in message and repr(member) in message and "\n" not in message
    assert not (tmp_path / "deep" / "x").exists() and not Path("/tmp/vdd-hostile-x").exists()
    assert not (root / "data" / "colors" / "link").exists()
    assert not (root / "downloads" / "colors.extracted").exists()


def test_the_command_downloads_verifies_and_reports(site, archives, tmp_path, monkeypatch):
    monkeypatch.setattr(download_module, "DECATHLON_1_0", _release(site.base, archives))
    root = tmp_path / "root"
    result = CliRunner().invoke(main, ["data", "download", str(root), "--tasks", "colors,shapes"])
    assert result.exit_code == 0, result.output
    assert "0 error(s)" in result.output and "2 tasks in" in result.output
    bad = CliRunner().invoke(main, ["data", "download", str(root), "--tasks", "colours"])
    assert bad.exit_code == 2 and bad.output.startswith("error: --tasks: unknown task 'colours'")

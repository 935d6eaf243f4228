"""Tiny-ImageNet download: offline message, md5 checked before extraction, extraction of a local zip."""

import hashlib
import shutil
import socket
import zipfile

import pytest

from fasttrain.data.download import ZIP_NAME, DownloadError, ensure_tiny_imagenet
from fasttrain.data.prepare import prepare_cache
from fasttrain.data.synthetic import write_synthetic


@pytest.fixture(scope="module")
def tin_zip(tmp_path_factory):
    """A zip shaped like tiny-imagenet-200.zip (top folder tiny-imagenet-200/) and its md5."""
    base = tmp_path_factory.mktemp("zip")
    tree = write_synthetic(base / "tiny-imagenet-200", classes=2, per_class=3, val_per_class=1, size=32)
    archive = base / ZIP_NAME
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(tree.rglob("*")):
            zf.write(path, path.relative_to(base).as_posix())
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def _closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{ZIP_NAME}"


def test_offline_says_where_to_place_the_zip(tmp_path):
    with pytest.raises(DownloadError) as caught:
        ensure_tiny_imagenet(tmp_path, url=_closed_port_url(), timeout=5)
    message = str(caught.value)
    assert "\n" not in message
    assert "cannot download" in message and f"place it at {tmp_path / ZIP_NAME}" in message
    assert not (tmp_path / "tiny-imagenet-200").exists()


def test_zip_placed_by_hand_is_checked_then_extracted_and_prepared(tmp_path, tin_zip):
    archive, md5 = tin_zip
    shutil.copy(archive, tmp_path / ZIP_NAME)
    data_dir = ensure_tiny_imagenet(tmp_path, url=_closed_port_url(), md5=md5)
    assert data_dir == tmp_path / "tiny-imagenet-200" and (data_dir / "wnids.txt").is_file()
    assert not list(tmp_path.glob(".extract-*"))
    assert ensure_tiny_imagenet(tmp_path, url=_closed_port_url(), md5="0" * 32) == data_dir  # already there
    cache = prepare_cache("tiny-imagenet", tmp_path, image_size=32, workers=1)
    assert cache.parent == tmp_path / "process" and (cache / "images_train.npy").is_file()


def test_wrong_md5_refuses_to_extract(tmp_path, tin_zip):
    archive, _ = tin_zip
    shutil.copy(archive, tmp_path / ZIP_NAME)
    with pytest.raises(DownloadError, match=rf"{ZIP_NAME} has md5 [0-9a-f]{{32}}, expected 9052"):
        ensure_tiny_imagenet(tmp_path, url=_closed_port_url())
    assert not (tmp_path / "tiny-imagenet-200").exists()


def test_zip_without_the_data_set_is_rejected(tmp_path):
    bogus = tmp_path / ZIP_NAME
    with zipfile.ZipFile(bogus, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(DownloadError, match="does not contain tiny-imagenet-200/wnids.txt"):
        ensure_tiny_imagenet(tmp_path, md5=hashlib.md5(bogus.read_bytes()).hexdigest())
    assert not (tmp_path / "tiny-imagenet-200").exists() and not list(tmp_path.glob(".extract-*"))


def test_partial_download_is_resumed_with_a_range_request(tmp_path, tin_zip):
    import http.server
    import threading

    archive, md5 = tin_zip
    payload = archive.read_bytes()
    ranges = []

    class RangeHandler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            start = 0
            if self.headers.get("Range"):
                ranges.append(self.headers["Range"])
                start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                self.send_response(206)
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(payload) - start))
            self.end_headers()
            self.wfile.write(payload[start:])

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        (tmp_path / (ZIP_NAME + ".part")).write_bytes(payload[:1000])
        url = f"http://127.0.0.1:{server.server_address[1]}/{ZIP_NAME}"
        data_dir = ensure_tiny_imagenet(tmp_path, url=url, md5=md5)
    finally:
        server.shutdown()
    assert ranges == ["bytes=1000-"]
    assert (tmp_path / ZIP_NAME).read_bytes() == payload
    assert (data_dir / "wnids.txt").read_text().split() == ["s0000", "s0001"]

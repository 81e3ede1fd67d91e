"""Tests for minicnn.datasets: IDX files, loaders, and downloads from a local HTTP server.

The real MNIST files are found through MINICNN_DATA (``$MINICNN_DATA/mnist/``); tests that
need them are skipped when it is unset.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from minicnn.data import DatasetError, download, read_idx, write_idx
from minicnn.data import datasets as ds

NAMES = ds.FILE_NAMES
LABELS = "train-labels-idx1-ubyte"
MNIST_SHA = ds._SPECS["mnist"].sha256


@pytest.fixture(autouse=True)
def _no_mirror_env(monkeypatch):
    monkeypatch.delenv("MINICNN_MIRRORS", raising=False)


@pytest.fixture
def real_mnist() -> Path:
    root = os.environ.get("MINICNN_DATA")
    if not root:
        pytest.skip("MINICNN_DATA is not set: real MNIST files not available")
    folder = Path(root) / "mnist"
    if not all((folder / f"{n}.gz").is_file() for n in NAMES):
        pytest.skip(f"real MNIST .gz files not found in {folder}")
    return folder


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --------------------------------------------------------------------------- IDX files

@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 5), (0, 28, 28)])
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_idx_round_trip(tmp_path, dtype, shape, name):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal(shape) * 100).astype(dtype)
    write_idx(tmp_path / name, array)
    back = read_idx(tmp_path / name)
    assert back.dtype == np.dtype(dtype) and back.shape == shape
    np.testing.assert_array_equal(back, array)
    back[...] = 0  # writable, native byte order
    assert leftovers(tmp_path) == [name]
    assert ((tmp_path / name).read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")


def test_gzip_decided_by_magic_not_name(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_idx(tmp_path / "raw.gz", array, compress=False)
    write_idx(tmp_path / "packed.idx", array, compress=True)
    assert (tmp_path / "raw.gz").read_bytes()[:4] == b"\0\0\x08\x02"
    np.testing.assert_array_equal(read_idx(tmp_path / "raw.gz"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "packed.idx"), array)
    # Checksums are of the payload, so both files hash alike.
    assert ds.payload_sha256(tmp_path / "raw.gz") == ds.payload_sha256(tmp_path / "packed.idx")
    assert ds.payload_sha256(tmp_path / "raw.gz") == hashlib.sha256(
        (tmp_path / "raw.gz").read_bytes()).hexdigest()


@pytest.mark.parametrize("array", [np.zeros(3, np.int64), np.zeros(3, bool), np.uint8(3)])
def test_write_idx_rejects_unsupported(tmp_path, array):
    with pytest.raises(DatasetError, match="cannot write"):
        write_idx(tmp_path / "x.idx", array)
    assert leftovers(tmp_path) == []


def _good_idx() -> bytes:
    return b"\0\0\x08\x02" + np.array([2, 3], ">u4").tobytes() + bytes(range(6))


BAD_FILES = {
    "truncated": (_good_idx()[:-2],
                  "truncated: expected 6 data bytes for shape (2, 3) uint8, found 4"),
    "trailing": (_good_idx() + b"xyz", "3 trailing bytes: expected 6 data bytes"),
    "header": (_good_idx()[:9], "truncated header: expected 12 bytes for 2 dimensions, found 9"),
    "magic": (b"\x01\x02" + _good_idx()[2:],
              "expected magic bytes 00 00 <type> <ndim>, found 01 02 08 02"),
    "type": (b"\0\0\x07\x02" + _good_idx()[4:], "unsupported IDX type code 0x07"),
    "ndim0": (b"\0\0\x08\x00", "0 dimensions"),
    "empty": (b"", "found nothing"),
    "badgzip": (b"\x1f\x8b" + b"not really gzip", "bad gzip data"),
    "cutgzip": (gzip.compress(_good_idx())[:-6], "bad gzip data"),
    "gzip+junk": (gzip.compress(_good_idx()) + b"junk", "bad gzip data"),
    "gz-truncated": (gzip.compress(_good_idx()[:-1]), "truncated"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_idx_files(tmp_path, case):
    content, message = BAD_FILES[case]
    path = tmp_path / f"{case}.gz"
    path.write_bytes(content)
    with pytest.raises(DatasetError) as err:
        read_idx(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_wrong_checksum_and_missing_file(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(_good_idx())
    with pytest.raises(DatasetError, match=r"x\.idx: SHA-256 .* expected 00000"):
        read_idx(path, sha256="0" * 64)
    read_idx(path, sha256=hashlib.sha256(_good_idx()).hexdigest())
    with pytest.raises(DatasetError, match=r"nope\.idx: cannot read"):
        read_idx(tmp_path / "nope.idx")


# --------------------------------------------------------------------------- loaders

def test_data_root_order(monkeypatch, tmp_path):
    monkeypatch.delenv("MINICNN_DATA", raising=False)
    assert ds.data_root() == Path(ds.__file__).resolve().parents[2] / "datasets"
    monkeypatch.setenv("MINICNN_DATA", str(tmp_path / "env"))
    assert ds.data_root() == tmp_path / "env"
    assert ds.data_root(tmp_path / "arg") == tmp_path / "arg"


def test_an_installed_package_keeps_data_in_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("MINICNN_DATA", raising=False)
    site = tmp_path / "lib" / "python3.11" / "site-packages"
    installed = site / "minicnn" / "data" / "datasets.py"
    monkeypatch.setattr(ds, "__file__", str(installed))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert ds.data_root() == tmp_path / "cache" / "minicnn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ds.data_root() == tmp_path / "home" / ".cache" / "minicnn"


def _fake_set(folder: Path, counts: dict[str, int], image_shape=(28, 28)) -> None:
    folder.mkdir(parents=True)
    for name in NAMES:
        shape = (counts[name], *image_shape) if "images" in name else (counts[name],)
        write_idx(folder / f"{name}.gz", np.zeros(shape, np.uint8))


def test_load_checks_counts_and_shapes(tmp_path):
    counts = dict.fromkeys(NAMES, 3)
    counts["train-images-idx3-ubyte"] = 5
    _fake_set(tmp_path / "a" / "mnist", counts)
    with pytest.raises(DatasetError) as err:
        ds.load_mnist(tmp_path / "a", download=False, verify=False)
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz holds 5 images" in msg
    assert "train-labels-idx1-ubyte.gz" in msg
    assert "3 labels" in msg
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz: SHA-256"):
        ds.load_mnist(tmp_path / "a", download=False)  # verify=True by default

    _fake_set(tmp_path / "b" / "mnist", dict.fromkeys(NAMES, 3))
    with pytest.raises(DatasetError, match="expected 60000 images in the train set, found 3"):
        ds.load_mnist(tmp_path / "b", download=False, verify=False)
    _fake_set(tmp_path / "c" / "mnist", dict.fromkeys(NAMES, 3), image_shape=(28, 27))
    with pytest.raises(DatasetError, match=r"expected uint8 images of shape \(N, 28, 28\), "
                                           r"found uint8 \(3, 28, 27\)"):
        ds.load_mnist(tmp_path / "c", download=False, verify=False)


def test_missing_files_without_download(tmp_path):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(b"")  # un-gzipped name counts
    with pytest.raises(DatasetError) as err:
        ds.load_mnist(tmp_path, download=False)
    msg = str(err.value)
    assert all(f"{n}.gz  (missing)" in msg for n in NAMES[:3])
    assert "t10k-labels-idx1-ubyte.gz  (present)" in msg
    assert str(tmp_path / "mnist") in msg and "MINICNN_DATA" in msg and "download=False" in msg


def test_real_mnist(real_mnist):
    (x_train, y_train), (x_test, y_test) = ds.load_mnist(real_mnist.parent, download=False)
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert x_train.dtype == x_test.dtype == np.uint8
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert y_train.dtype == y_test.dtype == np.int64
    assert set(np.unique(y_train)) == set(range(10)) == set(np.unique(y_test))
    # Exact integer sums: several times faster than x.mean()/x.std() and their float64 copies.
    squares = np.square(x_train.astype(np.uint16))  # 255**2 fits in uint16
    mean = int(x_train.sum(dtype=np.uint64)) / x_train.size
    std = (int(squares.sum(dtype=np.uint64)) / x_train.size - mean**2) ** 0.5
    assert mean == pytest.approx(33.318, abs=1e-3) and std == pytest.approx(78.567, abs=1e-3)
    for name in NAMES:
        assert ds.payload_sha256(real_mnist / f"{name}.gz") == MNIST_SHA[name]


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian's dataset-fashion-mnist package is not installed")
def test_fashion_mnist_from_debian_folder(tmp_path):
    (x_train, y_train), (x_test, y_test) = ds.load_fashion_mnist(tmp_path, download=False)
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert y_train.dtype == np.int64 and set(np.unique(y_test)) == set(range(10))


# --------------------------------------------------------------------------- downloads

def serve(server, prefix: str, files: dict[str, bytes], cut: bool = False) -> str:
    for name, body in files.items():
        server.routes[f"/{prefix}/{name}.gz"] = (body[: len(body) // 2], len(body)) if cut \
            else (body, len(body))
    return f"{server.url}/{prefix}/"


@pytest.fixture
def refused_url():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/mnist/"
    sock.close()


def with_images(real_mnist: Path, root: Path) -> Path:
    """Put the real image files in ``root/mnist`` so that only the labels are missing."""
    folder = root / "mnist"
    folder.mkdir(parents=True)
    for name in NAMES:
        if "images" in name:
            shutil.copyfile(real_mnist / f"{name}.gz", folder / f"{name}.gz")
    return folder


def real_labels(real_mnist: Path) -> dict[str, bytes]:
    return {n: (real_mnist / f"{n}.gz").read_bytes() for n in NAMES if "labels" in n}


def test_download_everything_via_mirrors_argument(tmp_path, server, real_mnist):
    good = serve(server, "good", {n: (real_mnist / f"{n}.gz").read_bytes() for n in NAMES})
    (x_train, y_train), (x_test, y_test) = ds.load_mnist(tmp_path, mirrors=[good])
    assert x_train.shape == (60000, 28, 28) and y_test.shape == (10000,)
    assert leftovers(tmp_path / "mnist") == sorted(f"{n}.gz" for n in NAMES)


@pytest.mark.parametrize("first", ["404", "refused"])
def test_download_via_env_after_failing_mirror(tmp_path, server, real_mnist, refused_url,
                                               monkeypatch, first):
    folder = with_images(real_mnist, tmp_path)
    good = serve(server, "good", real_labels(real_mnist))
    bad = f"{server.url}/missing/" if first == "404" else refused_url
    monkeypatch.setenv("MINICNN_MIRRORS", f"{bad}, {good}")
    paths = ds.dataset_files("mnist", tmp_path)
    assert paths[LABELS] == folder / f"{LABELS}.gz"
    assert leftovers(folder) == sorted(f"{n}.gz" for n in NAMES)
    for name in NAMES:
        assert ds.payload_sha256(paths[name]) == MNIST_SHA[name]


def test_ungzipped_download_is_saved_without_gz(tmp_path, server, real_mnist):
    folder = with_images(real_mnist, tmp_path)
    raw = {n: gzip.decompress(b) for n, b in real_labels(real_mnist).items()}
    paths = ds.dataset_files("mnist", tmp_path, mirrors=[serve(server, "raw", raw)])
    assert paths[LABELS] == folder / LABELS


def _bad_download(tmp_path, real_mnist, url) -> str:
    folder = with_images(real_mnist, tmp_path)
    before = leftovers(folder)
    with pytest.raises(DatasetError) as err:
        ds.dataset_files("mnist", tmp_path, mirrors=[url])
    assert leftovers(folder) == before  # no .part file, no partial target
    return str(err.value)


def test_download_wrong_checksum_leaves_nothing(tmp_path, server, real_mnist):
    fake = np.zeros(60000, np.uint8)
    write_idx(tmp_path / "fake.gz", fake)
    body = (tmp_path / "fake.gz").read_bytes()
    url = serve(server, "garbage", dict.fromkeys(real_labels(real_mnist), body))
    msg = _bad_download(tmp_path / "root", real_mnist, url)
    assert f"{url}{LABELS}.gz: SHA-256 of the decompressed payload is" in msg
    assert MNIST_SHA[LABELS] in msg


def test_download_garbage_leaves_nothing(tmp_path, server, real_mnist):
    url = serve(server, "garbage", dict.fromkeys(real_labels(real_mnist), b"<html>oops</html>"))
    msg = _bad_download(tmp_path, real_mnist, url)
    assert f"{url}{LABELS}.gz: not an IDX file" in msg


def test_download_cut_mid_file_leaves_nothing(tmp_path, server, real_mnist):
    url = serve(server, "cut", real_labels(real_mnist), cut=True)
    msg = _bad_download(tmp_path, real_mnist, url)
    assert f"{url}{LABELS}.gz: connection closed after 14440 of 28881 bytes" in msg


def test_offline_error_lists_files_folder_and_mirrors(tmp_path, refused_url, server):
    mirrors = [refused_url, f"{server.url}/missing/"]
    with pytest.raises(DatasetError) as err:
        ds.load_mnist(tmp_path / "new" / "root", mirrors=mirrors)
    msg = str(err.value)
    assert all(f"{n}.gz  (missing)" in msg for n in NAMES)
    assert str(tmp_path / "new" / "root" / "mnist") in msg and "MINICNN_DATA" in msg
    assert f"{refused_url}train-images-idx3-ubyte.gz: cannot connect" in msg
    assert "HTTP 404" in msg
    assert leftovers(tmp_path) == []  # the folders it created are removed again


def test_fashion_offline_error(tmp_path, refused_url, monkeypatch):
    spec = dataclasses.replace(ds._SPECS["fashion-mnist"], system_dirs=(str(tmp_path / "none"),))
    monkeypatch.setitem(ds._SPECS, "fashion-mnist", spec)
    monkeypatch.setenv("MINICNN_MIRRORS", refused_url)
    with pytest.raises(DatasetError) as err:
        ds.load_fashion_mnist(tmp_path)
    msg = str(err.value)
    assert "Fashion-MNIST" in msg and str(tmp_path / "fashion-mnist") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "cannot connect" in msg


# --------------------------------------------------------------------------- download budgets

def _endless(pause: float = 0.0):
    def chunks():
        while True:
            yield b"\0" * (1 << 16)
            if pause:
                time.sleep(pause)
    return chunks


def test_a_response_too_large_is_stopped(tmp_path, server, real_mnist, monkeypatch):
    monkeypatch.setattr(download, "MAX_DOWNLOAD_BYTES", 1 << 20)
    server.routes[f"/endless/{LABELS}.gz"] = (_endless(), None)
    msg = _bad_download(tmp_path / "a", real_mnist, f"{server.url}/endless/")
    assert f"{LABELS}.gz: more than 1,048,576 bytes; stopped" in msg
    monkeypatch.setattr(download, "MAX_DOWNLOAD_BYTES", 10_000)
    url = serve(server, "big", real_labels(real_mnist))
    msg = _bad_download(tmp_path / "b", real_mnist, url)
    assert "the server announces 28,881 bytes, more than the 10,000 allowed" in msg


def test_a_slow_server_meets_the_deadline(tmp_path, server, real_mnist, monkeypatch):
    monkeypatch.setattr(download, "DOWNLOAD_DEADLINE", 0.5)
    server.routes[f"/slow/{LABELS}.gz"] = (_endless(pause=0.1), None)
    started = time.monotonic()
    msg = _bad_download(tmp_path, real_mnist, f"{server.url}/slow/")
    assert "not done after 0 s" in msg or "not done after 1 s" in msg
    assert time.monotonic() - started < 5


def test_plain_http_is_refused_except_to_this_machine(tmp_path, real_mnist, monkeypatch):
    msg = _bad_download(tmp_path, real_mnist, "http://mirror.example.org/mnist/")
    assert "refusing http URL: downloads need https" in msg
    assert all(m.startswith("https://") for spec in ds._SPECS.values() for m in spec.mirrors)


def test_a_data_folder_that_cannot_be_made_is_a_dataset_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(DatasetError, match=r"a-file/mnist: cannot create the data folder"):
        ds.dataset_files("mnist", blocker)

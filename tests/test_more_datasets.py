"""CIFAR-10 (binary format, generated files and a local server: no copy is available here) and
image-folder data sets: records read back exactly, budgets and checksums, one error type, and
both trained from the command line."""
from __future__ import annotations

import hashlib
import io
import tarfile

import numpy as np
import pytest

from minicnn.cli import commands as cli
from minicnn.data import cifar10
from minicnn.data.errors import DatasetError
from minicnn.data.folder import load_folder_splits, load_image_folder

RECORDS = 20


@pytest.fixture
def small_cifar(monkeypatch):
    """CIFAR-10 files of RECORDS records each (the real ones hold 10,000)."""
    monkeypatch.setattr(cifar10, "RECORDS_PER_FILE", RECORDS)
    rng = np.random.default_rng(0)
    return {name: (rng.integers(0, 256, (RECORDS, 3, 32, 32), dtype=np.uint8),
                   rng.integers(0, 10, RECORDS)) for name in (*cifar10.TRAIN_FILES,
                                                             cifar10.TEST_FILE)}


def _write(folder, files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in files.items():
        cifar10.write_cifar_batch(folder / name, x, y)


def _archive(files, member_prefix="cifar-10-batches-bin/", extra=()) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, (x, y) in files.items():
            record = np.empty((len(x), cifar10.RECORD_BYTES), np.uint8)
            record[:, 0], record[:, 1:] = y, x.reshape(len(x), -1)
            data = record.tobytes()
            info = tarfile.TarInfo(member_prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_records_read_back_exactly_in_nchw(tmp_path, small_cifar):
    _write(tmp_path / "cifar10", small_cifar)
    (x, y), (xt, yt) = cifar10.load_cifar10(tmp_path, download=False)
    assert x.shape == (5 * RECORDS, 3, 32, 32) and x.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(x[:RECORDS], small_cifar["data_batch_1.bin"][0])
    np.testing.assert_array_equal(yt, small_cifar["test_batch.bin"][1])
    raw = (tmp_path / "cifar10" / "data_batch_2.bin").read_bytes()
    # record 3 of file 2: label byte, then the red plane row by row
    assert raw[3 * 3073] == y[RECORDS + 3] and raw[3 * 3073 + 1 + 32] == x[RECORDS + 3, 0, 1, 0]


def test_bad_files_are_one_line_errors_naming_the_file(tmp_path, small_cifar):
    _write(tmp_path / "cifar10", small_cifar)
    path = tmp_path / "cifar10" / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DatasetError, match=r"test_batch.bin: expected 20 records of 3073 bytes"):
        cifar10.load_cifar10(tmp_path, download=False)
    data = bytearray((tmp_path / "cifar10" / "data_batch_1.bin").read_bytes())
    data[3073] = 12
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="test_batch.bin: record 1 has label 12"):
        cifar10.read_cifar_batch(path)
    (tmp_path / "cifar10" / "data_batch_3.bin").unlink()
    with pytest.raises(DatasetError) as e:
        cifar10.load_cifar10(tmp_path, download=False)
    assert "missing data_batch_3.bin" in str(e.value) and "\n" not in str(e.value)


def test_download_from_a_local_mirror_checks_md5_and_sizes(tmp_path, small_cifar, server,
                                                           monkeypatch):
    body = _archive(small_cifar, extra=[(tarfile.TarInfo("../../evil.txt"), b"")])
    server.routes["/good/cifar-10-binary.tar.gz"] = (body, len(body))
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", "0" * 32)
    with pytest.raises(DatasetError, match="MD5 .* differs from the published 0000"):
        cifar10.load_cifar10(tmp_path, mirrors=[f"{server.url}/good/"])
    assert not (tmp_path / "cifar10").exists() or not any((tmp_path / "cifar10").iterdir())
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", hashlib.md5(body).hexdigest())
    (x, _), (xt, _) = cifar10.load_cifar10(tmp_path, mirrors=[f"{server.url}/good/"])
    assert len(x) == 5 * RECORDS and len(xt) == RECORDS
    assert sorted(p.name for p in (tmp_path / "cifar10").iterdir()) == sorted(small_cifar)
    assert not (tmp_path.parent / "evil.txt").exists()


def test_download_budgets(tmp_path, small_cifar, server, monkeypatch):
    short = dict(small_cifar)
    short["test_batch.bin"] = (short["test_batch.bin"][0][:5], short["test_batch.bin"][1][:5])
    body = _archive(short)
    server.routes["/short/cifar-10-binary.tar.gz"] = (body, len(body))
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", hashlib.md5(body).hexdigest())
    with pytest.raises(DatasetError, match="test_batch.bin is 15,365 bytes, expected 61,460"):
        cifar10.load_cifar10(tmp_path, mirrors=[f"{server.url}/short/"])
    monkeypatch.setattr(cifar10, "MAX_ARCHIVE_BYTES", 1000)
    with pytest.raises(DatasetError, match="announces .* bytes, more than the 1,000 allowed"):
        cifar10.load_cifar10(tmp_path, mirrors=[f"{server.url}/short/"])


# =========================================================================== image folders

def _folder(root, counts, mode="RGB"):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(1)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            h, w = int(rng.integers(8, 40)), int(rng.integers(8, 40))
            shape = (h, w, 3) if mode == "RGB" else (h, w)
            pixels = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(pixels, mode).save(root / name / f"{i}.png")
    return root


def test_image_folder_any_size_resized_classes_sorted(tmp_path):
    _folder(tmp_path / "photos", {"dog": 3, "cat": 2})
    (tmp_path / "photos" / "cat" / "notes.txt").write_text("not an image")
    x, y, classes = load_image_folder(tmp_path / "photos", size=(16, 12), channels=3)
    assert classes == ["cat", "dog"] and list(y) == [0, 0, 1, 1, 1]
    assert x.shape == (5, 3, 16, 12) and x.dtype == np.uint8
    grey, _, _ = load_image_folder(tmp_path / "photos", size=(16, 12), channels=1)
    assert grey.shape == (5, 1, 16, 12)
    from PIL import Image

    from minicnn.data.images import resize
    first = np.asarray(Image.open(tmp_path / "photos" / "cat" / "0.png").convert("RGB"))
    np.testing.assert_array_equal(x[0, 1], resize(first[:, :, 1], (16, 12)))


def test_folder_splits(tmp_path):
    _folder(tmp_path / "a" / "train", {"x": 4, "y": 4})
    _folder(tmp_path / "a" / "test", {"x": 1, "y": 1})
    (x, _), (xt, _), classes = load_folder_splits(tmp_path / "a", (8, 8), 1)
    assert (len(x), len(xt), classes) == (8, 2, ["x", "y"])
    _folder(tmp_path / "b", {"x": 10, "y": 10})
    (x, _), (xt, _), _ = load_folder_splits(tmp_path / "b", (8, 8), 1, seed=0)
    assert (len(x), len(xt)) == (18, 2)


def test_bad_folders_are_one_line_errors(tmp_path):
    _folder(tmp_path / "one", {"only": 2})
    with pytest.raises(DatasetError, match="expected at least 2 class subfolders, found 1"):
        load_image_folder(tmp_path / "one")
    (tmp_path / "one" / "empty").mkdir()
    with pytest.raises(DatasetError, match="no image files in empty"):
        load_image_folder(tmp_path / "one")
    (tmp_path / "one" / "empty" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="broken.png: not an image file Pillow can read"):
        load_image_folder(tmp_path / "one")
    with pytest.raises(DatasetError, match="more than 1 image files"):
        load_image_folder(tmp_path / "one", max_images=1)
    with pytest.raises(DatasetError, match="not a folder"):
        load_image_folder(tmp_path / "nowhere")


@pytest.mark.slow
def test_train_and_evaluate_on_a_folder_and_on_cifar10(tmp_path, small_cifar, capsys):
    _folder(tmp_path / "shapes", {"a": 12, "b": 12})
    out = tmp_path / "run"
    args = ["train", "--model", "mobilenet", "--epochs", "1", "--batch-size", "8", "--quiet",
            "--val-split", "2", "--image-size", "16", "--channels", "3"]
    assert cli.main([*args, "--dataset", f"folder:{tmp_path / 'shapes'}", "--out", str(out)]) \
        == 0
    assert "test accuracy" in capsys.readouterr().out
    assert cli.main(["evaluate", str(out)]) == 0
    assert "folder:" in capsys.readouterr().out
    _write(tmp_path / "data" / "cifar10", small_cifar)
    assert cli.main(["train", "--model", "resnet", "--dataset", "cifar10", "--epochs", "1",
                     "--batch-size", "10", "--quiet", "--val-split", "10", "--data-root",
                     str(tmp_path / "data"), "--out", str(tmp_path / "cifar")]) == 0
    assert "test accuracy" in capsys.readouterr().out

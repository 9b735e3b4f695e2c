"""Block images, the IDX reader/writer and the MNIST-style loaders (incl. download)."""
import gzip
import hashlib
import http.server
import os
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from autoencoders import datasets
from autoencoders.datasets import IDXFormatError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


# ----------------------------------------------------------------------------
# blocks
# ----------------------------------------------------------------------------

def test_each_block_image_is_one_centred_rectangle_of_the_stated_size():
    images, heights, widths = datasets.blocks(500, size=12, seed=3)
    assert images.shape == (500, 12, 12) and images.dtype == np.float32
    assert heights.dtype == np.int64 and widths.dtype == np.int64
    assert set(np.unique(images)) <= {0.0, 1.0}
    for image, h, w in zip(images, heights, widths):
        rows, cols = np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))
        assert len(rows) == h and len(cols) == w
        assert image.sum() == h * w  # a full rectangle, nothing else
        assert rows[0] == (12 - h) // 2 and cols[0] == (12 - w) // 2


def test_block_sizes_cover_the_range_and_are_deterministic():
    _, heights, widths = datasets.blocks(5000, size=10, seed=0)
    assert set(heights) == set(range(1, 11)) and set(widths) == set(range(1, 11))
    a = datasets.blocks(50, seed=7)
    b = datasets.blocks(50, seed=7)
    c = datasets.blocks(50, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])


def test_80000_blocks_are_fast():
    started = time.perf_counter()
    images, _, _ = datasets.blocks(80_000)
    assert images.shape == (80_000, 28, 28)
    assert time.perf_counter() - started < 3.0  # well under a second on a quiet machine


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_blocks_rejects_bad_arguments(bad):
    with pytest.raises(ValueError, match="blocks: n must be a positive integer"):
        datasets.blocks(bad)
    with pytest.raises(ValueError, match="blocks: size must be a positive integer"):
        datasets.blocks(5, size=bad)


# ----------------------------------------------------------------------------
# IDX
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    array = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    if dtype == np.uint8:
        array = np.arange(24, dtype=dtype).reshape(2, 3, 4)
    path = datasets.write_idx(tmp_path / f"a.idx{suffix}", array)
    back = datasets.load_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]  # no temp left


def _header(code, dims):
    return struct.pack(">HBB", 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


@pytest.mark.parametrize("payload, message", [
    (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "bad magic number"),
    (_header(0x07, [2]) + b"\x00\x00", "unknown dtype code 0x07"),
    (_header(0x08, [10]) + b"\x00" * 7, "truncated: header says 10 uint8 = 10 bytes of data, file holds 7"),
    (_header(0x08, [2]) + b"\x00" * 5, "trailing bytes"),
    (_header(0x08, [2, 3])[:9], "truncated header"),
    (b"\x00\x00", "truncated header"),
    (b"\x1f\x8b" + b"garbage", "broken gzip stream"),
])
def test_corrupt_idx_files_name_the_file_and_the_problem(tmp_path, payload, message):
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(payload)
    with pytest.raises(IDXFormatError, match=message) as info:
        datasets.load_idx(path)
    assert str(path) in str(info.value)


def test_truncated_gzip_file(tmp_path):
    good = gzip.compress(_header(0x08, [1000]) + bytes(1000))
    path = tmp_path / "cut.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(IDXFormatError, match="cut.gz"):
        datasets.load_idx(path)


# ----------------------------------------------------------------------------
# loaders
# ----------------------------------------------------------------------------

def write_fake_set(directory, n_train=12, n_test=5, gz=True):
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        suffix = ".gz" if gz else ""
        datasets.write_idx(directory / f"{split}-images-idx3-ubyte{suffix}",
                           rng.integers(0, 256, (n, 28, 28)).astype(np.uint8))
        datasets.write_idx(directory / f"{split}-labels-idx1-ubyte{suffix}",
                           (np.arange(n) % 10).astype(np.uint8))
    return directory


@pytest.mark.parametrize("gz", [True, False])
def test_loader_reads_a_directory(tmp_path, gz):
    root = write_fake_set(tmp_path / "fm", gz=gz)
    images, labels = datasets.load_fashion_mnist(root)
    assert images.shape == (12, 28, 28) and images.dtype == np.float32
    assert 0 <= images.min() and images.max() <= 1
    assert labels.dtype == np.int64 and list(labels[:3]) == [0, 1, 2]
    flat, _ = datasets.load_fashion_mnist(root, split="test", flatten=True)
    assert flat.shape == (5, 784)


def test_loader_uses_the_environment_variable_in_both_layouts(tmp_path, monkeypatch):
    write_fake_set(tmp_path / "direct")
    monkeypatch.setenv("AUTOENCODERS_DATA", str(tmp_path / "direct"))
    assert datasets.load_mnist()[0].shape == (12, 28, 28)
    write_fake_set(tmp_path / "parent" / "mnist", n_train=7)
    monkeypatch.setenv("AUTOENCODERS_DATA", str(tmp_path / "parent"))
    assert datasets.load_mnist()[0].shape == (7, 28, 28)


def test_loader_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("AUTOENCODERS_DATA", raising=False)
    with pytest.raises(ValueError, match="split='valid'"):
        datasets.load_mnist(tmp_path, split="valid")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.gz is missing from .*download=True"):
        datasets.load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="AUTOENCODERS_DATA"):
        datasets.load_mnist()
    root = write_fake_set(tmp_path / "bad")
    datasets.write_idx(root / "train-labels-idx1-ubyte.gz", np.arange(11, dtype=np.uint8))
    with pytest.raises(IDXFormatError, match=r"\(11,\) labels for 12 images"):
        datasets.load_mnist(root)


# ----------------------------------------------------------------------------
# download, against a server on this machine
# ----------------------------------------------------------------------------

@pytest.fixture
def local_server(tmp_path):
    served = tmp_path / "served"
    write_fake_set(served)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def test_download_fetches_checks_and_places_files(tmp_path, local_server, monkeypatch):
    served, url = local_server
    monkeypatch.setitem(datasets.MIRRORS, "mnist", [url])
    monkeypatch.setitem(datasets.CHECKSUMS, "mnist",
                        {p.name: _md5(p) for p in served.iterdir()})
    target = tmp_path / "data"
    images, labels = datasets.load_mnist(target, download=True)
    assert images.shape == (12, 28, 28) and len(labels) == 12
    assert sorted(p.name for p in target.iterdir()) == [
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]


def test_download_with_a_wrong_checksum_keeps_nothing(tmp_path, local_server, monkeypatch):
    served, url = local_server
    monkeypatch.setitem(datasets.MIRRORS, "mnist", [url])
    sums = {p.name: _md5(p) for p in served.iterdir()}
    sums["train-images-idx3-ubyte.gz"] = "0" * 32
    monkeypatch.setitem(datasets.CHECKSUMS, "mnist", sums)
    target = tmp_path / "data"
    target.mkdir()
    with pytest.raises(IOError, match="does not match the published 0000"):
        datasets.load_mnist(target, download=True)
    assert list(target.iterdir()) == []


def test_published_checksums_are_the_official_ones():
    assert datasets.CHECKSUMS["fashion-mnist"]["train-images-idx3-ubyte.gz"] == \
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    assert datasets.CHECKSUMS["mnist"]["t10k-labels-idx1-ubyte.gz"] == \
        "ec29112dd5afa0611ce80d1b7f02629c"


# ----------------------------------------------------------------------------
# the real files, where this checkout has them
# ----------------------------------------------------------------------------

@pytest.mark.skipif(not (SHARED / "fashion-mnist").is_dir(),
                    reason=f"real data not present at {SHARED} (a fresh checkout has none)")
@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_real_files(name):
    directory = SHARED / name
    for filename, md5 in datasets.CHECKSUMS[name].items():
        assert _md5(directory / filename) == md5, filename
    loader = datasets.load_fashion_mnist if name == "fashion-mnist" else datasets.load_mnist
    images, labels = loader(SHARED, split="test")
    assert images.shape == (10_000, 28, 28)
    counts = np.bincount(labels, minlength=10)
    assert counts.sum() == 10_000 and counts.min() > 800
    if name == "fashion-mnist":
        assert set(counts) == {1000}

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
from autoencoders.datasets import IDXFormatError, load_idx, write_idx

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
    _, heights, widths = datasets.blocks(20_000, seed=1)  # the default size, 28
    assert heights.min() == widths.min() == 1 and heights.max() == widths.max() == 28
    a = datasets.blocks(50, seed=7)
    b = datasets.blocks(50, seed=7)
    c = datasets.blocks(50, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])


def test_odd_leftover_puts_the_extra_black_row_at_the_bottom():
    images, heights, widths = datasets.blocks(2000, size=5, seed=0)
    i = np.flatnonzero((heights == 2) & (widths == 4))[0]
    np.testing.assert_array_equal(images[i], [[0, 0, 0, 0, 0],
                                              [1, 1, 1, 1, 0],
                                              [1, 1, 1, 1, 0],
                                              [0, 0, 0, 0, 0],
                                              [0, 0, 0, 0, 0]])
    full = np.flatnonzero((heights == 5) & (widths == 5))[0]
    assert images[full].min() == 1.0


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
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4), (2, 1, 3, 2), (0, 28, 28)])
def test_idx_round_trip(tmp_path, dtype, suffix, shape):
    values = np.arange(int(np.prod(shape))).reshape(shape)
    array = (values if dtype == np.uint8 else values - 5).astype(dtype)
    if np.dtype(dtype).kind == "f":
        array = array / 3  # fractions survive the round trip bit for bit
    path = datasets.write_idx(tmp_path / f"a.idx{suffix}", array)
    back = datasets.load_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative and back.shape == shape
    np.testing.assert_array_equal(back, array)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]  # no temp left


def test_idx_is_big_endian_and_gzip_is_told_by_content(tmp_path):
    array = np.array([[1, -2], [300, 40000]], dtype=">i4")  # a big-endian input too
    plain = datasets.write_idx(tmp_path / "plain", array)
    assert Path(plain).read_bytes() == (
        b"\x00\x00\x0c\x02" + struct.pack(">II", 2, 2) + struct.pack(">4i", 1, -2, 300, 40000))
    gz = datasets.write_idx(tmp_path / "z.gz", array)
    renamed = tmp_path / "no-extension"
    os.replace(gz, renamed)
    np.testing.assert_array_equal(datasets.load_idx(renamed), array)
    assert datasets.load_idx(renamed).flags.writeable


def test_write_idx_rejects_what_idx_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="no IDX code"):
        datasets.write_idx(tmp_path / "b", np.zeros(3, dtype=bool))
    with pytest.raises(ValueError, match="1..255 dimensions"):
        datasets.write_idx(tmp_path / "s", np.float32(1.0))
    assert list(tmp_path.iterdir()) == []


def test_write_idx_gives_files_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = datasets.write_idx(tmp_path / "a", np.zeros(2, np.uint8))
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644


def _header(code, dims):
    return struct.pack(">HBB", 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


@pytest.mark.parametrize("payload, message", [
    (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "bad magic number"),
    (_header(0x07, [2]) + b"\x00\x00", "unknown dtype code 0x07"),
    (_header(0x08, [10]) + b"\x00" * 7,
     "truncated: header says 10 uint8 = 10 bytes of data, file holds 7"),
    (_header(0x08, [2]) + b"\x00" * 5, "trailing bytes"),
    (_header(0x08, [2, 3])[:9], "truncated header"),
    (b"\x00\x00", "truncated header"),
    (b"", "truncated header"),
    (b"\x00\x00\x08\x00", "0 dimensions"),
    # 2**64 elements: a product that wraps to 0 in int64 must not pass for an empty file
    (_header(0x08, [65536] * 4), "truncated: header says 65536x65536x65536x65536 uint8"),
    (b"\x1f\x8b" + b"garbage", "broken gzip stream"),
])
def test_corrupt_idx_files_name_the_file_and_the_problem(tmp_path, payload, message):
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(payload)
    with pytest.raises(IDXFormatError, match=message) as info:
        datasets.load_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("cut", [lambda g: g[: len(g) // 2], lambda g: g[:-1],
                                 lambda g: g + b"junk"])
def test_damaged_gzip_file(tmp_path, cut):
    good = gzip.compress(_header(0x08, [1000]) + bytes(1000))
    path = tmp_path / "cut.gz"
    path.write_bytes(cut(good))
    with pytest.raises(IDXFormatError, match="cut.gz: broken gzip stream"):
        datasets.load_idx(path)


def test_gzip_holding_a_truncated_idx_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_header(0x08, [3, 28, 28]) + bytes(100)))
    with pytest.raises(IDXFormatError, match=r"train-images-idx3-ubyte.gz: truncated: header says "
                                             r"3x28x28 uint8 = 2352 bytes of data, file holds 100"):
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
    with pytest.raises(FileNotFoundError) as info:
        datasets.load_mnist(tmp_path)
    message = str(info.value)
    for part in ("train-images-idx3-ubyte.gz is missing", str(tmp_path), "root=",
                 "AUTOENCODERS_DATA", "download=True"):
        assert part in message
    with pytest.raises(FileNotFoundError, match="AUTOENCODERS_DATA"):
        datasets.load_mnist()
    root = write_fake_set(tmp_path / "bad")
    datasets.write_idx(root / "train-labels-idx1-ubyte.gz", np.arange(11, dtype=np.uint8))
    with pytest.raises(IDXFormatError,
                       match=r"train-labels-idx1-ubyte.gz: \(11,\) labels for 12 images"):
        datasets.load_mnist(root)


GOOD_IMAGES, GOOD_LABELS = np.zeros((3, 28, 28), np.uint8), np.zeros(3, np.uint8)
BAD_IMAGES = "images-idx3-ubyte.gz: expected uint8 images of 28x28"
BAD_LABELS = "labels-idx1-ubyte.gz: labels must lie in 0..9"


@pytest.mark.parametrize("images, labels, message", [
    (np.zeros((3, 28, 27), np.uint8), GOOD_LABELS, BAD_IMAGES),
    (np.zeros((3, 784), np.uint8), GOOD_LABELS, BAD_IMAGES),
    (np.zeros((3, 28, 28), np.float32), GOOD_LABELS, BAD_IMAGES),
    (GOOD_IMAGES, np.array([0, 10, 2], np.uint8), BAD_LABELS),
    (GOOD_IMAGES, np.array([0, -1, 2], np.int8), BAD_LABELS),
    (GOOD_IMAGES, np.zeros(3, np.float32), "labels-idx1-ubyte.gz: labels must be integers"),
    (GOOD_IMAGES, np.zeros((3, 1), np.uint8), "labels-idx1-ubyte.gz: .*labels for 3 images"),
])
def test_loader_checks_what_the_files_hold(tmp_path, images, labels, message):
    datasets.write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    datasets.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    with pytest.raises(IDXFormatError, match=message):
        datasets.load_fashion_mnist(tmp_path, split="test")


def test_loader_pixels_are_scaled_exactly(tmp_path):
    pixels = np.resize(np.arange(256, dtype=np.uint8), (2, 28, 28))  # every value, 0..255
    datasets.write_idx(tmp_path / "t10k-images-idx3-ubyte", pixels)  # un-gzipped names too
    datasets.write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([3, 9], np.uint8))
    images, labels = datasets.load_mnist(tmp_path, split="test", flatten=True)
    expected = pixels.reshape(2, 784).astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(images, expected)
    assert images.min() == 0.0 and images.max() == 1.0 and list(labels) == [3, 9]


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

    requested = []

    class Handler(Handler):
        def do_GET(self):
            requested.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # a short poll interval: shutdown() otherwise waits up to 0.5 s per test
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/", requested
    server.shutdown()
    server.server_close()


def _md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def test_download_fetches_checks_and_places_files(tmp_path, local_server, monkeypatch):
    served, url, _ = local_server
    monkeypatch.setitem(datasets.MIRRORS, "mnist", [url])
    monkeypatch.setitem(datasets.CHECKSUMS, "mnist",
                        {p.name: _md5(p) for p in served.iterdir()})
    target = tmp_path / "data"
    images, labels = datasets.load_mnist(target, download=True)
    assert images.shape == (12, 28, 28) and len(labels) == 12
    assert sorted(p.name for p in target.iterdir()) == [
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]


def test_download_with_a_wrong_checksum_keeps_nothing(tmp_path, local_server, monkeypatch):
    served, url, _ = local_server
    monkeypatch.setitem(datasets.MIRRORS, "mnist", [url])
    sums = {p.name: _md5(p) for p in served.iterdir()}
    sums["train-images-idx3-ubyte.gz"] = "0" * 32
    monkeypatch.setitem(datasets.CHECKSUMS, "mnist", sums)
    target = tmp_path / "data"
    target.mkdir()
    with pytest.raises(IOError, match="does not match the published 0000"):
        datasets.load_mnist(target, download=True)
    assert list(target.iterdir()) == []


def _serve_as(monkeypatch, name, served, mirrors):
    monkeypatch.setitem(datasets.MIRRORS, name, mirrors)
    monkeypatch.setitem(datasets.CHECKSUMS, name, {p.name: _md5(p) for p in served.iterdir()})


def test_download_fetches_only_missing_files_and_falls_back_to_the_next_mirror(
        tmp_path, local_server, monkeypatch):
    served, url, requested = local_server
    _serve_as(monkeypatch, "fashion-mnist", served, [url + "nowhere/", url])  # first one 404s
    target = tmp_path / "data"
    write_fake_set(target, n_test=3)
    (target / "t10k-labels-idx1-ubyte.gz").unlink()
    (target / "t10k-labels-idx1-ubyte.gz").with_suffix("").unlink(missing_ok=True)
    datasets.write_idx(target / "t10k-labels-idx1-ubyte.gz", np.arange(3, dtype=np.uint8))
    (target / "t10k-images-idx3-ubyte.gz").unlink()
    # images come from the server (5 of them) but labels stay local (3): a mismatch,
    # which shows the local labels file was not fetched again
    with pytest.raises(IDXFormatError, match=r"\(3,\) labels for 5 images"):
        datasets.load_fashion_mnist(target, split="test", download=True)
    assert requested == ["/nowhere/t10k-images-idx3-ubyte.gz", "/t10k-images-idx3-ubyte.gz"]
    assert not [p for p in os.listdir(target) if p.startswith(".")]


def test_download_failure_names_the_file_and_every_mirror(tmp_path, local_server, monkeypatch):
    served, url, _ = local_server
    _serve_as(monkeypatch, "mnist", served, [url + "a/", url + "b/"])
    with pytest.raises(OSError, match=r"could not download train-images-idx3-ubyte.gz.*/a/.*404"
                                      r".*/b/.*404") as info:
        datasets.load_mnist(tmp_path / "data", download=True)
    assert not isinstance(info.value, FileNotFoundError)
    assert list((tmp_path / "data").iterdir()) == []


def test_download_goes_to_a_folder_per_data_set_when_no_root_is_given(
        tmp_path, local_server, monkeypatch):
    served, url, _ = local_server
    _serve_as(monkeypatch, "mnist", served, [url])
    _serve_as(monkeypatch, "fashion-mnist", served, [url])
    monkeypatch.delenv("AUTOENCODERS_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    datasets.load_mnist(split="test", download=True)
    cache = tmp_path / "home" / ".cache" / "autoencoders"
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    # the same file names for Fashion-MNIST must land apart, not be taken from mnist/
    monkeypatch.setenv("AUTOENCODERS_DATA", str(tmp_path / "shared"))
    datasets.load_fashion_mnist(split="test", download=True)
    assert (tmp_path / "shared" / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").is_file()
    assert sorted(p.name for p in cache.iterdir()) == ["mnist"]


def test_published_checksums_are_the_official_ones():
    assert datasets.CHECKSUMS["fashion-mnist"]["train-images-idx3-ubyte.gz"] == \
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    assert datasets.CHECKSUMS["mnist"]["t10k-labels-idx1-ubyte.gz"] == \
        "ec29112dd5afa0611ce80d1b7f02629c"


# ----------------------------------------------------------------------------
# the real files, where this checkout has them
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_real_files(name):
    directory = SHARED / name
    if not directory.is_dir():
        pytest.skip(f"real {name} data not present at {directory} (a fresh checkout has none)")
    for filename, md5 in datasets.CHECKSUMS[name].items():
        assert _md5(directory / filename) == md5, filename
    loader = datasets.load_fashion_mnist if name == "fashion-mnist" else datasets.load_mnist
    images, labels = loader(SHARED, split="test")
    assert images.shape == (10_000, 28, 28)
    counts = np.bincount(labels, minlength=10)
    assert counts.sum() == 10_000 and counts.min() > 800
    if name == "fashion-mnist":
        assert set(counts) == {1000}


def test_a_small_gzip_file_is_never_inflated_beyond_its_header(tmp_path):
    """A 'bomb': a few KB of gzip that inflate to 64 MB behind a header that declares
    10 bytes (or a bad magic) is rejected after reading about a chunk, not 64 MB."""
    import tracemalloc
    zeros = b"\x00" * (64 << 20)
    for header in (struct.pack(">HBBI", 0, 0x08, 1, 10), b"\xff\xff\x08\x01"):
        path = tmp_path / "bomb.gz"
        path.write_bytes(gzip.compress(header + zeros, compresslevel=9))
        assert path.stat().st_size < 100_000
        tracemalloc.start()
        try:
            with pytest.raises(IDXFormatError, match="trailing bytes|bad magic"):
                load_idx(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 4 << 20, peak
    path = tmp_path / "huge.idx"
    path.write_bytes(struct.pack(">HBBIII", 0, 0x08, 3, 4_000_000, 28, 28))
    with pytest.raises(IDXFormatError, match=r"more than the 1000 expected here"):
        load_idx(path, max_bytes=1000)


def test_the_loaders_refuse_the_other_data_sets_official_files(tmp_path, monkeypatch):
    from autoencoders import datasets
    images = np.zeros((3, 28, 28), np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(3, dtype=np.uint8))
    digest = datasets._md5(tmp_path / "train-images-idx3-ubyte.gz")
    # pretend these bytes are MNIST's published file
    sums = {k: dict(v) for k, v in datasets.CHECKSUMS.items()}
    sums["mnist"]["train-images-idx3-ubyte.gz"] = digest
    monkeypatch.setattr(datasets, "CHECKSUMS", sums)
    with pytest.raises(IDXFormatError, match=r"is the mnist file train-images-idx3-ubyte.gz "
                                             r".* not fashion-mnist's"):
        datasets.load_fashion_mnist(tmp_path)
    assert datasets.load_mnist(tmp_path)[0].shape == (3, 28, 28)


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="needs ../shared/datasets")
def test_the_real_mnist_files_are_refused_as_fashion_mnist():
    from autoencoders import datasets
    with pytest.raises(IDXFormatError, match="is the mnist file"):
        datasets.load_fashion_mnist(SHARED / "mnist", split="test")

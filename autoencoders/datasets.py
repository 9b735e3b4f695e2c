"""Data sets: the synthetic block images, and MNIST / Fashion-MNIST from IDX files.

* :func:`blocks` -- the article's "block image dataset": one white rectangle of
  random height and width, centred on a black square;
* :func:`load_idx` / :func:`write_idx` -- the IDX format, plain or gzip'd;
* :func:`load_fashion_mnist` / :func:`load_mnist` -- the four standard files from
  a directory (argument or ``$AUTOENCODERS_DATA``), optionally downloaded from the
  official sources and checked against their published MD5 sums;
* :func:`load_images` / :func:`load_image` -- your own pictures (a folder, read
  recursively, or one file), resized to one size, grey or RGB; these need Pillow
  (the ``images`` extra), imported only when they are called.

The IDX format (big-endian): two zero bytes, a dtype code (0x08 uint8, 0x09 int8,
0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions,
one uint32 per dimension, then the data in row-major order.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import urllib.request
import warnings
import zlib
from pathlib import PurePath

import numpy as np

from .files import atomic_write, file_digest

__all__ = ["blocks", "load_idx", "write_idx", "load_fashion_mnist", "load_mnist",
           "IDXFormatError", "MIRRORS", "CHECKSUMS", "load_images", "load_image",
           "SkippedFilesWarning", "ImageDecodeError"]


# ----------------------------------------------------------------------------
# block images
# ----------------------------------------------------------------------------

def blocks(n, size=28, seed=0):
    """``n`` images of one white rectangle, centred on black: ``(images, heights, widths)``.

    Height and width are independent, uniform on 1..size.  A rectangle of height
    h starts at row ``(size - h) // 2`` (so with an odd leftover the extra black
    row is at the bottom); columns likewise.  ``images`` is float32 of shape
    (n, size, size) with values exactly 0.0 and 1.0; heights and widths are int64
    arrays of shape (n,).  Deterministic for a seed (``numpy.random.default_rng``).
    Raises ValueError unless ``n`` and ``size`` are positive integers.
    """
    for name, value in (("n", n), ("size", size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"blocks: {name} must be a positive integer, got {value!r}")
    rng = np.random.default_rng(seed)
    heights = rng.integers(1, size + 1, n, dtype=np.int64)
    widths = rng.integers(1, size + 1, n, dtype=np.int64)
    top, left = (size - heights) // 2, (size - widths) // 2
    pixels = np.arange(size)
    rows = ((pixels >= top[:, None]) & (pixels < (top + heights)[:, None])).astype(np.float32)
    cols = ((pixels >= left[:, None]) & (pixels < (left + widths)[:, None])).astype(np.float32)
    # The outer product of the masks, straight into float32: no (n, size, size)
    # boolean intermediate, so 80,000 images cost one 250 MB allocation, not two.
    images = rows[:, :, None] * cols[:, None, :]
    return images, heights, widths


# ----------------------------------------------------------------------------
# IDX files
# ----------------------------------------------------------------------------

class IDXFormatError(ValueError):
    """A file that is not a well-formed IDX file (the message names the file)."""


_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IDX_CODES = {np.dtype(v).newbyteorder("=").str: k for k, v in _IDX_DTYPES.items()}


_CHUNK = 1 << 20


def _open_idx(path):
    """A binary stream over the IDX bytes of ``path``, gzip'd or not (told by its
    first two bytes, 1f 8b, not by its name)."""
    f = open(path, "rb")
    if f.read(2) == b"\x1f\x8b":
        f.seek(0)
        return gzip.GzipFile(fileobj=f, mode="rb"), f
    f.seek(0)
    return f, f


def _read_exactly(stream, n, path):
    """Up to ``n`` bytes, read a chunk at a time (so memory follows what the file
    really holds, never what a header claims); a broken gzip stream is an
    IDXFormatError."""
    chunks, got = [], 0
    try:
        while got < n:
            chunk = stream.read(min(_CHUNK, n - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except (OSError, EOFError, zlib.error) as error:
        raise IDXFormatError(f"{path}: broken gzip stream ({error})") from None
    return b"".join(chunks)


def load_idx(path, max_bytes=None):
    """The array stored in IDX file ``path``, of the declared shape, in native byte order.

    The file may be plain or gzip'd (told by its first two bytes, 1f 8b, not by its
    name).  Raises :class:`IDXFormatError`, naming the file and the problem, when
    the magic is wrong, the dtype code unknown, the header or data truncated, or
    there are bytes after the data.  The header is checked before any data is read,
    and the data are read (and decompressed) a chunk at a time, never beyond what
    the header declares: a small gzip file cannot make the reader inflate gigabytes
    to reject it.  ``max_bytes`` refuses headers that declare more data than that.
    """
    path = os.fspath(path)
    stream, raw_file = _open_idx(path)
    with raw_file, stream:
        start = _read_exactly(stream, 4, path)
        if len(start) < 4:
            raise IDXFormatError(f"{path}: truncated header ({len(start)} bytes; an IDX file "
                                 f"starts with 4 magic bytes)")
        zero, code, ndim = struct.unpack(">HBB", start)
        if zero != 0:
            raise IDXFormatError(f"{path}: bad magic number 0x{start.hex()}: the first two "
                                 f"bytes of an IDX file are zero")
        if code not in _IDX_DTYPES:
            raise IDXFormatError(f"{path}: unknown dtype code 0x{code:02x}; expected one of "
                                 f"{', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}")
        if ndim == 0:
            raise IDXFormatError(f"{path}: the header declares 0 dimensions")
        header = 4 + 4 * ndim
        rest = _read_exactly(stream, 4 * ndim, path)
        if len(rest) < 4 * ndim:
            raise IDXFormatError(f"{path}: truncated header: {ndim} dimensions need {header} "
                                 f"bytes, the file holds {4 + len(rest)}")
        dims = struct.unpack(f">{ndim}I", rest)
        dtype = _IDX_DTYPES[code]
        # math.prod, not np.prod: a corrupt header can declare dims whose product
        # overflows int64 and would wrap to a small (even matching) number.
        expected = math.prod(dims) * dtype.itemsize
        shape = "x".join(map(str, dims))
        if max_bytes is not None and expected > max_bytes:
            raise IDXFormatError(f"{path}: the header declares {shape} {dtype.name} = "
                                 f"{expected} bytes of data, more than the {max_bytes} "
                                 f"expected here")
        if stream is raw_file:  # a plain file: its size says at once whether the data fit
            got = os.fstat(raw_file.fileno()).st_size - header
            if got != expected:
                what = "truncated" if got < expected else "trailing bytes"
                raise IDXFormatError(f"{path}: {what}: header says {shape} {dtype.name} = "
                                     f"{expected} bytes of data, file holds {got}")
        raw = _read_exactly(stream, expected + 1, path)  # one more: are there trailing bytes?
    got = len(raw)
    if got != expected:
        what = "truncated" if got < expected else "trailing bytes"
        held = f"file holds {got}" if got < expected else "file holds more"
        raise IDXFormatError(f"{path}: {what}: header says {shape} {dtype.name} = {expected} "
                             f"bytes of data, {held}")
    data = np.frombuffer(raw, dtype=dtype).reshape(dims)
    return data.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path, array):
    """Write ``array`` as an IDX file (gzip'd if ``path`` ends in .gz); returns the path.

    Atomic: the bytes go to a temporary file in the same directory, which then
    replaces ``path``, so a reader never sees half a file.  The dtype must be one
    IDX knows (uint8, int8, int16, int32, float32, float64; either byte order).
    """
    path = os.fspath(path)
    array = np.asarray(array)
    key = array.dtype.newbyteorder("=").str
    if key not in _IDX_CODES:
        raise ValueError(f"write_idx: dtype {array.dtype} has no IDX code; use uint8, int8, "
                         f"int16, int32, float32 or float64")
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"write_idx: array must have 1..255 dimensions, got {array.ndim}")
    if max(array.shape) > 0xFFFFFFFF:
        raise ValueError(f"write_idx: IDX stores each dimension as uint32; shape {array.shape} "
                         f"does not fit")
    code = _IDX_CODES[key]
    payload = (struct.pack(">HBB", 0, code, array.ndim)
               + struct.pack(f">{array.ndim}I", *array.shape)
               + np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes())
    if path.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    _write_atomic(path, payload)
    return path


def _write_atomic(path, payload):
    with atomic_write(path) as f:
        f.write(payload)


# ----------------------------------------------------------------------------
# MNIST and Fashion-MNIST
# ----------------------------------------------------------------------------

_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}

#: Where ``download=True`` fetches from (tests point these at a local server).
MIRRORS = {
    "fashion-mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/"],
}

#: The published MD5 sums of the official files.
CHECKSUMS = {
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
}


def load_fashion_mnist(root=None, split="train", flatten=False, download=False):
    """Fashion-MNIST ``(images, labels)``: float32 in [0, 1], shape (n, 28, 28) or
    (n, 784) with ``flatten``; int64 labels 0..9.  Arguments as for :func:`load_mnist`,
    with ``fashion-mnist/`` as the subfolder name."""
    return _load("fashion-mnist", root, split, flatten, download)


def load_mnist(root=None, split="train", flatten=False, download=False):
    """MNIST ``(images, labels)``: float32 in [0, 1] (the uint8 pixels / 255), shape
    (n, 28, 28) or (n, 784) with ``flatten``; int64 labels 0..9.

    ``root`` (default ``$AUTOENCODERS_DATA``) is the directory holding the standard
    files (``train-*`` for ``split="train"``, ``t10k-*`` for ``"test"``; gzip'd or
    not), or its parent holding them in ``mnist/``.  A missing file raises
    FileNotFoundError saying how to fix it; with ``download=True`` it is fetched
    from :data:`MIRRORS` instead, checked against :data:`CHECKSUMS` and moved
    into place atomically.  Without a root or ``$AUTOENCODERS_DATA``, downloads
    go to ``~/.cache/autoencoders/mnist``.  Malformed files raise IDXFormatError.
    """
    return _load("mnist", root, split, flatten, download)


def _directory(name, root, download):
    """The directory that holds (or, downloading, will hold) the files of ``name``."""
    explicit = root is not None
    if root is None:
        root = os.environ.get("AUTOENCODERS_DATA")
        if not root and download:
            root = os.path.join(os.path.expanduser("~"), ".cache", "autoencoders")
        if not root:
            raise FileNotFoundError(
                f"no data directory for {name}: pass root= (--data-dir on the command line) "
                f"or set AUTOENCODERS_DATA to the directory holding the IDX files, or use "
                f"download=True (--download)")
    root = os.fspath(root)
    nested = os.path.join(root, name)
    if os.path.isdir(nested):
        return nested
    if download and not explicit and not _holds_any(root):
        # MNIST and Fashion-MNIST share file names: downloading both straight into
        # one shared folder would let the second loader silently read the first's.
        return nested
    return root


def _holds_any(directory):
    names = [f for pair in _FILES.values() for f in pair]
    return any(_find(directory, f) is not None for f in names)


def _find(directory, filename):
    """The file, gzip'd or not, or None."""
    for candidate in (filename, filename[:-3]):
        path = os.path.join(directory, candidate)
        if os.path.exists(path):
            return path
    return None


def _load(name, root, split, flatten, download):
    if split not in _FILES:
        raise ValueError(f"load {name}: split={split!r}; expected 'train' or 'test'")
    directory = _directory(name, root, download)
    paths = []
    for filename in _FILES[split]:
        path = _find(directory, filename)
        if path is None:
            if not download:
                raise FileNotFoundError(
                    f"{name}: {filename} is missing from {directory}; pass the directory "
                    f"that holds it (root= / --data-dir), set AUTOENCODERS_DATA, or use "
                    f"download=True (--download)")
            os.makedirs(directory, exist_ok=True)
            path = _download(name, filename, directory)
        paths.append(path)
    _check_identity(name, paths)
    # a generous bound (a million images) against headers that declare absurd sizes
    images = load_idx(paths[0], max_bytes=_MAX_IMAGES * 28 * 28)
    labels = load_idx(paths[1], max_bytes=_MAX_IMAGES * 8)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise IDXFormatError(f"{paths[0]}: expected uint8 images of 28x28, got "
                             f"{images.dtype} of shape {images.shape}")
    if labels.dtype.kind not in "iu":
        raise IDXFormatError(f"{paths[1]}: labels must be integers, got {labels.dtype}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise IDXFormatError(f"{paths[1]}: {labels.shape} labels for {len(images)} images "
                             f"in {paths[0]}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise IDXFormatError(f"{paths[1]}: labels must lie in 0..9, found "
                             f"{labels.min()}..{labels.max()}")
    images = images.astype(np.float32)
    images /= np.float32(255)  # in place: the 60,000-image split is 188 MB as float32
    if flatten:
        images = images.reshape(len(images), -1)
    return images, labels.astype(np.int64)


_MAX_IMAGES = 1_000_000


def _check_identity(name, paths):
    """MNIST and Fashion-MNIST share file names and formats: an official file of the
    other data set (told by its published MD5) is refused, naming which it is.  Files
    that match neither table (unpacked or re-packed copies) are read as they are."""
    for path in paths:
        filename = os.path.basename(path)
        others = {other: sums[filename] for other, sums in CHECKSUMS.items()
                  if other != name and filename in sums}
        if not others or os.path.getsize(path) > 64 << 20:
            continue
        digest = _md5(path)
        if digest == CHECKSUMS.get(name, {}).get(filename):
            continue
        for other, published in others.items():
            if digest == published:
                raise IDXFormatError(
                    f"{path} is the {other} file {filename} (its MD5 is {other}'s published "
                    f"one), not {name}'s; point root / --data-dir at the {name} files")


def _md5(path):
    return file_digest(path, "md5")


class _Rejected(Exception):
    """A download whose checksum does not match: nothing is kept, the next mirror is tried."""


def _download(name, filename, directory):
    """Fetch ``filename`` into ``directory`` from the first mirror that has a copy with
    the published MD5; returns its path.  Raises OSError naming every URL tried."""
    expected = CHECKSUMS[name][filename]
    target = os.path.join(directory, filename)
    errors = []
    for base in MIRRORS[name]:
        url = base.rstrip("/") + "/" + filename
        try:
            # the MD5 is checked before the rename: a bad copy never takes the file's name
            with atomic_write(target) as out, \
                    urllib.request.urlopen(url, timeout=60) as response:
                digest = hashlib.md5()
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    digest.update(chunk)
                    out.write(chunk)
                if digest.hexdigest() != expected:
                    # a bad copy on one mirror should not stop the next one being tried
                    raise _Rejected(f"{filename} from {url}: MD5 {digest.hexdigest()} does not "
                                    f"match the published {expected}; the file was not kept")
            return target
        except _Rejected as rejected:
            errors.append(str(rejected))
        except OSError as error:  # URLError, HTTPError and timeouts are all OSErrors
            errors.append(f"{url}: {error}")
    raise OSError(f"{name}: could not download {filename}: " + "; ".join(errors))


# ----------------------------------------------------------------------------
# your own pictures (Pillow, an optional dependency: the ``images`` extra)
# ----------------------------------------------------------------------------

class SkippedFilesWarning(UserWarning):
    """The files :func:`load_images` left out, each with the reason: one warning per
    call.  ``skipped`` holds the ``(path, reason)`` pairs, paths relative to the
    folder in POSIX form (a folder that could not be listed ends in ``/``)."""

    def __init__(self, message, skipped=()):
        super().__init__(message)
        self.skipped = list(skipped)


class ImageDecodeError(ValueError):
    """A file :func:`load_image` cannot read as an image (the message names the file
    and the reason)."""


_IMAGE_CHANNELS = {"L": (), "RGB": (3,)}
# 16-bit and 32-bit integer grey, and float grey: read without dropping to 8 bits
_WIDE_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_ORIENTATION = 0x0112      # the EXIF tag (PIL.ExifTags.Base.Orientation)
_ROTATED = (5, 6, 7, 8)    # orientations that swap width and height


def _pillow(caller):
    """PIL.Image and PIL.ImageOps, imported here so that ``import autoencoders`` never
    needs Pillow."""
    try:
        from PIL import Image, ImageOps
    except ImportError as error:
        raise ImportError(f"{caller} needs Pillow: pip install 'minigrad-autoencoders[images]' "
                          f"(or pip install Pillow)") from error
    return Image, ImageOps


def _image_args(caller, size, mode):
    """``(height, width)``, once ``size`` and ``mode`` are known to be good."""
    if not (isinstance(size, (tuple, list)) and len(size) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
                    for v in size)):
        raise ValueError(f"{caller}: size={size!r}; expected two positive integers "
                         f"(height, width), e.g. size=(64, 64)")
    if not (isinstance(mode, str) and mode in _IMAGE_CHANNELS):
        raise ValueError(f"{caller}: mode={mode!r}; expected 'L' (grey) or 'RGB'")
    return int(size[0]), int(size[1])


def _reason(error, Image):
    """Why a file could not be read, in words."""
    if isinstance(error, Image.DecompressionBombError):
        return (f"too many pixels: over twice Pillow's decompression-bomb limit "
                f"(PIL.Image.MAX_IMAGE_PIXELS) ({error})")
    if isinstance(error, Image.UnidentifiedImageError):
        # Pillow's message only repeats the path
        return "not an image Pillow can identify (another kind of file, or a damaged header)"
    if isinstance(error, OSError) and error.errno is not None:  # permissions, vanished file
        return f"cannot read the file ({type(error).__name__}: {error.strerror})"
    return f"cannot decode ({type(error).__name__}: {error})"


def _read_into(out, path, height, width, Image, ImageOps):
    """Decode the image file ``path`` into the float32 array ``out``, of shape
    (height, width) for grey or (height, width, 3) for RGB; returns whether the
    image (as displayed, i.e. after its EXIF orientation) had another size."""
    with Image.open(path) as image:
        full = image.size
        # JPEG only (a no-op for other formats): decode at 1/2, 1/4 or 1/8 scale when
        # that still leaves at least twice the target size in both directions (either
        # way round, as the EXIF orientation may swap them), as Image.thumbnail does.
        side = 2 * max(height, width)
        image.draft(None, (side, side))
        if image.getexif().get(_ORIENTATION) in _ROTATED:
            full = full[::-1]
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy when upright
        if image.mode in _WIDE_MODES:
            # 16-bit PNG/TIFF and the like: converting to "L" would clip them, so go
            # through 32-bit float; integers are scaled by 65535, floats kept as they are
            scale = 1 if image.mode == "F" else 65535
            grey = image.convert("F")
            if grey.size != (width, height):
                grey = grey.resize((width, height), Image.Resampling.BILINEAR,
                                   reducing_gap=3.0)
            values = np.asarray(grey)
            out[...] = values if out.ndim == 2 else values[..., None]
            if scale != 1:
                out /= np.float32(scale)
            np.nan_to_num(out, copy=False, nan=0.0)
            np.clip(out, 0.0, 1.0, out=out)
            return full != (width, height)
        if image.mode in _ALPHA_MODES or "transparency" in image.info:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, rgba)
            del rgba, white
        if image.mode not in ("1", "L", "RGB"):  # palette, CMYK, YCbCr, RGBA...
            image = image.convert("RGB")
        target = "L" if out.ndim == 2 else "RGB"
        if image.mode != target:
            image = image.convert(target)
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0)
        out[...] = np.asarray(image)
        out /= np.float32(255)
    return full != (width, height)


def load_image(path, size, mode="L"):
    """One image file as ``(image, resized)``, converted exactly as by
    :func:`load_images`: ``image`` is float32 in [0, 1] of shape ``size`` (grey,
    ``mode="L"``) or ``size + (3,)`` (``mode="RGB"``); ``resized`` is True when the
    picture had another size (after its EXIF orientation) and was stretched to
    ``size``.

    Raises FileNotFoundError / IsADirectoryError naming ``path``,
    :class:`ImageDecodeError` (a ValueError) naming the file and why it cannot be
    read, ValueError for a bad ``size`` or ``mode``, and ImportError without Pillow.
    """
    height, width = _image_args("load_image", size, mode)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load_image: {path} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"load_image: {path} is a folder; load_images reads folders")
    Image, ImageOps = _pillow("load_image")
    image = np.empty((height, width) + _IMAGE_CHANNELS[mode], np.float32)
    try:
        resized = _read_into(image, path, height, width, Image, ImageOps)
    except Exception as error:  # Pillow's decoders raise many types; all mean "unreadable"
        raise ImageDecodeError(f"{path}: {_reason(error, Image)}") from error
    return image, resized


def load_images(root, size, mode="L", progress=False):
    """Every image under folder ``root`` as ``(images, paths)``.

    ``images`` is float32 in [0, 1], of shape (n, height, width) for
    ``mode="L"`` (grey) or (n, height, width, 3) for ``mode="RGB"``, with
    ``size=(height, width)``; ``paths`` is the list of the n files' paths relative
    to ``root``, in POSIX form (``"trips/2021/beach.jpg"``), one per row.

    **Which files.**  Every file under ``root``, recursively, that Pillow can decode
    (PNG, JPEG, BMP, GIF, TIFF, WebP, ...: the file's content decides, not its
    name), in the order of their relative POSIX paths (sorted by code point: the
    same folder gives the same order on every OS).  Files and folders whose name
    starts with ``.`` are ignored (``.DS_Store``, ``.git/``, thumbnail caches).
    Every other file that is not read -- not an image, truncated or corrupt, over
    Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``; Pillow warns
    from that many pixels and refuses twice that), a broken link, not a regular
    file -- is left out and named with the reason in one
    :class:`SkippedFilesWarning`; so is a symbolic link to a folder (not followed,
    so no loops) and a sub-folder that cannot be listed.  Multi-frame files (GIF,
    TIFF) give their first frame.

    **Conversion.**  The EXIF orientation is applied (the picture as a viewer
    shows it); transparency (an alpha channel, or a transparent palette entry or
    colour) is composited on white; palette, bilevel, CMYK and other modes go
    through RGB (no ICC colour management); grey is Pillow's ITU-R 601-2 luma,
    L = 0.299 R + 0.587 G + 0.114 B.  8-bit values are divided by 255; 16-bit
    grey (and 32-bit integer grey) by 65535, so 65535 gives 1.0 (the full 16-bit
    precision is kept); float images are taken to lie in [0, 1] already.  Values
    are clipped to [0, 1].

    **Resizing.**  Each picture is stretched to ``size`` (aspect ratio not kept, no
    cropping or padding: simple, and every pixel counts).  The filter is Pillow's
    BILINEAR: when shrinking, Pillow widens it to cover the whole footprint of each
    output pixel, so it averages (no aliasing), and unlike LANCZOS or BICUBIC it
    has no negative lobes, so no halos or overshoot at edges; it is also the
    cheaper one.  ``reducing_gap=3.0`` first shrinks by an integer factor with a box
    filter, which Pillow documents as indistinguishable from the one-step result.
    JPEGs are decoded at 1/2, 1/4 or 1/8 scale when that still leaves twice the
    target size (``Image.draft``, as ``Image.thumbnail`` does): much faster for
    photos, a slightly different result from decoding in full.  A picture already
    of ``size`` is not resampled: its values are exact.

    **Memory.**  The files are decoded one at a time into one preallocated array;
    no decoded picture outlives its row.

    ``progress=True`` shows a tqdm bar if tqdm is installed, and nothing otherwise.

    Raises FileNotFoundError / NotADirectoryError naming ``root``; ValueError naming
    the folder when no image could be read (an empty folder, or every file
    skipped: how many, and why); ValueError naming the argument for a bad ``size``
    (two positive integers) or ``mode`` ('L' or 'RGB'); ImportError without Pillow.
    """
    height, width = _image_args("load_images", size, mode)
    root = os.fspath(root)
    if not os.path.exists(root):
        raise FileNotFoundError(f"load_images: {root} does not exist")
    if not os.path.isdir(root):
        raise NotADirectoryError(f"load_images: {root} is not a directory")
    Image, ImageOps = _pillow("load_images")
    skipped = []
    files = _image_files(root, skipped)
    images = np.empty((len(files), height, width) + _IMAGE_CHANNELS[mode], np.float32)
    paths = []
    bar = _progress_bar(progress, len(files))
    try:
        for relative, path in files:
            if not os.path.isfile(path):
                skipped.append((relative, "a broken symbolic link" if os.path.islink(path)
                                else "not a regular file"))
            else:
                try:
                    _read_into(images[len(paths)], path, height, width, Image, ImageOps)
                except Exception as error:  # Pillow's decoders raise many types
                    skipped.append((relative, _reason(error, Image)))
                else:
                    paths.append(relative)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    skipped.sort()
    if skipped:
        lines = "".join(f"\n  {p}: {why}" for p, why in skipped)
        warnings.warn(SkippedFilesWarning(
            f"load_images: {len(skipped)} file(s) under {root} skipped, {len(paths)} "
            f"image(s) read:{lines}", skipped), stacklevel=2)
    if not paths:
        if not skipped:
            raise ValueError(f"load_images: no files in {root} (files and folders whose "
                             f"name starts with '.' are ignored)")
        shown = "; ".join(f"{p}: {why}" for p, why in skipped[:3])
        more = f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        raise ValueError(f"load_images: no image could be read in {root}: "
                         f"{len(skipped)} file(s) skipped ({shown}{more})")
    if len(paths) < len(images):
        # Shrink in place, not images[:n].copy(): no second copy of the whole set.  The
        # array never left this function, and the row views made above are gone, so
        # no live view can see the reallocated buffer (hence refcheck=False).
        images.resize((len(paths),) + images.shape[1:], refcheck=False)
    return images, paths


def _image_files(root, skipped):
    """The ``(relative POSIX path, path)`` of every non-hidden file under ``root``,
    sorted by the former; folders not walked into are added to ``skipped``."""
    def relative(path):
        return PurePath(os.path.relpath(path, root)).as_posix()

    def unlistable(error):
        if os.path.abspath(error.filename) == os.path.abspath(root):
            raise error
        skipped.append((relative(error.filename) + "/",
                        f"cannot list the folder ({error.strerror or error})"))

    files = []
    for folder, folders, names in os.walk(root, onerror=unlistable):
        kept = []
        for name in folders:
            if name.startswith("."):
                continue
            if os.path.islink(os.path.join(folder, name)):
                skipped.append((relative(os.path.join(folder, name)),
                                "a symbolic link to a folder (not followed)"))
            else:
                kept.append(name)
        folders[:] = kept
        files.extend((relative(os.path.join(folder, name)), os.path.join(folder, name))
                     for name in names if not name.startswith("."))
    files.sort()
    return files


def _progress_bar(enabled, total):
    """A tqdm bar over ``total`` files, or None (not asked for, or tqdm not installed)."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="file", desc="loading images", dynamic_ncols=True)

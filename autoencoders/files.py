"""Files: one atomic writer, the model file format and the training checkpoint.

Every file the project writes goes through :func:`atomic_write`: the bytes go to
a temporary file in the target's folder, are flushed to disk, and the temporary
file is renamed over the target.  A crash or Ctrl-C at any moment leaves either
the old file or the new one, never half of one.

**Model files** (``Autoencoder.save``) are ``.npz`` archives: one array per
parameter, named as in ``state_dict()``, plus ``__config__``, a JSON string that
``Autoencoder.load`` rebuilds the model from.  They are read with
``allow_pickle=False``: a model file can hold numbers and text, never code.

**Checkpoints** (``fit(..., checkpoint_dir=...)``) are ``.npz`` archives too:
``model/<name>`` (the weights), ``optimizer/<buffer>/<i>`` (e.g. Adam's moments),
``best/<name>`` (early stopping's best weights, when kept), and ``__state__``, a
JSON string with the rest (epoch, history, the random generators' states, the
optimizer's counts and hyper-parameters, the schedule's and early stopping's
state, and the options the run was started with).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import zipfile

import numpy

__all__ = ["atomic_write", "write_json", "file_digest", "read_npy_header", "FORMAT_VERSION", "CHECKPOINT_VERSION",
           "write_model", "read_model", "write_checkpoint", "read_checkpoint"]

#: Version of the model file layout written by ``Autoencoder.save``.
FORMAT_VERSION = 3  # 2 added convolutional models ("conv" in the config), 3 their layers
#                    holding their activation (names renumbered on loading); 1 and 2 load
#: Version of the checkpoint layout written by ``fit(..., checkpoint_dir=...)``.
CHECKPOINT_VERSION = 1
FORMAT_NAME = "minigrad-autoencoder"
CHECKPOINT_NAME = "minigrad-autoencoder-checkpoint"
CONFIG_KEY = "__config__"
STATE_KEY = "__state__"


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """``with atomic_write(path) as f: ...`` writes ``path`` all at once or not at all.

    ``f`` is a file object on a temporary file beside ``path`` (same folder, so the
    final ``os.replace`` is an atomic rename); it gets the permissions an ordinary
    ``open`` would give (``mkstemp`` makes files 0600).  An exception inside the
    block removes the temporary file and leaves ``path`` as it was.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask_mode():
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_json(path, obj):
    """``obj`` as indented JSON at ``path``, atomically (NumPy numbers become numbers)."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=_jsonable)
        f.write("\n")
    return path


def _jsonable(value):
    if isinstance(value, numpy.generic):
        return value.item()
    if isinstance(value, numpy.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _write_npz(path, arrays, key, document):
    arrays = dict(arrays)
    arrays[key] = numpy.array(json.dumps(document, default=_jsonable))
    with atomic_write(path) as f:
        numpy.savez(f, **arrays)
    return path


def _read_npz(path, what, key, label):
    """``(document, {name: array})`` from an ``.npz`` written by :func:`_write_npz`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {what} file at {path}")
    try:
        _check_members(path, what)
        with numpy.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path} is not a complete {what} file (truncated or "
                         f"corrupt?): {type(e).__name__}: {e}") from None
    if key not in arrays:
        article = "an" if what[0] in "aeiou" else "a"
        raise ValueError(f"{path} is an .npz file without {article} {what} {label}; was it "
                         f"written by this package?")
    try:
        document = json.loads(str(arrays.pop(key)[()]))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: the {what} {label} is not valid JSON ({e})") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path}: malformed {what} {label}")
    return document, arrays


def file_digest(path, algorithm="sha256"):
    """The hex digest of a file's bytes, read a chunk at a time."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_npy_header(f):
    """``(shape, fortran_order, dtype)`` from the header of the .npy stream ``f`` (left
    at the first data byte), without reading the data; ValueError for a format
    version this reader does not accept."""
    version = numpy.lib.format.read_magic(f)
    if version == (1, 0):
        return numpy.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return numpy.lib.format.read_array_header_2_0(f)
    raise ValueError(f".npy format version {version}, which this reader does not accept")


def _check_members(path, what):
    """Every array in the archive declares no more data than the archive holds for it.

    ``numpy.load`` allocates what an array's header declares before reading it, so a
    few kilobytes of hostile file could ask for terabytes; the headers are read and
    checked first (and a compressed member may not inflate beyond 1000 times its size).
    """
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED and \
                    info.file_size > max(1000 * info.compress_size, 1 << 20):
                raise ValueError(f"{path}: {info.filename} would inflate {info.compress_size} "
                                 f"bytes to {info.file_size}; not a {what} file")
            with archive.open(info) as member:
                try:
                    shape, _, dtype = read_npy_header(member)
                except ValueError as error:
                    raise ValueError(f"{path}: {info.filename}: {error}") from None
                declared = math.prod(shape) * dtype.itemsize
                if declared > info.file_size:
                    raise ValueError(f"{path}: {info.filename} declares an array of shape "
                                     f"{shape} {dtype} ({declared} bytes) but holds "
                                     f"{info.file_size} bytes")


def _check_format(path, document, name, version, what):
    if document.get("format") != name:
        raise ValueError(f"{path}: not {what} (format {document.get('format')!r}, expected "
                         f"{name!r})")
    if document.get("format_version", 0) > version:
        raise ValueError(f"{path} was written in {what} format version "
                         f"{document['format_version']}; this version reads up to {version}; "
                         f"upgrade the package")


# -- model files ---------------------------------------------------------------------

def write_model(path, config, weights):
    """Write a model file: ``config`` (JSON-able dict) and ``weights`` ({name: array})."""
    config = dict(config, format=FORMAT_NAME, format_version=FORMAT_VERSION)
    return _write_npz(path, weights, CONFIG_KEY, config)


def read_model(path):
    """``(config, {name: array})`` from a file written by :func:`write_model`."""
    config, weights = _read_npz(path, "autoencoder", CONFIG_KEY, "config")
    _check_format(path, config, FORMAT_NAME, FORMAT_VERSION, "an autoencoder file")
    return config, weights


# -- checkpoints ---------------------------------------------------------------------

def write_checkpoint(path, state, arrays):
    """Write a checkpoint: ``state`` (JSON-able dict) and ``arrays`` ({name: array})."""
    state = dict(state, format=CHECKPOINT_NAME, format_version=CHECKPOINT_VERSION)
    return _write_npz(path, arrays, STATE_KEY, state)


def read_checkpoint(path):
    """``(state, {name: array})`` from a file written by :func:`write_checkpoint`."""
    state, arrays = _read_npz(path, "checkpoint", STATE_KEY, "state")
    _check_format(path, state, CHECKPOINT_NAME, CHECKPOINT_VERSION, "a training checkpoint")
    return state, arrays

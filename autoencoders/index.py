"""A persistent index of autoencoder codes for similar-image search.

>>> index = CodeIndex(dim=128, kind="hnsw")          # doctest: +SKIP
>>> index.add(model.transform(X), paths)             # doctest: +SKIP
>>> distances, ids, paths = index.search(model.transform(Q), k=4)   # doctest: +SKIP
>>> index.save("runs/index", metadata={"model_sha256": digest})      # doctest: +SKIP
>>> index = CodeIndex.load("runs/index", expect={"model_sha256": digest})  # doctest: +SKIP

**Similarity.**  Cosine similarity, as in :func:`autoencoders.metrics.nearest_neighbors`
(what the ``retrieve`` experiment measures): codes and queries are L2-normalised
when they come in (in float64, then stored as float32) and compared by inner
product.  ``search`` reports *distances* ``1 - cosine similarity``, ascending,
clipped to [0, 2].  A code or query whose L2 norm is below ``1e-12`` (all zeros,
say) has no direction: it is stored as the zero vector, whose similarity with
everything is 0 (distance 1), as ``metrics.nearest_neighbors`` treats zero vectors.

**Kinds.**

* ``"exact"``: every code is compared with the query (brute force), in FAISS
  (``IndexFlatIP``) or NumPy (a matrix product); both give the same answer.
* ``"hnsw"``: FAISS ``IndexHNSWFlat`` with the inner-product metric, an
  approximate graph search.  Parameters ``M`` (links per node, default 48),
  ``ef_construction`` (default 200) and ``ef_search`` (default 2048); see
  :data:`DEFAULT_PARAMS` for why, and lower ``ef_search`` for real codes.
  ``ef_search`` can be changed at any time with
  :meth:`CodeIndex.set_search_params`; the others are fixed once built.
* ``"ivf"``: FAISS ``IndexIVFFlat`` with the inner-product metric: the codes are
  split into ``nlist`` clusters (default 1024) and a query looks into the
  ``nprobe`` nearest (default 32).  The clusters are learned (k-means) from the
  codes of the **first** ``add``, which must hold at least ``nlist`` codes
  (FAISS warns below ``39 * nlist``, the size it recommends); later ``add``
  calls file their codes into those clusters without learning again, so the
  first batch should look like the rest.
* ``"pq"``: FAISS ``IndexPQFastScan`` with the inner-product metric: each code
  is compressed to ``M`` sub-vectors of 4 bits (``M / 2`` bytes a code; ``M``
  must divide ``dim``; default ``dim / 2`` for an even ``dim``, else ``dim``),
  every compressed code is scanned (fast SIMD table look-ups), and the
  ``rerank`` best (default 300) are re-scored exactly, in float64, from the
  index's own copy of the codes.  The sub-quantizers are learned from the
  codes of the **first** ``add`` (at least 16 codes; FAISS warns below 624).
  The kind for large collections of codes without much structure: on a
  million random 128-d codes it reached recall@10 0.97 in a tenth to a
  twelfth of exact search's time (see :data:`DEFAULT_PARAMS`).  ``rerank`` can be changed at any
  time with :meth:`CodeIndex.set_search_params`.

Memory: the index keeps its own float32 copy of the codes (``4 * dim`` bytes a
code; it re-scores candidates and is what ``save`` writes); FAISS holds another
copy, plus for hnsw about ``8 * M`` bytes a code of graph links, for ivf 8 bytes
a code of ids.  At a million 128-d codes: exact NumPy 0.5 GB, FAISS exact 1 GB,
hnsw (M=48) 1.4 GB, ivf 1 GB, pq (M=64) 0.55 GB.

**Engines.**  ``engine="faiss"`` needs FAISS (``pip install
'minigrad-autoencoders[index]'``); ``"numpy"`` runs the exact kind only;
``"auto"`` (the default) takes FAISS when it can be imported and otherwise
falls back to the exact NumPy engine, saying so once per process with a
warning.  Asking for an approximate kind without FAISS raises ``ImportError``
naming the extra.  Importing this module (or ``autoencoders``) never imports
FAISS; creating or loading a FAISS-engine index does.

**Determinism.**  Whatever found the candidates (FAISS's float32 kernels, NumPy's
matrix product, a graph walk), their similarities are recomputed in float64 from
the stored codes, and the result is ordered by similarity, then by the lower
integer id.  The exact kind fetches more candidates than asked for and, when the
last of them might tie with (or beat) the k-th after rounding, fetches more
again, so FAISS exact and NumPy exact return the same ids and the same distances
(tested, also on data full of exact ties).  Integer ids are the order of
insertion: the first code added has id 0.

**Results.**  ``search(queries, k)`` returns a :class:`SearchResult`
``(distances, ids, paths)``: ``min(k, len(index))`` columns (``k`` larger than
the index is clipped to its size; an empty index is an error).  An approximate
kind can find fewer than that (IVF when the probed clusters hold too few codes):
the missing places have id ``-1``, path ``None`` and distance ``inf``, at the end
of the row.

**On disk.**  ``save(folder, metadata)`` writes into ``folder``:

* ``manifest.json``: ``format`` ("minigrad-code-index"), ``format_version``,
  ``dim``, ``kind``, ``params`` (the kind's parameters, engine-independent),
  ``count``, ``paths``, the caller's ``metadata`` (JSON), ``metric`` ("cosine"),
  ``generation``, and ``files``: for each data file its ``name``, size in
  ``bytes`` and ``sha256``;
* ``codes-<generation>.npy``: the L2-normalised codes, float32 (count, dim),
  read back with ``allow_pickle=False``;
* ``index-<generation>.faiss`` (hnsw and ivf only): the FAISS index
  (``faiss.write_index``; the exact kind rebuilds its ``IndexFlatIP`` from the codes).

Every file goes through :func:`autoencoders.files.atomic_write`; the data files
get a fresh random generation suffix and the manifest, written last, names them,
so a crash or an exception at any point of ``save`` leaves the index that was in
the folder loadable and unchanged.  The files of older generations are removed
after the new manifest is in place.  Two processes saving into one folder at the
same time are not supported.

``CodeIndex.load(folder, expect=None)`` checks everything before it trusts it:
the manifest's fields, each data file's size and SHA-256 against the manifest,
the ``.npy`` header (shape, dtype) against ``count`` and ``dim`` before the array
is read, and the FAISS index's type, metric, dimension and size after it is read.
A truncated or corrupt file raises ``ValueError`` naming it.  ``expect`` (a dict)
must agree with the saved metadata key by key (e.g. the SHA-256 of the model
file that made the codes), or ``ValueError`` names the key and both values.
The checksums catch truncation and corruption, not malice: a crafted manifest
can vouch for a crafted FAISS file, which FAISS's own (C++) reader then parses,
so load hnsw and ivf indexes only from sources you trust (the codes file and the
manifest are read by checked Python code, never unpickled).  A ``load`` running
while another process saves into the same folder may find the files of the
manifest it read already removed (``FileNotFoundError``): load again.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import numbers
import os
import re
import secrets
import warnings
from typing import NamedTuple

import numpy as np

from .files import _jsonable, atomic_write, file_digest, read_npy_header

__all__ = ["CodeIndex", "SearchResult", "KINDS", "ENGINES", "DEFAULT_PARAMS",
           "INDEX_FORMAT", "INDEX_FORMAT_VERSION", "INSTALL_HINT"]

INDEX_FORMAT = "minigrad-code-index"
#: Version of the folder layout written by :meth:`CodeIndex.save`.
INDEX_FORMAT_VERSION = 1
KINDS = ("exact", "hnsw", "ivf", "pq")
ENGINES = ("auto", "faiss", "numpy")
INSTALL_HINT = "pip install 'minigrad-autoencoders[index]'"

#: Each kind's parameters and their defaults.
#:
#: HNSW: the defaults reach recall@10 >= 0.95 on a million random 128-d codes
#: (standard Gaussian rows, L2-normalised), the hardest case there is: with no
#: structure at all, a code's nearest neighbours are barely nearer than the rest.
#: Measured there (FAISS 1.15, 1,000 queries): M=48, ef_construction=200 give
#: recall@10 0.74 / 0.90 / 0.958 / 0.979 / 0.994 at ef_search 512 / 1024 / 1536 /
#: 2048 / 3072 (M=32 needs about twice the ef_search for the same recall, which
#: costs more); 2048 leaves a margin.  Codes of a real model lie near a
#: low-dimensional surface and need far less: on 128-d codes of Fashion-MNIST
#: (PCA, 60,000 items) recall@10 is 0.998 at ef_search=64 -- lower it with
#: ``set_search_params(ef_search=...)`` (search time grows about linearly with it).
#:
#: IVF: ``nlist=1024`` clusters (about sqrt(n) for a million codes; the first add
#: needs at least ``nlist`` codes), ``nprobe=32`` of them searched per query:
#: recall@10 0.998 on those Fashion-MNIST codes (0.992 at 16).  On structureless
#: random codes IVF is no faster than exact search at high recall: at a million,
#: recall@10 is 0.38 at nprobe=64 and 0.85 at 384 of 1024 lists.
#:
#: PQ: ``M`` None means ``dim // 2`` for an even ``dim`` (two dimensions a
#: sub-quantizer), else ``dim``; ``rerank=300`` candidates re-scored exactly.  On
#: a million random 128-d codes (benchmarks/index_search.py, FAISS 1.15, 1,000
#: queries one at a time, two runs): recall@10 0.865 / 0.944 / 0.970 / 0.988 /
#: 0.998 at rerank 100 / 200 / 300 / 500 / 1000 (M=64); at 300, 1.02-1.03 ms a
#: query against exact NumPy's 10.4-12.5 ms (10.1x-12.3x), at 500 1.13-1.16 ms
#: (9.0x-11.1x); the scan itself is ~0.77 ms of it.  M=32 (8 bytes a code)
#: reached only 0.87 at rerank 2000 (prototype).
DEFAULT_PARAMS = {
    "exact": {},
    "hnsw": {"M": 48, "ef_construction": 200, "ef_search": 2048},
    "ivf": {"nlist": 1024, "nprobe": 32},
    "pq": {"M": None, "rerank": 300},
}
#: Parameters that only steer the search (changeable after building).
SEARCH_PARAMS = {"hnsw": ("ef_search",), "ivf": ("nprobe",), "pq": ("rerank",)}
_PQ_BITS = 4                 # bits a sub-vector: FAISS's fast-scan kernels need 4
_PQ_MIN_TRAIN = 1 << _PQ_BITS  # k-means needs at least one code a centroid

_ZERO_NORM = 1e-12           # codes with a smaller L2 norm are stored as zero vectors
_MANIFEST = "manifest.json"
#: what save removes once its manifest is in place: data files it does not name, and
#: temporary files a crash left behind
_FILE_PATTERN = re.compile(r"^(?:(?:codes|index)-[0-9a-f]{16}\.(?:npy|faiss)"
                           r"|\.(?:(?:codes|index)-[0-9a-f]{16}\.(?:npy|faiss)|manifest\.json)"
                           r"\.[^.]+\.tmp)$")
_NAMES = {"codes": re.compile(r"^codes-[0-9a-f]{16}\.npy$"),
          "faiss": re.compile(r"^index-[0-9a-f]{16}\.faiss$")}
_MAX_DIM = 1 << 20           # FAISS's own limit on a vector's dimension
_CHUNK_ELEMENTS = 1 << 24    # float32 scores per block in the NumPy engine (64 MiB)
_warned_fallback = False


class SearchResult(NamedTuple):
    """What :meth:`CodeIndex.search` returns, one row per query, nearest first.

    ``distances``: float64 (n_queries, k'), ``1 - cosine similarity`` ascending;
    ``ids``: int64 (n_queries, k'), the integer ids (insertion order);
    ``paths``: a list of n_queries lists of k' strings, the ids' paths.
    ``k' = min(k, len(index))``; places an approximate search left empty hold
    distance ``inf``, id ``-1`` and path ``None``.
    """
    distances: np.ndarray
    ids: np.ndarray
    paths: list


def _import_faiss():
    """The ``faiss`` module, or ImportError with the extra to install."""
    try:
        return importlib.import_module("faiss")
    except ImportError as error:
        raise ImportError(f"FAISS is not installed ({error}): {INSTALL_HINT}") from None


def _resolve_engine(engine, kind):
    """("faiss" or "numpy", the faiss module or None) for ``engine`` and ``kind``."""
    global _warned_fallback
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}; expected one of {', '.join(map(repr, ENGINES))}")
    if engine == "numpy":
        if kind != "exact":
            raise ValueError(f"the numpy engine supports only kind='exact', not kind={kind!r}; "
                             f"use engine='faiss' ({INSTALL_HINT})")
        return "numpy", None
    try:
        faiss = _import_faiss()
    except ImportError:
        if engine == "faiss":
            raise ImportError(f"engine='faiss' needs FAISS, which is not installed: "
                              f"{INSTALL_HINT}") from None
        if kind != "exact":
            raise ImportError(f"kind={kind!r} needs FAISS, which is not installed: {INSTALL_HINT} "
                              f"(kind='exact' works without it, on the NumPy engine)") from None
        if not _warned_fallback:
            _warned_fallback = True
            warnings.warn("FAISS is not installed: CodeIndex falls back to the exact NumPy "
                          "engine (brute-force search; same results, slower on large indexes). "
                          f"For FAISS: {INSTALL_HINT}", UserWarning, stacklevel=3)
        return "numpy", None
    return "faiss", faiss


def _check_params(kind, params, dim):
    """The kind's full parameter dict for codes of size ``dim``: the defaults
    updated by ``params``, checked."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; expected one of {', '.join(map(repr, KINDS))}")
    defaults = DEFAULT_PARAMS[kind]
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        allowed = ", ".join(defaults) if defaults else "none"
        raise ValueError(f"kind={kind!r} takes no parameter {', '.join(unknown)} "
                         f"(its parameters: {allowed})")
    full = dict(defaults)
    for name, value in params.items():
        if value is None and defaults[name] is None:  # "the default for this dim"
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{kind} parameter {name} must be a positive integer, got {value!r}")
        full[name] = int(value)
    if kind == "hnsw" and full["M"] < 2:
        raise ValueError(f"hnsw parameter M must be at least 2, got {full['M']}")
    if kind == "pq":
        if full["M"] is None:
            full["M"] = dim // 2 if dim % 2 == 0 else dim
        if dim % full["M"]:
            raise ValueError(f"pq parameter M={full['M']} must divide the code size dim={dim} "
                             f"(each of the M sub-quantizers takes dim / M dimensions)")
    return full


def _as_matrix(name, a, dim):
    """``a`` as a finite float64 (n, dim) array, or an error naming ``name``."""
    a = np.asarray(a)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers (a float array), got dtype {a.dtype}")
    if a.ndim != 2 or a.shape[1] != dim:
        raise ValueError(f"{name} has shape {a.shape}; expected (n, {dim}): one row of {dim} "
                         f"numbers per code")
    a = a.astype(np.float64, copy=False)
    finite = np.isfinite(a).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise ValueError(f"{name} (shape {a.shape}) holds NaN or infinite values in "
                         f"{len(rows)} row(s), first row {rows[0]}; expected finite numbers")
    return a


def _normalize(a, chunk=65536):
    """Rows of float64 ``a`` scaled to unit L2 norm, as float32; rows with a norm
    below 1e-12 become zero vectors.  Computed in float64 after dividing by the
    row's largest magnitude, so huge and tiny values neither overflow nor underflow."""
    out = np.empty(a.shape, dtype=np.float32)
    for start in range(0, len(a), chunk):
        x = a[start:start + chunk]
        peak = np.abs(x).max(axis=1, keepdims=True)
        scaled = x / np.where(peak > 0, peak, 1.0)          # largest magnitude 1 (or all 0)
        scaled_norm = np.linalg.norm(scaled, axis=1, keepdims=True)
        unit = scaled / np.where(scaled_norm > 0, scaled_norm, 1.0)
        out[start:start + chunk] = np.where(scaled_norm * peak >= _ZERO_NORM, unit, 0.0)
    return out


def _as_paths(paths, n):
    if isinstance(paths, (str, bytes)) or not hasattr(paths, "__len__"):
        raise TypeError(f"paths must be a list of {n} strings, got {type(paths).__name__}")
    if len(paths) != n:
        raise ValueError(f"paths has {len(paths)} entries but codes has {n} rows; expected "
                         f"one path per code")
    out = []
    for i, p in enumerate(paths):
        if not isinstance(p, str):
            raise TypeError(f"paths[{i}] is a {type(p).__name__}; expected a string")
        out.append(str(p))
    return out


def _positive_k(k):
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _rescore(queries64, codes32, ids):
    """float64 inner products of each query row with the codes ``ids`` (m, c).

    The same function for every engine and kind, summing each product in the same
    order whatever the shape (and in column blocks of bounded size), so equal
    candidates give equal scores bit for bit."""
    m, c = ids.shape
    out = np.empty((m, c))
    step = max(1, _CHUNK_ELEMENTS // (4 * max(m, 1) * queries64.shape[1]))
    for start in range(0, c, step):
        gathered = codes32[np.maximum(ids[:, start:start + step], 0)].astype(np.float64)
        out[:, start:start + step] = (gathered * queries64[:, None, :]).sum(axis=-1)
    return out


class CodeIndex:
    """An index of codes (one path each) searched by cosine similarity.

    ``CodeIndex(dim, kind="exact", engine="auto", **params)``: ``dim`` the code
    size; ``kind`` "exact", "hnsw" or "ivf"; ``engine`` "auto", "faiss" or
    "numpy"; ``params`` the kind's parameters (:data:`DEFAULT_PARAMS`).  See the
    module's docstring for the rules (normalisation, zero codes, ties, files).
    """

    def __init__(self, dim, kind="exact", engine="auto", **params):
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or \
                not 1 <= dim <= _MAX_DIM:
            raise ValueError(f"dim must be an integer in 1..{_MAX_DIM}, got {dim!r}")
        self.dim = int(dim)
        self.params = _check_params(kind, params, self.dim)
        self.kind = kind
        self.engine, self._faiss_module = _resolve_engine(engine, kind)
        self._buffer = np.empty((0, self.dim), dtype=np.float32)
        self._count = 0
        self._paths = []
        self._quantizer = None
        #: the metadata saved with the index (set by ``load`` and ``save``)
        self.metadata = {}
        self._faiss = self._new_faiss() if self._faiss_module is not None else None

    # -- the FAISS structure --------------------------------------------------------

    def _new_faiss(self):
        faiss, p = self._faiss_module, self.params
        if self.kind == "exact":
            return faiss.IndexFlatIP(self.dim)
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, p["M"], faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = p["ef_construction"]
            index.hnsw.efSearch = p["ef_search"]
            return index
        if self.kind == "pq":
            return faiss.IndexPQFastScan(self.dim, p["M"], _PQ_BITS, faiss.METRIC_INNER_PRODUCT)
        self._quantizer = faiss.IndexFlatIP(self.dim)  # the IVF index does not own it
        index = faiss.IndexIVFFlat(self._quantizer, self.dim, p["nlist"],
                                   faiss.METRIC_INNER_PRODUCT)
        index.nprobe = min(p["nprobe"], p["nlist"])
        return index

    def set_search_params(self, **params):
        """Change the parameters that only steer the search: ``ef_search`` (hnsw),
        ``nprobe`` (ivf), ``rerank`` (pq).  Returns ``self``."""
        allowed = SEARCH_PARAMS.get(self.kind, ())
        wrong = sorted(set(params) - set(allowed))
        if wrong:
            raise ValueError(f"kind={self.kind!r}: {', '.join(wrong)} cannot be changed after "
                             f"building (search parameters: {', '.join(allowed) or 'none'})")
        self.params = _check_params(self.kind, {**self.params, **params}, self.dim)
        if self._faiss is not None:
            if self.kind == "hnsw":
                self._faiss.hnsw.efSearch = self.params["ef_search"]
            elif self.kind == "ivf":
                self._faiss.nprobe = min(self.params["nprobe"], self.params["nlist"])
        return self

    # -- contents -------------------------------------------------------------------

    def __len__(self):
        return self._count

    @property
    def count(self):
        """How many codes the index holds."""
        return self._count

    @property
    def paths(self):
        """The paths, in id order (a copy)."""
        return list(self._paths)

    @property
    def codes(self):
        """The stored L2-normalised float32 codes (count, dim), in id order (read-only view)."""
        view = self._buffer[:self._count]
        view.flags.writeable = False
        return view

    @property
    def nbytes(self):
        """Bytes the index holds: its codes, plus the FAISS structure (its serialised
        size, which FAISS also keeps in memory: vectors, graph links or lists)."""
        total = self._count * self.dim * 4
        if self._faiss is not None:
            counter = _Counter()
            self._faiss_module.write_index(self._faiss,
                                           self._faiss_module.PyCallbackIOWriter(counter.write))
            total += counter.size
        return total

    def __repr__(self):
        params = "".join(f", {k}={v}" for k, v in self.params.items())
        return (f"CodeIndex(dim={self.dim}, kind={self.kind!r}, engine={self.engine!r}{params}; "
                f"{self._count} codes)")

    def add(self, codes, paths):
        """Add ``codes`` (n, dim), finite numbers, with ``paths`` (n strings).

        Their ids are ``len(index) .. len(index) + n - 1`` (returned, int64).  The
        first add to an "ivf" index learns its clusters and needs at least ``nlist``
        codes; to a "pq" index, its sub-quantizers, from at least 16 codes.  Nothing
        is added when an argument is wrong."""
        codes = _as_matrix("codes", codes, self.dim)
        paths = _as_paths(paths, len(codes))
        return self._add_normalized(_normalize(codes), paths)

    def _add_normalized(self, unit, paths):
        n = len(unit)
        if self._faiss is not None and n:
            if not self._faiss.is_trained:  # ivf and pq learn from their first add
                need, what = ((self.params["nlist"], f"its {self.params['nlist']} clusters")
                              if self.kind == "ivf" else (_PQ_MIN_TRAIN, "its sub-quantizers"))
                if n < need:
                    hint = ", or pass a smaller nlist" if self.kind == "ivf" else ""
                    raise ValueError(f"the first add to an {self.kind} index learns {what} and "
                                     f"needs at least {'nlist=' * (self.kind == 'ivf')}{need} "
                                     f"codes (FAISS recommends {39 * need}); got {n}: add more "
                                     f"at once{hint}")
                self._faiss.train(unit)
            self._faiss.add(unit)
        self._append(unit)
        self._paths.extend(paths)
        return np.arange(self._count - n, self._count, dtype=np.int64)

    def _append(self, unit):
        need = self._count + len(unit)
        if need > len(self._buffer):
            grown = np.empty((max(need, len(self._buffer) * 3 // 2, 1024), self.dim), np.float32)
            grown[:self._count] = self._buffer[:self._count]
            self._buffer = grown
        self._buffer[self._count:need] = unit
        self._count = need

    # -- search ---------------------------------------------------------------------

    def search(self, queries, k=4):
        """The ``k`` codes nearest each query by cosine similarity: a
        :class:`SearchResult` ``(distances, ids, paths)`` with ``min(k, len(self))``
        columns, nearest first, ties to the lower id."""
        queries = _as_matrix("queries", queries, self.dim)
        k = _positive_k(k)
        if self._count == 0:
            raise ValueError("search: the index is empty; add codes first")
        k = min(k, self._count)
        unit = _normalize(queries)
        unit64 = unit.astype(np.float64)
        m = len(unit)
        distances = np.empty((m, k), dtype=np.float64)
        ids = np.empty((m, k), dtype=np.int64)
        zero = ~unit.any(axis=1)
        # a zero query is at similarity 0 from every code: all tie, the lowest ids win
        distances[zero], ids[zero] = 1.0, np.arange(k)
        rows = np.flatnonzero(~zero)
        # rows per block: the NumPy engine holds (block, count) similarities at once
        width = self._count if self.engine == "numpy" else self._candidate_count(k)
        block = max(1, min(256, _CHUNK_ELEMENTS // width))
        for start in range(0, len(rows), block):
            r = rows[start:start + block]
            if self.kind == "exact":
                d, i = self._search_exact(unit[r], unit64[r], k)
            else:
                d, i = self._search_approximate(unit[r], unit64[r], k)
            distances[r], ids[r] = d, i
        paths = [[self._paths[j] if j >= 0 else None for j in row] for row in ids.tolist()]
        return SearchResult(distances, ids, paths)

    def _candidates(self, unit, kc):
        """(ids (m, kc), float32 similarities (m, kc)): the engine's top kc, any order."""
        if self._faiss is not None:
            sims, ids = self._faiss.search(np.ascontiguousarray(unit), kc)
            return ids.astype(np.int64, copy=False), sims
        sims = unit @ self._buffer[:self._count].T
        n = self._count
        if kc < n:
            part = np.argpartition(sims, n - kc, axis=1)[:, n - kc:]
        else:
            part = np.broadcast_to(np.arange(n), sims.shape).copy()
        return part, np.take_along_axis(sims, part, axis=1)

    def _search_exact(self, unit, unit64, k):
        """Exact top k: the engine's float32 top kc, checked to hold every code that
        could make the float64 top k, else fetched again with a larger kc."""
        n = self._count
        # for unit vectors, float32 similarities are within dim * 2^-24 of the float64
        # ones; twice that separates "certainly below the k-th" from "maybe in"
        margin = 4.0 * self.dim * 2.0 ** -24
        distances = np.empty((len(unit), k))
        ids = np.empty((len(unit), k), dtype=np.int64)
        pending = np.arange(len(unit))
        kc = min(n, k + max(k, 16))
        while len(pending):
            unsure = []
            step = max(1, _CHUNK_ELEMENTS // kc)
            for start in range(0, len(pending), step):
                rows = pending[start:start + step]
                cand, sims32 = self._candidates(unit[rows], kc)
                order = np.argsort(-sims32, axis=1, kind="stable")
                cand = np.take_along_axis(cand, order, axis=1)
                sims32 = np.take_along_axis(sims32, order, axis=1)
                floor = sims32[:, k - 1] - margin
                # every code that can be in the top k has float32 similarity >= floor;
                # the candidates hold them all when the last one is below it
                done = (sims32[:, -1] < floor) if kc < n else np.ones(len(rows), bool)
                if done.any():
                    keep = int((sims32[done] >= floor[done, None]).sum(axis=1).max())
                    d, i, _ = self._rank(unit64[rows[done]], cand[done, :max(keep, k)], k)
                    distances[rows[done]], ids[rows[done]] = d, i
                unsure.append(rows[~done])
            pending = np.concatenate(unsure)
            kc = min(n, 4 * kc)
        return distances, ids

    def _candidate_count(self, k):
        """How many candidates an approximate search re-scores for the top k."""
        if self.kind == "pq":  # the compressed scan's order is rough: re-rank many
            return min(self._count, max(k, self.params["rerank"]))
        return min(self._count, k + max(k, 16))

    def _search_approximate(self, unit, unit64, k):
        cand, _ = self._candidates(unit, self._candidate_count(k))
        d, i, _ = self._rank(unit64, cand, k)
        return d, i

    def _rank(self, unit64, cand, k):
        """Rescore candidates in float64 and keep the best k (similarity, then lower
        id); ``cand`` may hold -1 (nothing found).  Returns (distances, ids, the k-th
        similarity)."""
        missing = cand < 0
        sims = _rescore(unit64, self._buffer, cand)
        sims[missing] = -np.inf
        order = np.lexsort((np.where(missing, np.iinfo(np.int64).max, cand), -sims), axis=-1)[:, :k]
        sims = np.take_along_axis(sims, order, axis=1)
        ids = np.take_along_axis(cand, order, axis=1)
        if ids.shape[1] < k:  # fewer candidates than k (cannot happen for exact)
            pad = k - ids.shape[1]
            sims = np.pad(sims, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        found = np.isfinite(sims)
        ids = np.where(found, ids, -1)
        distances = np.where(found, np.clip(1.0 - sims, 0.0, 2.0), np.inf)
        return distances, ids, sims[:, -1]

    # -- files ----------------------------------------------------------------------

    def save(self, folder, metadata=None):
        """Write the index into ``folder`` (created if need be), atomically; returns
        the manifest's path.  ``metadata``: a JSON-able dict kept in the manifest
        (the command line stores the model file's SHA-256, input shape and code
        size there), checked by ``load(..., expect=...)``; None keeps
        ``self.metadata`` (what ``load`` read, or ``{}``)."""
        metadata = _json_dict("metadata", self.metadata if metadata is None else metadata)
        folder = os.fspath(folder)
        os.makedirs(folder, exist_ok=True)
        generation = secrets.token_hex(8)
        manifest_path = os.path.join(folder, _MANIFEST)
        previous = _identity(manifest_path)
        written = []
        try:
            files = {}
            codes_name = f"codes-{generation}.npy"
            written.append(codes_name)
            files["codes"] = _write_codes(os.path.join(folder, codes_name),
                                          self._buffer[:self._count])
            files["codes"]["name"] = codes_name
            if self.kind != "exact":
                faiss_name = f"index-{generation}.faiss"
                written.append(faiss_name)
                files["faiss"] = _write_faiss(self._faiss_module, self._faiss,
                                              os.path.join(folder, faiss_name))
                files["faiss"]["name"] = faiss_name
            _sync_folder(folder)
            manifest = {"format": INDEX_FORMAT, "format_version": INDEX_FORMAT_VERSION,
                        "dim": self.dim, "kind": self.kind, "params": dict(self.params),
                        "metric": "cosine", "count": self._count, "generation": generation,
                        "files": files, "metadata": metadata, "paths": self._paths}
            path = _write_manifest(manifest_path, manifest)
        except BaseException:
            # unless the new manifest made it (interrupted just after its rename), the
            # new files are orphans: the old manifest and its files are untouched
            if _identity(manifest_path) == previous:
                for name in written:
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(folder, name))
            raise
        self.metadata = metadata
        _sync_folder(folder)
        keep = {f["name"] for f in files.values()}
        for name in os.listdir(folder):
            if _FILE_PATTERN.match(name) and name not in keep:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))
        return path

    @classmethod
    def load(cls, folder, expect=None, engine="auto", kind=None):
        """The index saved in ``folder``.

        ``expect``: a dict each of whose keys must equal the saved metadata's
        (``ValueError`` names the key and both values otherwise), checked before
        the data files are read.  ``engine`` as for the constructor.  ``kind``:
        None keeps the saved kind; another kind is rebuilt from the saved codes with
        its default parameters (``kind="exact"`` searches a saved hnsw or ivf index
        without FAISS)."""
        folder = os.fspath(folder)
        manifest_path = os.path.join(folder, _MANIFEST)
        if not os.path.isfile(manifest_path):
            raise FileNotFoundError(f"no code index in {folder}: {manifest_path} is missing")
        manifest = _read_manifest(manifest_path)
        if expect is not None:
            _check_expect(manifest_path, manifest["metadata"], expect)
        saved_kind = manifest["kind"]
        kind = saved_kind if kind is None else kind
        if kind == saved_kind:
            index = cls(manifest["dim"], kind, engine, **manifest["params"])
        else:
            index = cls(manifest["dim"], kind, engine)
        count, dim = manifest["count"], manifest["dim"]
        entry = manifest["files"]["codes"]
        codes = _read_codes(os.path.join(folder, entry["name"]), entry, count, dim)
        if index.kind != saved_kind or index.kind == "exact":
            index._add_normalized(codes, manifest["paths"])  # rebuilds FAISS from the codes
        else:
            entry = manifest["files"]["faiss"]
            index._faiss = _read_faiss(index._faiss_module, os.path.join(folder, entry["name"]),
                                       entry, manifest)
            index._quantizer = None  # the loaded IVF index owns its quantizer
            index.set_search_params(**{p: index.params[p] for p in SEARCH_PARAMS[index.kind]})
            index._append(codes)
            index._paths = list(manifest["paths"])
        index.metadata = manifest["metadata"]
        return index


# -- writing --------------------------------------------------------------------------

class _Counter:
    """A write() that counts bytes."""

    def __init__(self):
        self.size = 0

    def write(self, data):
        n = memoryview(data).nbytes
        self.size += n
        return n


class _HashingWriter:
    """Writes to ``f`` and hashes (SHA-256) and counts what passes."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data):
        view = memoryview(data).cast("B")
        self.f.write(view)
        self.sha.update(view)
        self.size += view.nbytes
        return view.nbytes

    def entry(self):
        return {"bytes": self.size, "sha256": self.sha.hexdigest()}


def _write_codes(path, codes):
    with atomic_write(path) as f:
        writer = _HashingWriter(f)
        np.lib.format.write_array(writer, np.ascontiguousarray(codes, dtype="<f4"),
                                  version=(1, 0), allow_pickle=False)
    return writer.entry()


def _write_faiss(faiss, index, path):
    with atomic_write(path) as f:
        writer = _HashingWriter(f)
        faiss.write_index(index, faiss.PyCallbackIOWriter(writer.write))
    return writer.entry()


def _write_manifest(path, manifest):
    text = json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False) + "\n"
    with atomic_write(path) as f:
        f.write(text.encode("ascii"))  # json.dumps escapes everything else
    return path


def _identity(path):
    """What tells one file at ``path`` from its replacement (None when absent)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _sync_folder(folder):
    """Flush the folder's entries (the renames) to disk, where the OS allows it."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _json_dict(name, value):
    """``value`` (None or a dict with string keys) as it reads back from JSON."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"{name} must be a dict with string keys, got {type(value).__name__}")
    try:
        return json.loads(json.dumps(value, default=_jsonable, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be JSON-serialisable (finite numbers, strings, lists, "
                         f"dicts): {e}") from None


# -- reading --------------------------------------------------------------------------

def _bad(path, why):
    return ValueError(f"{path}: {why}")


def _read_manifest(path):
    try:
        with open(path, "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a complete code-index manifest (truncated or "
                         f"corrupt?): {type(e).__name__}: {e}") from None
    if not isinstance(manifest, dict):
        raise _bad(path, "not a code-index manifest (not a JSON object)")
    if manifest.get("format") != INDEX_FORMAT:
        raise _bad(path, f"not a code-index manifest (format {manifest.get('format')!r}, "
                         f"expected {INDEX_FORMAT!r})")
    version = manifest.get("format_version")
    if not _is_int(version) or version < 1:
        raise _bad(path, f"bad format_version {version!r}")
    if version > INDEX_FORMAT_VERSION:
        raise _bad(path, f"written in code-index format version {version}; this version reads "
                         f"up to {INDEX_FORMAT_VERSION}; upgrade the package")
    dim, count, kind = manifest.get("dim"), manifest.get("count"), manifest.get("kind")
    if not _is_int(dim) or not 1 <= dim <= _MAX_DIM:
        raise _bad(path, f"bad dim {dim!r}")
    if not _is_int(count) or count < 0:
        raise _bad(path, f"bad count {count!r}")
    if kind not in KINDS:
        raise _bad(path, f"bad kind {kind!r}")
    params = manifest.get("params")
    if not isinstance(params, dict):
        raise _bad(path, f"bad params {params!r}")
    try:
        manifest["params"] = _check_params(kind, params, dim)
    except ValueError as e:
        raise _bad(path, f"bad params: {e}") from None
    paths = manifest.get("paths")
    if not isinstance(paths, list) or len(paths) != count or \
            not all(isinstance(p, str) for p in paths):
        raise _bad(path, f"paths must be a list of count={count} strings")
    if not isinstance(manifest.get("metadata"), dict):
        raise _bad(path, "metadata must be a JSON object")
    files = manifest.get("files")
    needed = ["codes"] + (["faiss"] if kind != "exact" else [])
    if not isinstance(files, dict) or any(name not in files for name in needed):
        raise _bad(path, f"files must name {' and '.join(needed)}")
    for name in needed:
        entry = files[name]
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or \
                not _NAMES[name].match(entry["name"]) or not _is_int(entry.get("bytes")) or \
                entry["bytes"] < 0 or not isinstance(entry.get("sha256"), str) or \
                not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]):
            raise _bad(path, f"bad files entry for {name}: {entry!r}")
    return manifest


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _check_expect(path, metadata, expect):
    expect = _json_dict("expect", expect)
    for key, wanted in expect.items():
        if key not in metadata:
            raise ValueError(f"{path}: expected {key}={wanted!r}, but the index's metadata has "
                             f"no {key!r}")
        if metadata[key] != wanted:
            raise ValueError(f"{path}: metadata {key} is {metadata[key]!r} but {wanted!r} was "
                             f"expected (an index built from other codes?)")


def _check_file(path, entry):
    """The file exists and has the manifest's size; then its SHA-256 matches."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing (named by the index's manifest)")
    size = os.path.getsize(path)
    if size != entry["bytes"]:
        raise _bad(path, f"{size} bytes where the manifest says {entry['bytes']} (truncated or "
                         f"corrupt?)")
    if file_digest(path) != entry["sha256"]:
        raise _bad(path, "its SHA-256 does not match the manifest's (corrupt?)")


def _read_codes(path, entry, count, dim):
    """The (count, dim) float32 codes from ``path``, header checked before the data
    is read, content checked against the manifest's size and SHA-256."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing (named by the index's manifest)")
    try:
        with open(path, "rb") as f:
            shape, fortran, dtype = read_npy_header(f)
            offset = f.tell()
    except (ValueError, EOFError, OSError, SyntaxError) as e:
        raise _bad(path, f"not a complete .npy file (truncated or corrupt?): {e}") from None
    if shape != (count, dim) or fortran or dtype != np.dtype("<f4"):
        raise _bad(path, f"holds {dtype} {shape}{' (Fortran order)' if fortran else ''}; the "
                         f"manifest expects float32 ({count}, {dim})")
    size = os.path.getsize(path)
    if size != offset + count * dim * 4:
        raise _bad(path, f"{size} bytes; a ({count}, {dim}) float32 array needs "
                         f"{offset + count * dim * 4} (truncated?)")
    _check_file(path, entry)
    try:
        codes = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        raise _bad(path, f"not a complete .npy file (truncated or corrupt?): {e}") from None
    if codes.shape != (count, dim) or codes.dtype != np.dtype("<f4"):
        raise _bad(path, f"changed while it was read ({codes.dtype} {codes.shape})")
    codes = codes.astype(np.float32, copy=False)  # native byte order
    norms = np.linalg.norm(codes.astype(np.float64), axis=1) if count else np.zeros(0)
    if not np.all(np.isfinite(norms)) or not np.all((np.abs(norms - 1) < 1e-4) | (norms == 0)):
        raise _bad(path, "holds codes that are not L2-normalised (or NaN)")
    return codes


def _read_faiss(faiss, path, entry, manifest):
    _check_file(path, entry)
    try:
        index = faiss.read_index(path)
    except (RuntimeError, MemoryError) as e:
        raise _bad(path, f"FAISS cannot read it (truncated or corrupt?): "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    kind, dim, count, params = (manifest["kind"], manifest["dim"], manifest["count"],
                                manifest["params"])
    wanted = {"hnsw": faiss.IndexHNSWFlat, "ivf": faiss.IndexIVFFlat,
              "pq": faiss.IndexPQFastScan}[kind]
    problems = []
    if not isinstance(index, wanted):
        problems.append(f"a {type(index).__name__}, not an {wanted.__name__}")
    else:
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            problems.append("not the inner-product metric")
        if index.d != dim:
            problems.append(f"dimension {index.d}, not {dim}")
        if index.ntotal != count:
            problems.append(f"{index.ntotal} vectors, not {count}")
        if kind == "ivf" and index.nlist != params["nlist"]:
            problems.append(f"nlist {index.nlist}, not {params['nlist']}")
        if kind in ("ivf", "pq") and count and not index.is_trained:
            problems.append("untrained, yet holding vectors")
        if kind == "pq" and (index.M, index.nbits) != (params["M"], _PQ_BITS):
            problems.append(f"M={index.M} of {index.nbits} bits, not M={params['M']} of "
                            f"{_PQ_BITS}")
        if kind == "hnsw" and index.hnsw.nb_neighbors(0) != 2 * params["M"]:
            problems.append(f"M {index.hnsw.nb_neighbors(0) // 2}, not {params['M']}")
    if problems:
        raise _bad(path, "the FAISS index does not match the manifest: " + "; ".join(problems))
    return index

"""The code index (autoencoders/index.py): every kind and engine adds, searches,
saves, loads and adds again; FAISS exact and NumPy exact agree to the id, ties
included; the approximate kinds find most true neighbours; bad arguments and
damaged files fail with errors that name them; an exception in the middle of
``save`` leaves the previous index as it was; and without FAISS the exact kind
still works (with a warning) while the others say what to install.

Tests that need FAISS skip when it is not installed."""
import importlib.util
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from autoencoders import index as index_module
from autoencoders import metrics
from autoencoders.index import CodeIndex, SearchResult

# without FAISS, engine="auto" says once that it falls back to NumPy; the test that
# checks that warning records it whatever the filters
pytestmark = pytest.mark.filterwarnings("ignore:FAISS is not installed:UserWarning")

HAS_FAISS = importlib.util.find_spec("faiss") is not None
NO_FAISS = "FAISS (the 'index' extra: pip install 'minigrad-autoencoders[index]') is not installed"

#: (kind, engine, params): every combination the module offers
COMBINATIONS = [("exact", "numpy", {}), ("exact", "faiss", {}), ("hnsw", "faiss", {}),
                ("ivf", "faiss", {"nlist": 16, "nprobe": 16}), ("pq", "faiss", {})]


def needs_faiss():
    return pytest.importorskip("faiss", reason=NO_FAISS)


def unit_gaussian(n, dim, seed):
    x = np.random.default_rng(seed).standard_normal((n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def names(start, n):
    return [f"img/{i:05d}.png" for i in range(start, start + n)]


def brute_force(items, queries, k):
    """Reference: ids by float64 cosine similarity, ties to the lower id."""
    items = items / np.maximum(np.linalg.norm(items, axis=1, keepdims=True), 1e-300)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = queries @ items.T
    ids = np.arange(len(items))
    return np.array([np.lexsort((ids, -row))[:k] for row in sims])


def recall(found, truth):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)])


def make(kind, engine, params, dim=12):
    if engine == "faiss":
        needs_faiss()
    return CodeIndex(dim, kind=kind, engine=engine, **params)


def assert_same_index(a, b):
    assert (a.dim, a.kind, a.params, len(a), a.paths) == (b.dim, b.kind, b.params, len(b), b.paths)
    np.testing.assert_array_equal(a.codes, b.codes)


# -- round trip -------------------------------------------------------------------------

@pytest.mark.parametrize("kind,engine,params", COMBINATIONS,
                         ids=[f"{k}-{e}" for k, e, _ in COMBINATIONS])
def test_add_search_save_load_add_more(tmp_path, kind, engine, params):
    index = make(kind, engine, params)
    data = unit_gaussian(700, 12, seed=1) * 3.0  # any scale: codes are normalised
    ids = index.add(data[:500], names(0, 500))
    np.testing.assert_array_equal(ids, np.arange(500))
    np.testing.assert_array_equal(index.add(data[500:600], names(500, 100)), np.arange(500, 600))
    assert len(index) == 600 and index.engine == engine
    np.testing.assert_allclose(np.linalg.norm(index.codes, axis=1), 1.0, rtol=1e-6)

    queries = data[:40]
    result = index.search(queries, k=5)
    assert isinstance(result, SearchResult)
    distances, ids, paths = result
    assert distances.shape == ids.shape == (40, 5) and len(paths) == 40
    np.testing.assert_array_equal(ids[:, 0], np.arange(40))  # each code finds itself first
    np.testing.assert_allclose(distances[:, 0], 0.0, atol=1e-6)
    assert np.all(np.diff(distances, axis=1) >= 0)
    assert paths[3] == [f"img/{i:05d}.png" for i in ids[3]]

    folder = tmp_path / "index"
    manifest_path = index.save(folder, metadata={"model_sha256": "ab" * 32, "code_size": 12})
    manifest = json.loads(open(manifest_path).read())
    assert manifest["format"] == "minigrad-code-index" and manifest["format_version"] == 1
    assert (manifest["dim"], manifest["kind"], manifest["count"]) == (12, kind, 600)
    assert manifest["params"] == index.params and manifest["paths"] == index.paths
    assert manifest["metadata"] == {"model_sha256": "ab" * 32, "code_size": 12}
    expected_files = {"manifest.json", manifest["files"]["codes"]["name"]}
    if kind != "exact":
        expected_files.add(manifest["files"]["faiss"]["name"])
    assert set(os.listdir(folder)) == expected_files
    codes_file = folder / manifest["files"]["codes"]["name"]
    assert np.load(codes_file, allow_pickle=False).shape == (600, 12)

    loaded = CodeIndex.load(folder, expect={"code_size": 12}, engine=engine)
    assert_same_index(index, loaded)
    assert loaded.metadata["model_sha256"] == "ab" * 32
    again = loaded.search(queries, k=5)
    np.testing.assert_array_equal(again.ids, ids)
    np.testing.assert_array_equal(again.distances, distances)

    # add more after loading; the new codes are found; save over the old generation
    loaded.add(data[600:], names(600, 100))
    result = loaded.search(data[650:660], k=3)
    np.testing.assert_array_equal(result.ids[:, 0], np.arange(650, 660))
    loaded.save(folder)  # metadata=None keeps what was loaded
    reloaded = CodeIndex.load(folder, engine=engine)
    assert_same_index(loaded, reloaded)
    assert reloaded.metadata == loaded.metadata
    assert len(os.listdir(folder)) == len(expected_files)  # the old generation is gone
    np.testing.assert_array_equal(reloaded.search(data[650:660], k=3).ids, result.ids)


def test_k_is_clipped_to_the_index_size_and_an_empty_index_refuses():
    index = CodeIndex(4, engine="numpy")
    with pytest.raises(ValueError, match="empty"):
        index.search(np.ones((1, 4)), k=3)
    index.add(np.eye(4)[:3], ["a", "b", "c"])
    result = index.search(np.array([[1.0, 0.1, 0, 0]]), k=10)
    assert result.ids.shape == (1, 3) and result.paths == [["a", "b", "c"]]


def test_zero_codes_have_similarity_zero_and_zero_queries_return_the_lowest_ids():
    index = CodeIndex(3, engine="numpy")
    index.add(np.array([[0.0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1e-300, 0]]), list("abcd"))
    np.testing.assert_array_equal(index.codes[[0, 3]], 0.0)
    result = index.search(np.array([[1.0, 0, 0], [0, 0, 0]]), k=4)
    np.testing.assert_array_equal(result.ids, [[1, 0, 3, 2], [0, 1, 2, 3]])
    np.testing.assert_allclose(result.distances, [[0, 1, 1, 2], [1, 1, 1, 1]])


def test_results_match_the_retrieve_experiments_cosine_neighbours():
    items, queries = unit_gaussian(3000, 16, seed=2), unit_gaussian(100, 16, seed=3)
    index = CodeIndex(16, engine="numpy")
    index.add(items * 5, names(0, 3000))
    np.testing.assert_array_equal(index.search(queries, k=10).ids,
                                  metrics.nearest_neighbors(queries, items, 10, metric="cosine"))


# -- FAISS exact == NumPy exact ---------------------------------------------------------

def test_faiss_exact_and_numpy_exact_agree_on_random_data():
    needs_faiss()
    items, queries = unit_gaussian(5000, 24, seed=4), unit_gaussian(300, 24, seed=5)
    results = {}
    for engine in ("numpy", "faiss"):
        index = CodeIndex(24, engine=engine)
        index.add(items, names(0, 5000))
        results[engine] = [index.search(queries, k=10), index.search(queries[:1], k=10)]
    for numpy_result, faiss_result in zip(results["numpy"], results["faiss"]):
        np.testing.assert_array_equal(numpy_result.ids, faiss_result.ids)
        np.testing.assert_allclose(numpy_result.distances, faiss_result.distances, atol=1e-12)
    np.testing.assert_array_equal(results["numpy"][0].ids, brute_force(items, queries, 10))


def test_faiss_exact_and_numpy_exact_break_ties_by_the_lower_id():
    needs_faiss()
    rng = np.random.default_rng(6)
    # entries +-0.25 in 16-d: unit norm exactly, and every similarity a multiple of
    # 1/8, computed without rounding: ties everywhere, across the k-th place too
    items = rng.choice([-0.25, 0.25], size=(3000, 16))
    items[1000:1100] = items[7]  # and exact duplicates
    queries = np.concatenate([rng.choice([-0.25, 0.25], size=(60, 16)), items[[7, 12]]])
    truth = brute_force(items, queries, 25)
    for engine in ("numpy", "faiss"):
        index = CodeIndex(16, engine=engine)
        index.add(items, names(0, 3000))
        for batch, expected in ((queries, truth), (queries[:1], truth[:1]),
                                (queries[-1:], truth[-1:])):
            np.testing.assert_array_equal(index.search(batch, k=25).ids, expected)
        # the 101 copies of items[7] tie at similarity 1: all of them, lowest id first
        ids = index.search(items[7:8], k=101).ids[0]
        np.testing.assert_array_equal(ids, brute_force(items, items[7:8], 101)[0])
        assert set(ids) >= {7, *range(1000, 1100)}


def test_a_tie_across_the_whole_index_is_broken_by_the_lower_id():
    items = np.zeros((20000, 8))  # all at similarity 0 from any query...
    items[[5000, 7000, 9000]] = np.eye(8)[[0, 1, 2]] + 0.5  # ...but three
    items[[100, 200]] = -1.0  # and two behind every zero code
    query = np.ones((1, 8))
    for engine in ("numpy", "faiss"):
        if engine == "faiss" and not HAS_FAISS:
            continue
        index = CodeIndex(8, engine=engine)
        index.add(items, names(0, 20000))
        result = index.search(query, k=10)
        np.testing.assert_array_equal(result.ids[0], [5000, 7000, 9000, 0, 1, 2, 3, 4, 5, 6])
        np.testing.assert_allclose(result.distances[0, 3:], 1.0)
        assert list(index.search(-query, k=2).ids[0]) == [100, 200]


# -- approximate kinds ------------------------------------------------------------------

@pytest.mark.parametrize("kind,params", [("hnsw", {}), ("ivf", {"nlist": 128, "nprobe": 48}),
                                         ("pq", {})])
def test_approximate_recall_at_10(kind, params):
    needs_faiss()
    items, queries = unit_gaussian(20000, 32, seed=7), unit_gaussian(200, 32, seed=8)
    exact = CodeIndex(32, engine="numpy")
    exact.add(items, names(0, 20000))
    approximate = CodeIndex(32, kind=kind, engine="faiss", **params)
    approximate.add(items, names(0, 20000))
    truth = exact.search(queries, k=10)
    found = approximate.search(queries, k=10)
    assert recall(found.ids, truth.ids) >= 0.9
    # where both found the same code, they report the same distance
    same = found.ids == truth.ids
    np.testing.assert_array_equal(found.distances[same], truth.distances[same])


def test_search_parameters_change_after_building_and_persist(tmp_path):
    needs_faiss()
    index = CodeIndex(8, kind="hnsw", engine="faiss", M=8, ef_construction=40, ef_search=16)
    index.add(unit_gaussian(300, 8, seed=9), names(0, 300))
    index.set_search_params(ef_search=64)
    assert index._faiss.hnsw.efSearch == 64
    with pytest.raises(ValueError, match="cannot be changed after building"):
        index.set_search_params(M=16)
    index.save(tmp_path)
    loaded = CodeIndex.load(tmp_path)
    assert loaded.params == {"M": 8, "ef_construction": 40, "ef_search": 64}
    assert loaded._faiss.hnsw.efSearch == 64


def test_pq_sub_quantizers_divide_the_code_and_rerank_steers_the_search(tmp_path):
    needs_faiss()
    assert CodeIndex(32, kind="pq", engine="faiss").params == {"M": 16, "rerank": 300}
    assert CodeIndex(9, kind="pq", engine="faiss", M=None).params["M"] == 9  # odd: 1 dim each
    with pytest.raises(ValueError, match="M=5 must divide the code size dim=32"):
        CodeIndex(32, kind="pq", engine="faiss", M=5)
    items, queries = unit_gaussian(3000, 16, seed=20), unit_gaussian(50, 16, seed=21)
    truth = brute_force(items, queries, 10)
    index = CodeIndex(16, kind="pq", engine="faiss", M=4, rerank=10)
    index.add(items, names(0, 3000))
    rough = recall(index.search(queries, k=10).ids, truth)
    # with rerank = count every code is re-scored exactly: the exact answer
    index.set_search_params(rerank=3000)
    np.testing.assert_array_equal(index.search(queries, k=10).ids, truth)
    assert rough < 0.9  # 4 bytes a 16-d code: the compressed order alone is rough
    with pytest.raises(ValueError, match="cannot be changed after building"):
        index.set_search_params(M=8)
    index.save(tmp_path)
    loaded = CodeIndex.load(tmp_path)
    assert loaded.params == {"M": 4, "rerank": 3000}
    np.testing.assert_array_equal(loaded.search(queries, k=10).ids, truth)


@pytest.mark.parametrize("kind,params,too_few,enough,message", [
    ("ivf", {"nlist": 64}, 50, 100, "at least nlist=64 codes"),
    ("pq", {}, 15, 40, "at least 16 codes")])
def test_ivf_and_pq_learn_from_a_large_enough_first_add(kind, params, too_few, enough, message):
    needs_faiss()
    index = CodeIndex(8, kind=kind, engine="faiss", **params)
    with pytest.raises(ValueError, match=message):
        index.add(unit_gaussian(too_few, 8, seed=10), names(0, too_few))
    assert len(index) == 0
    index.add(unit_gaussian(enough, 8, seed=10), names(0, enough))
    index.add(unit_gaussian(5, 8, seed=11), names(enough, 5))  # later adds may be small
    assert len(index) == enough + 5


def test_a_pq_faiss_file_with_other_sub_quantizers_is_refused(tmp_path):
    needs_faiss()
    saved, other = (CodeIndex(8, kind="pq", engine="faiss", M=m) for m in (4, 2))
    for index, folder in ((saved, tmp_path), (other, tmp_path / "other")):
        index.add(unit_gaussian(41, 8, seed=22), names(0, 41))
        index.save(folder)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    other_name = json.loads((tmp_path / "other" / "manifest.json").read_text())["files"]["faiss"]
    name = manifest["files"]["faiss"]["name"]
    rewrite_manifest(tmp_path, manifest, name, (tmp_path / "other" / other_name["name"]).read_bytes())
    with pytest.raises(ValueError, match=rf"{name}.*M=2 of 4 bits, not M=4 of 4"):
        CodeIndex.load(tmp_path)


def test_a_saved_approximate_index_can_be_searched_exactly_without_faiss(tmp_path, monkeypatch):
    needs_faiss()
    items = unit_gaussian(400, 8, seed=12)
    index = CodeIndex(8, kind="hnsw", engine="faiss")
    index.add(items, names(0, 400))
    index.save(tmp_path)
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match=r"minigrad-autoencoders\[index\]"):
        CodeIndex.load(tmp_path)
    exact = CodeIndex.load(tmp_path, engine="numpy", kind="exact")
    assert exact.kind == "exact" and exact.paths == index.paths
    np.testing.assert_array_equal(exact.search(items[:20], k=5).ids,
                                  brute_force(items, items[:20], 5))


# -- bad arguments ----------------------------------------------------------------------

def test_bad_codes_paths_and_k_are_refused_by_name():
    index = CodeIndex(4, engine="numpy")
    index.add(np.eye(4), list("abcd"))
    bad = np.ones((3, 4))
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"codes \(shape \(3, 4\)\) holds NaN.*row 1"):
        index.add(bad, list("xyz"))
    with pytest.raises(ValueError, match=r"codes has shape \(3, 5\); expected \(n, 4\)"):
        index.add(np.ones((3, 5)), list("xyz"))
    with pytest.raises(ValueError, match=r"codes has shape \(4,\); expected \(n, 4\)"):
        index.add(np.ones(4), ["x"])
    with pytest.raises(TypeError, match="codes must hold real numbers.*complex"):
        index.add(np.ones((3, 4), dtype=complex), list("xyz"))
    with pytest.raises(ValueError, match="paths has 2 entries but codes has 3 rows"):
        index.add(np.ones((3, 4)), ["x", "y"])
    with pytest.raises(TypeError, match=r"paths\[1\] is a int"):
        index.add(np.ones((3, 4)), ["x", 1, "z"])
    with pytest.raises(TypeError, match="paths must be a list"):
        index.add(np.ones((3, 4)), "xyz")
    assert len(index) == 4 and index.paths == list("abcd")  # nothing was added
    with pytest.raises(ValueError, match=r"queries has shape \(1, 3\); expected \(n, 4\)"):
        index.search(np.ones((1, 3)))
    with pytest.raises(ValueError, match=r"queries .* holds NaN or infinite"):
        index.search(np.array([[np.inf, 0, 0, 0]]))
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            index.search(np.ones((1, 4)), k=k)


def test_bad_constructor_arguments_are_refused():
    with pytest.raises(ValueError, match="kind='flat'"):
        CodeIndex(4, kind="flat")
    with pytest.raises(ValueError, match="engine='torch'"):
        CodeIndex(4, engine="torch")
    with pytest.raises(ValueError, match="dim must be"):
        CodeIndex(0)
    with pytest.raises(ValueError, match="takes no parameter nprobe"):
        CodeIndex(4, kind="exact", engine="numpy", nprobe=3)
    with pytest.raises(ValueError, match="the numpy engine supports only kind='exact'"):
        CodeIndex(4, kind="hnsw", engine="numpy")


# -- without FAISS ----------------------------------------------------------------------

def test_without_faiss_exact_falls_back_to_numpy_once_and_the_rest_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now fails
    monkeypatch.setattr(index_module, "_warned_fallback", False)
    with pytest.warns(UserWarning, match="exact NumPy engine"):
        index = CodeIndex(4)
    assert index.engine == "numpy"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert CodeIndex(4).engine == "numpy"  # said once only
    for kind in ("hnsw", "ivf", "pq"):
        with pytest.raises(ImportError, match=r"pip install 'minigrad-autoencoders\[index\]'"):
            CodeIndex(4, kind=kind)
    with pytest.raises(ImportError, match=r"minigrad-autoencoders\[index\]"):
        CodeIndex(4, engine="faiss")


def test_importing_the_package_does_not_import_faiss():
    code = ("import sys, autoencoders, autoencoders.index, autoencoders.cli; "
            "assert 'faiss' not in sys.modules, 'faiss was imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# -- damaged files ----------------------------------------------------------------------

def save_small_index(folder, kind):
    """(folder, manifest, index) of a small index of ``kind`` saved in ``folder``."""
    engine = "numpy" if kind == "exact" else "faiss"
    index = make(kind, engine, {}, dim=6)
    index.add(unit_gaussian(200, 6, seed=13), names(0, 200))
    index.save(folder, metadata={"model_sha256": "0" * 64})
    return folder, json.loads((folder / "manifest.json").read_text()), index


@pytest.fixture(params=["exact", "hnsw"])
def saved(request, tmp_path):
    """A small saved index, once exact (NumPy) and once hnsw (FAISS)."""
    return save_small_index(tmp_path, request.param)


@pytest.fixture
def saved_hnsw(tmp_path):
    return save_small_index(tmp_path, "hnsw")


def damage(path, how):
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[:len(data) // 2])
    elif how == "flip":
        middle = len(data) * 3 // 4
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0x40]) + data[middle + 1:])
    else:
        path.write_bytes(b"")


@pytest.mark.parametrize("how", ["truncate", "flip", "empty"])
def test_a_damaged_manifest_is_a_value_error_naming_it(saved, how):
    folder, _, _ = saved
    manifest = folder / "manifest.json"
    if how == "flip":  # valid JSON, wrong content
        text = json.loads(manifest.read_text())
        text["count"] = 10 ** 12
        manifest.write_text(json.dumps(text))
    else:
        damage(manifest, how)
    with pytest.raises(ValueError, match="manifest.json"):
        CodeIndex.load(folder)


@pytest.mark.parametrize("kind,which", [("exact", "codes"), ("hnsw", "codes"), ("hnsw", "faiss")])
@pytest.mark.parametrize("how", ["truncate", "flip", "empty"])
def test_a_damaged_data_file_is_a_value_error_naming_it(tmp_path, kind, which, how):
    folder, manifest, _ = save_small_index(tmp_path, kind)
    name = manifest["files"][which]["name"]
    damage(folder / name, how)
    with pytest.raises(ValueError, match=name):
        CodeIndex.load(folder)


def rewrite_manifest(folder, manifest, name, data):
    """Replace data file ``name`` with ``data`` and make the manifest vouch for it
    (size and SHA-256): what a crafted or mismatched folder looks like."""
    import hashlib
    (folder / name).write_bytes(data)
    for entry in manifest["files"].values():
        if entry["name"] == name:
            entry["bytes"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_the_npy_header_is_checked_before_the_array_is_read(saved, monkeypatch):
    folder, manifest, _ = saved
    name = manifest["files"]["codes"]["name"]
    header = {"descr": "<f4", "fortran_order": False, "shape": (10 ** 12, 6)}
    fake = bytearray()

    class Sink:
        def write(self, b):
            fake.extend(b)
    np.lib.format.write_array_header_1_0(Sink(), header)
    rewrite_manifest(folder, manifest, name, bytes(fake) + b"\0" * 64)
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("np.load before the check"))
    with pytest.raises(ValueError,
                       match=rf"{name}.*\(1000000000000, 6\).*expects float32 \(200, 6\)"):
        CodeIndex.load(folder)


def test_codes_of_the_wrong_shape_or_dtype_are_refused(saved):
    folder, manifest, _ = saved
    name = manifest["files"]["codes"]["name"]
    for array in (np.zeros((200, 6), np.float64), np.zeros((199, 6), np.float32),
                  np.full((200, 6), 3.0, np.float32)):
        import io
        buffer = io.BytesIO()
        np.save(buffer, array)
        rewrite_manifest(folder, manifest, name, buffer.getvalue())
        with pytest.raises(ValueError, match=name):
            CodeIndex.load(folder)


def test_a_faiss_file_from_another_index_is_refused(saved_hnsw, tmp_path_factory):
    folder, manifest, _ = saved_hnsw
    other_folder = tmp_path_factory.mktemp("other")
    other = CodeIndex(6, kind="hnsw", engine="faiss")
    other.add(unit_gaussian(150, 6, seed=14), names(0, 150))
    other.save(other_folder)
    other_name = json.loads((other_folder / "manifest.json").read_text())["files"]["faiss"]["name"]
    name = manifest["files"]["faiss"]["name"]
    rewrite_manifest(folder, manifest, name, (other_folder / other_name).read_bytes())
    with pytest.raises(ValueError, match=rf"{name}.*150 vectors, not 200"):
        CodeIndex.load(folder)


def test_a_manifest_cannot_point_outside_its_folder(saved):
    folder, manifest, _ = saved
    manifest["files"]["codes"]["name"] = "../codes-0123456789abcdef.npy"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="manifest.json.*bad files entry for codes"):
        CodeIndex.load(folder)


def test_a_missing_index_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        CodeIndex.load(tmp_path)


# -- atomic save, expect ----------------------------------------------------------------

@pytest.mark.parametrize("kind,step", [("exact", "_write_codes"), ("exact", "_write_manifest"),
                                       ("hnsw", "_write_codes"), ("hnsw", "_write_faiss"),
                                       ("hnsw", "_write_manifest")])
def test_an_exception_during_save_leaves_the_previous_index(tmp_path, monkeypatch, kind, step):
    folder, manifest, index = save_small_index(tmp_path, kind)
    before = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    queries = unit_gaussian(10, 6, seed=15)
    expected = index.search(queries, k=4)
    index.add(unit_gaussian(50, 6, seed=16), names(200, 50))

    real = getattr(index_module, step)

    def failing(path, *args):
        if step != "_write_manifest":
            real(path, *args)  # the data file is written ... and then the process "dies"
        else:  # the manifest dies half-written, inside atomic_write
            with index_module.atomic_write(path) as f:
                f.write(b'{"format": "minigrad-code-index", "cou')
                raise KeyboardInterrupt("interrupted in the middle of save")
        raise KeyboardInterrupt("interrupted in the middle of save")
    monkeypatch.setattr(index_module, step, failing)
    with pytest.raises(KeyboardInterrupt):
        index.save(folder, metadata={"model_sha256": "1" * 64})
    after = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    assert after == before  # nothing changed, nothing left behind
    loaded = CodeIndex.load(folder, expect={"model_sha256": "0" * 64})
    assert len(loaded) == 200
    np.testing.assert_array_equal(loaded.search(queries, k=4).ids, expected.ids)


def test_an_interruption_just_after_the_manifest_keeps_the_new_index(saved, monkeypatch):
    folder, _, index = saved
    index.add(unit_gaussian(50, 6, seed=16), names(200, 50))
    real = index_module._write_manifest

    def interrupted_after(*args):
        real(*args)
        raise KeyboardInterrupt("interrupted after the manifest's rename")
    monkeypatch.setattr(index_module, "_write_manifest", interrupted_after)
    with pytest.raises(KeyboardInterrupt):
        index.save(folder)
    assert len(CodeIndex.load(folder)) == 250  # committed: its files were kept


def test_files_left_by_a_hard_crash_do_not_matter_and_are_cleaned_up_later(saved, monkeypatch):
    folder, manifest, index = saved
    before = CodeIndex.load(folder)
    monkeypatch.setattr(index_module, "_write_manifest",
                        lambda *a: (_ for _ in ()).throw(SystemExit("crash")))
    monkeypatch.setattr(os, "unlink", lambda path: None)  # a crash cleans nothing up
    with pytest.raises(SystemExit):
        index.save(folder)
    monkeypatch.undo()
    assert len(os.listdir(folder)) > len(manifest["files"]) + 1  # orphaned new files
    assert_same_index(CodeIndex.load(folder), before)
    index.save(folder)
    assert len(os.listdir(folder)) == len(manifest["files"]) + 1


def test_expect_must_match_the_saved_metadata(saved):
    folder, _, _ = saved
    assert len(CodeIndex.load(folder, expect={"model_sha256": "0" * 64})) == 200
    with pytest.raises(ValueError, match=r"model_sha256 is '0{64}' but 'f{64}' was expected"):
        CodeIndex.load(folder, expect={"model_sha256": "f" * 64})
    with pytest.raises(ValueError, match="input_shape.*metadata has no 'input_shape'"):
        CodeIndex.load(folder, expect={"input_shape": [784]})


def test_metadata_must_be_json(tmp_path):
    index = CodeIndex(2, engine="numpy")
    index.add(np.eye(2), ["a", "b"])
    with pytest.raises(ValueError, match="metadata must be JSON"):
        index.save(tmp_path, metadata={"x": object()})
    with pytest.raises(TypeError, match="metadata must be a dict"):
        index.save(tmp_path, metadata=["x"])
    assert os.listdir(tmp_path) == []
    index.save(tmp_path, metadata={"input_shape": (28, 28), "n": np.int64(3)})
    assert CodeIndex.load(tmp_path, expect={"input_shape": (28, 28)}).metadata["n"] == 3


# -- the benchmark ----------------------------------------------------------------------

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def test_index_benchmark_runs_and_writes_its_table(tmp_path):
    engines = "numpy,faiss-exact,hnsw,ivf,pq" if HAS_FAISS else "numpy"
    out = tmp_path / "index_search.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "index_search.py"), "--sizes", "3000", "--dim", "16",
         "--queries", "30", "--engines", engines, "--ef-search", "32", "--nlist", "16",
         "--nprobe", "4", "--rerank", "50", "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    document = json.loads(out.read_text())
    rows = document["results"]
    assert [r["engine"] for r in rows] == engines.split(",")
    assert rows[0]["recall_at_k"] == 1.0 and all(0 <= r["recall_at_k"] <= 1 for r in rows)
    assert all(r["median_ms"] > 0 and r["p99_ms"] >= r["median_ms"] for r in rows)
    assert "| random | 3,000 | exact NumPy |" in proc.stdout and "Target at 3,000" in proc.stdout


def test_index_benchmark_target_takes_the_fastest_setting_at_recall_095():
    sys.path.insert(0, BENCH)
    try:
        import index_search
    finally:
        sys.path.remove(BENCH)

    def row(engine, kind, setting, ms, recall, n=1_000_000):
        return {"data": "random", "n": n, "engine": engine, "kind": kind, "setting": setting,
                "median_ms": ms, "recall_at_k": recall}
    rows = [row("numpy", "exact", "", 40.0, 1.0), row("numpy", "exact", "", 1.0, 1.0, n=1000),
            row("hnsw", "hnsw", "ef_search=128", 0.5, 0.80),
            row("hnsw", "hnsw", "ef_search=512", 3.0, 0.96),
            row("hnsw", "hnsw", "ef_search=1024", 5.0, 0.99),
            row("ivf", "ivf", "nprobe=512", 20.0, 0.97)]
    lines, target = index_search.targets(rows)
    assert target["setting"] == "ef_search=512" and target["speedup"] == pytest.approx(40 / 3)
    assert target["met"] and "13.3x -- met" in lines[-1]
    rows[3]["median_ms"] = 5.0
    lines, target = index_search.targets(rows)
    assert not target["met"] and "8.0x -- MISSED" in lines[-1]
    lines, target = index_search.targets([r for r in rows if r["recall_at_k"] < 0.95
                                          or r["kind"] == "exact"])
    assert not target["met"] and "MISSED: no approximate setting" in lines[-1]

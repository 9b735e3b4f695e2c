"""``python -m autoencoders index build|query`` end to end, on small picture folders
the tests write themselves (autoencoders/search.py)."""
import io
import contextlib
import json

import numpy as np
import pytest

pytest.importorskip("PIL", reason="pictures from folders need Pillow (the 'images' extra)")
pytest.importorskip("matplotlib", reason="the figures need matplotlib (the 'viz' extra)")

from PIL import Image  # noqa: E402

from autoencoders import VanillaAutoencoder, cli, datasets  # noqa: E402
from autoencoders.index import CodeIndex  # noqa: E402

TRAIN = ["--epochs", "2", "--latent", "6", "--hidden", "32", "--no-progress",
         "--backend", "numpy"]


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """40 block pictures as PNG and JPEG in nested folders, two sizes, plus a corrupt
    PNG and a text file."""
    root = tmp_path_factory.mktemp("pictures")
    images, _, _ = datasets.blocks(40, seed=3)
    for i, image in enumerate(images):
        folder = root / ("trips" if i % 3 else "") / ("2021" if i % 5 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray((image * 255).astype(np.uint8))
        if i % 4 == 0:
            picture = picture.resize((40, 40))
        picture.save(folder / f"p{i:02d}.{'jpg' if i % 2 else 'png'}")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (root / "notes.txt").write_text("not a picture")
    return root


def run_cli(argv):
    """(exit status, stdout, stderr) of the command line."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli.main(argv)
        except SystemExit as stop:
            status = stop.code
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def built(pictures, tmp_path_factory):
    out = tmp_path_factory.mktemp("index")
    with pytest.warns(datasets.SkippedFilesWarning, match="broken.png"):
        status, _, err = run_cli(["index", "build", "--images", str(pictures), "--out",
                                  str(out)] + TRAIN)
    assert status == 0, err
    return out


def test_build_trains_a_model_and_saves_a_self_contained_index(built):
    manifest = json.loads((built / "manifest.json").read_text())
    meta = manifest["metadata"]
    assert manifest["count"] == 40 and meta["image_size"] == [28, 28] and meta["mode"] == "L"
    assert (built / meta["model_file"]).is_file() and meta["latent_dim"] == 6
    index = CodeIndex.load(built, expect={"model_sha256": meta["model_sha256"]})
    assert index.paths[0] == "2021/p00.png" and "trips/2021/p05.jpg" in index.paths
    assert (built / "training" / "log.jsonl").is_file()


def test_query_prints_neighbours_and_writes_the_figure(built, pictures, tmp_path):
    query = pictures / "trips" / "p01.jpg"
    resized = tmp_path / "big.png"
    Image.open(pictures / "2021" / "p00.png").resize((64, 64)).save(resized)
    status, out, err = run_cli(["index", "query", "--index", str(built), str(query),
                                str(resized), "-k", "3", "--out", str(tmp_path / "q")])
    assert status == 0, err
    lines = [line for line in out.splitlines() if not line.startswith("[")]  # not the log
    assert lines[0] == f"{query}:" and lines[1].startswith("  1. trips/p01.jpg")
    assert "(cosine distance 0.0000)" in lines[1]          # itself, at distance 0
    assert f"{resized}: resized to 28x28" in out + err
    assert (tmp_path / "q" / "neighbors.png").stat().st_size > 0
    results = json.loads((tmp_path / "q" / "metrics.json").read_text())["results"]
    assert [len(r["neighbors"]) for r in results] == [3, 3]
    assert results[1]["distances"] == sorted(results[1]["distances"])


def test_build_with_a_given_model_and_the_errors_of_query(pictures, tmp_path):
    model = VanillaAutoencoder([28 * 28, 16, 5], seed=0)
    model_path = model.save(tmp_path / "mine.npz")
    out = tmp_path / "idx"
    with pytest.warns(datasets.SkippedFilesWarning):
        status, _, err = run_cli(["index", "build", "--images", str(pictures), "--model",
                                  model_path, "--out", str(out), "--no-progress"])
    assert status == 0, err
    codes = CodeIndex.load(out).codes
    assert codes.shape == (40, 5)
    before = (out / "manifest.json").read_bytes()

    # a model of another input size: an error naming both, and the index stays whole
    small = VanillaAutoencoder([10, 4], seed=0).save(tmp_path / "small.npz")
    with pytest.warns(datasets.SkippedFilesWarning):
        status, _, err = run_cli(["index", "build", "--images", str(pictures), "--model",
                                  small, "--size", "28,28", "--out", str(out)])
    assert status == 2 and "takes 10 inputs" in err and "784" in err
    assert (out / "manifest.json").read_bytes() == before
    np.testing.assert_array_equal(CodeIndex.load(out).codes, codes)

    query = str(pictures / "2021" / "p00.png")
    other = VanillaAutoencoder([28 * 28, 16, 5], seed=1).save(tmp_path / "other.npz")
    status, _, err = run_cli(["index", "query", "--index", str(out), query, "--model", other,
                              "--out", str(tmp_path / "q")])
    assert status == 2 and "model_sha256" in err and "another --model" in err
    status, _, err = run_cli(["index", "query", "--index", str(tmp_path / "nowhere"), query,
                              "--out", str(tmp_path / "q")])
    assert status == 2 and "--index" in err
    (out / "manifest.json").write_bytes(before[:len(before) // 2])
    status, _, err = run_cli(["index", "query", "--index", str(out), query,
                              "--out", str(tmp_path / "q")])
    assert status == 2 and "manifest.json" in err and "Traceback" not in err


def test_a_pq_index_built_from_the_command_line_answers_as_the_exact_one(pictures, tmp_path):
    pytest.importorskip("faiss", reason="kind pq needs FAISS (the 'index' extra)")
    model_path = VanillaAutoencoder([28 * 28, 16, 6], seed=0).save(tmp_path / "mine.npz")
    answers = {}
    for kind in ("exact", "pq"):
        out = tmp_path / kind
        with pytest.warns(datasets.SkippedFilesWarning):
            status, _, err = run_cli(["index", "build", "--images", str(pictures), "--model",
                                      model_path, "--out", str(out), "--kind", kind,
                                      "--no-progress"])
        assert status == 0, err
        index = CodeIndex.load(out)
        assert index.kind == kind and len(index) == 40
        # 40 codes re-ranked from 300 candidates: every code is re-scored exactly
        answers[kind] = index.search(index.codes, k=5)
    np.testing.assert_array_equal(answers["pq"].ids, answers["exact"].ids)
    assert CodeIndex.load(tmp_path / "pq").params == {"M": 3, "rerank": 300}

"""The documentation cannot drift from the code.

* Every ```python block of every page under docs/ runs: a page's blocks are
  executed in order, in one namespace, in a fresh temporary directory (so the
  files a page writes go nowhere).  ```bash blocks are not run.
* Every code excerpt a page asks for (``<!-- source: ... -->``, ``<!-- excerpt:
  ... -->``, see docs/scripts/excerpts.py) resolves to code that exists.
* Every figure a page shows exists, is small, and has the command that made it
  written beside it; every figure in docs/figures is shown somewhere.
* docs/scripts/plot_benchmarks.py draws the committed benchmark JSON.
* ``mkdocs build --strict`` succeeds (skipped, with the reason, when MkDocs is
  not installed: ``pip install -e ".[docs]"``).  Only this test needs MkDocs.
"""
import glob
import importlib.util
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
PAGES = sorted(os.path.relpath(p, DOCS)
               for p in glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True))
_FIGURE = re.compile(r"!\[[^\]]*\]\(([^)\s]*figures/[^)\s]+\.png)\)")


def _read(page):
    with open(os.path.join(DOCS, page), encoding="utf-8") as f:
        return f.read()


def python_blocks(text):
    """The ```python blocks of a page's Markdown, in order (indented ones too: a
    block inside an admonition or a list item is dedented by its fence's indent)."""
    blocks = []
    for match in re.finditer(r"^([ \t]*)```python[^\n]*\n(.*?)^\1```[ \t]*$", text,
                             re.MULTILINE | re.DOTALL):
        indent, body = match.group(1), match.group(2)
        lines = [line[len(indent):] if line.startswith(indent) else line
                 for line in body.splitlines()]
        blocks.append("\n".join(lines) + "\n")
    return blocks


def _excerpts_module():
    spec = importlib.util.spec_from_file_location(
        "docs_excerpts", os.path.join(DOCS, "scripts", "excerpts.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pages_found():
    # the list the other tests are parametrized by is not silently empty
    assert "index.md" in PAGES and len(PAGES) >= 20, PAGES


def test_block_extraction():
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n!!! note\n    ```python\n    y = 2\n    ```\n"
    assert python_blocks(text) == ["x = 1\n", "y = 2\n"]


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(_read(p))])
def test_page_snippets_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace = {"__name__": "__docs__"}
    for i, block in enumerate(python_blocks(_read(page)), 1):
        code = compile(block, f"docs/{page} (python block {i})", "exec")
        exec(code, namespace)  # a failing block fails the test with its page and number


@pytest.mark.parametrize("page", PAGES)
def test_page_excerpts_resolve(page):
    excerpts = _excerpts_module()
    markers = excerpts._MARKER.findall(_read(page))
    for _, kind, spec in markers:
        text = excerpts.render(kind, spec)
        assert "```" in text and len(text.splitlines()) > 3, (page, spec, text)


def test_every_public_module_is_in_the_api_reference():
    directives = set()
    for page in PAGES:
        directives.update(re.findall(r"^::: ([\w.]+)", _read(page), re.MULTILINE))
    missing = []
    for package in ("minigrad", "autoencoders"):
        for path in glob.glob(os.path.join(ROOT, package, "**", "*.py"), recursive=True):
            parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts.pop()
            if any(p.startswith("_") for p in parts):
                continue  # private modules (and __main__) are not in the reference
            if ".".join(parts) not in directives:
                missing.append(".".join(parts))
    assert not missing, f"modules the API reference leaves out: {missing}"


def test_excerpt_of_a_missing_name_fails():
    excerpts = _excerpts_module()
    with pytest.raises(excerpts.ExcerptError, match="no 'no_such_loss'"):
        excerpts.render("source", "minigrad.losses.no_such_loss")
    with pytest.raises(excerpts.ExcerptError, match="no line containing"):
        excerpts.render("excerpt", "minigrad/backward.py | def no_such_function | ^$")
    # a private helper is shown but linked to its public parent
    assert excerpts.api_anchor("minigrad.backward._topological_order") == "minigrad.backward"
    assert excerpts.api_anchor("autoencoders.sparse.SparseAutoencoder._loss") == \
        "autoencoders.sparse.SparseAutoencoder._loss"


def test_figures_exist_are_small_and_say_how_they_were_made():
    shown = set()
    for page in PAGES:
        text = _read(page)
        for match in _FIGURE.finditer(text):
            path = os.path.normpath(os.path.join(DOCS, os.path.dirname(page), match.group(1)))
            assert os.path.isfile(path), f"docs/{page} shows {match.group(1)}, which is missing"
            assert os.path.getsize(path) < 300_000, f"{path} is over 300 KB"
            # the command that made it is written within the next few lines
            after = text[match.end():match.end() + 1200]
            assert re.search(r"```bash\n[^`]*(python -m autoencoders|python docs/scripts/)",
                             after), f"docs/{page}: no command beside {match.group(1)}"
            shown.add(path)
    committed = {os.path.normpath(p) for p in glob.glob(os.path.join(DOCS, "figures", "*.png"))}
    assert committed, "docs/figures holds no figure"
    assert committed <= shown, f"figures no page shows: {sorted(committed - shown)}"


def test_benchmark_plot_is_drawn_from_the_committed_json(tmp_path):
    pytest.importorskip("matplotlib", reason="the benchmark plot needs matplotlib (viz extra)")
    out = tmp_path / "train_step.png"
    subprocess.run([sys.executable, os.path.join(DOCS, "scripts", "plot_benchmarks.py"),
                    "--out", str(out)], check=True, cwd=str(tmp_path), capture_output=True)
    assert out.stat().st_size > 10_000


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="the site needs MkDocs: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings_handlers.python",
                        reason="the API reference needs mkdocstrings[python] (docs extra)")
    pytest.importorskip("material", reason="the theme needs mkdocs-material (docs extra)")
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                             "--site-dir", str(site)], cwd=ROOT, capture_output=True,
                            text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    # the tour's equations link to the functions that compute them
    tour = (site / "tour" / "sparse" / "index.html").read_text(encoding="utf-8")
    assert "#autoencoders.sparse.SparseAutoencoder._loss" in tour
    assert "arithmatex" in tour

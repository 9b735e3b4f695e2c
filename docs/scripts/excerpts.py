"""MkDocs hook: excerpts of the project's code, taken from the code at build time.

A page writes, on a line of its own,

    <!-- source: autoencoders.sparse.SparseAutoencoder._loss -->
    <!-- excerpt: minigrad/kernels/losses.cu | template <typename F, int KIND, bool GRAD> | ^} -->

(indented, inside a content tab or an admonition, if need be), and the built
page shows, in its place, a link to the object's entry in the API
reference (for a private name, its nearest public parent's) and the code itself,
with its file and line numbers.  ``source`` takes a
dotted path to a module, class, function or method (its whole source);
``excerpt`` takes a file (relative to the repository root), the text of its first
line and a regular expression its last line matches (searched from the first
line on).  Because the code is read when the site is built, an excerpt cannot
drift from the code; one that no longer resolves fails the build.
"""
from __future__ import annotations

import importlib
import inspect
import os
import re
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_MARKER = re.compile(r"^([ \t]*)<!--\s*(source|excerpt):\s*(.+?)\s*-->[ \t]*$", re.MULTILINE)


class ExcerptError(Exception):
    """A marker that does not resolve to code (fails the build)."""


def resolve(dotted):
    """The object at ``dotted`` (``package.module.Class.method``), importing the
    longest module prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                raise ExcerptError(f"{dotted}: {'.'.join(parts[:cut])} has no {name!r}")
            obj = getattr(obj, name)
        return obj
    raise ExcerptError(f"{dotted}: no importable module in it")


def api_anchor(dotted):
    """The API reference's anchor for ``dotted``: the object's own, or, for a private
    name the reference leaves out (all but the flavors' ``_loss``), its nearest public
    parent's."""
    parts = dotted.split(".")
    while len(parts) > 1 and parts[-1].startswith("_") and parts[-1] != "_loss" \
            and not parts[-1].startswith("__"):
        parts.pop()
    return ".".join(parts)


def source_block(dotted):
    obj = inspect.unwrap(resolve(dotted))
    lines, first = inspect.getsourcelines(obj)
    if inspect.ismodule(obj):
        first = 1
    path = os.path.relpath(inspect.getsourcefile(obj), ROOT)
    short = ".".join(dotted.split(".")[-2:]) if not inspect.ismodule(obj) else dotted
    text = textwrap.dedent("".join(lines))
    target = api_anchor(dotted)
    name = f"[`{short}`][{target}]" if target == dotted else f"`{short}` ([{target}][{target}])"
    header = f"{name} in `{path}`, lines {first}-{first + len(lines) - 1}:"
    return header, "python", first, text.rstrip("\n")


def excerpt_block(spec):
    try:
        path, start, end = (part.strip() for part in spec.split("|"))
    except ValueError:
        raise ExcerptError(f"excerpt {spec!r}: expected 'file | first line text | last line "
                           f"regex'") from None
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        lines = f.read().splitlines()
    begin = next((i for i, line in enumerate(lines) if start in line), None)
    if begin is None:
        raise ExcerptError(f"excerpt: {path} has no line containing {start!r}")
    stop = next((i for i in range(begin, len(lines)) if re.search(end, lines[i])), None)
    if stop is None:
        raise ExcerptError(f"excerpt: no line of {path} after line {begin + 1} matches {end!r}")
    language = {".cu": "cuda", ".cuh": "cuda", ".py": "python"}.get(os.path.splitext(path)[1],
                                                                   "text")
    header = f"`{path}`, lines {begin + 1}-{stop + 1}:"
    return header, language, begin + 1, "\n".join(lines[begin:stop + 1])


def render(kind, spec):
    header, language, first, text = (source_block(spec) if kind == "source"
                                     else excerpt_block(spec))
    return f'{header}\n\n```{language} linenums="{first}"\n{text}\n```\n'


def on_page_markdown(markdown, page, config, files):
    """Replace every marker of the page by its excerpt (an unresolved one raises)."""
    def replace(match):
        indent, kind, spec = match.groups()
        try:
            text = render(kind, spec)
        except (ExcerptError, OSError, TypeError) as error:
            raise ExcerptError(f"{page.file.src_path}: {error}") from None
        # indented like the marker, so an excerpt can sit in a tab or an admonition
        return "\n".join(indent + line if line else line for line in text.splitlines())
    return _MARKER.sub(replace, markdown)

"""Generated README sections: benchmark scripts replace the text between two markers, never by hand."""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def replace_readme_section(name: str, markdown: str, readme: str | os.PathLike | None = None) -> bool:
    """Replaces the block between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` in the README.

    Returns False (and changes nothing, saying why on stderr) when the README or the markers are
    missing, e.g. in an installed copy of the package.
    """
    path = Path(readme) if readme else REPO_ROOT / "README.md"
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    text = path.read_text() if path.exists() else ""
    if begin not in text or end not in text:
        print(f"{path}: no section '{name}' ({begin} ... {end}); nothing replaced", file=sys.stderr)
        return False
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{begin}\n{markdown.strip()}\n{end}{tail}"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(new)
    os.replace(tmp, path)
    print(f"updated README section '{name}'")
    return True

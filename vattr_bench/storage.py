"""Files a run keeps (records, caches, markers) are replaced whole: a kill leaves the old file or the new
one, never half of one."""
from __future__ import annotations

import os
from pathlib import Path


def replace_atomically(path: Path, write) -> None:
    """``write(binary_file)`` into a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "wb") as f:
        write(f)
    os.replace(partial, path)


def write_text_atomically(path: Path, text: str) -> None:
    replace_atomically(path, lambda f: f.write(text.encode("utf-8")))

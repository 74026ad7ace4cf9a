"""Files a run keeps (records, caches, markers) are replaced whole: a kill leaves the old file or the new
one, never half of one."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def replace_atomically(path: Path, write) -> None:
    """``write(binary_file)`` into a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "wb") as f:
        write(f)
    os.replace(partial, path)


def write_text_atomically(path: Path, text: str) -> None:
    replace_atomically(path, lambda f: f.write(text.encode("utf-8")))


def save_arrays(path: Path, **arrays) -> None:
    """An .npz of named arrays, replaced whole."""
    replace_atomically(path, lambda f: np.savez(f, **arrays))


def load_arrays(path: Path, required=()) -> dict | None:
    """Every array of an .npz; None when it is absent, cannot be read (damaged, or not an .npz) or lacks
    one of ``required``: the caller computes it again."""
    if not Path(path).is_file():
        return None
    try:
        with np.load(path) as saved:
            arrays = {name: saved[name] for name in saved.files}
    except Exception:
        return None
    return arrays if set(required) <= set(arrays) else None

"""Files a run keeps (records, caches, markers) are replaced whole: a kill leaves the old file or the new
one, never half of one."""
from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


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


# What a cache file that is there but unusable raises when read: OSError (no permission, a folder), ValueError
# (not an .npz, a bad array header), BadZipFile (a damaged member), EOFError (an array cut short).
UNREADABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile)


def load_arrays(path: Path, required=()) -> dict | None:
    """Every array of an .npz; None when it is absent, cannot be read (damaged, or not an .npz) or lacks
    one of ``required``: the caller computes it again. A file that is there but unusable is reported (a
    warning naming it and why), not passed over in silence."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        if not zipfile.is_zipfile(path):  # else numpy would call any other bytes "pickled data"
            raise ValueError("not an .npz archive: cut short, damaged or another kind of file")
        with np.load(path, allow_pickle=False) as saved:
            arrays = {name: saved[name] for name in saved.files}
    except UNREADABLE as e:
        logger.warning("cache file %s cannot be read (%s: %s); computing it again", path, type(e).__name__, e)
        return None
    missing = sorted(set(required) - set(arrays))
    if missing:
        logger.warning("cache file %s lacks %s (written by another version?); computing it again", path,
                       ", ".join(missing))
        return None
    return arrays


def claim_settings(marker: Path, settings: dict, what: str) -> None:
    """A folder holds ``what`` (generations, trajectories) of one set of settings, kept in ``marker``: the first
    run makes the folder and writes them, a resumed run must bring the same."""
    import json

    marker = Path(marker)
    marker.parent.mkdir(parents=True, exist_ok=True)
    if marker.is_file():
        previous = json.loads(marker.read_text())
        if previous != settings:
            raise ValueError(f"{marker.parent} holds {what} made under {previous}, not {settings}; "
                             "use a new --output-dir")
    else:
        write_text_atomically(marker, json.dumps(settings, indent=1))

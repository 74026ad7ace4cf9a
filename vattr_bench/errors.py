"""User errors: a mistake in what was asked for (a flag, a file, a plugin) that the user can fix.

The command line reports them as one line, ``vattr-bench <command>: error: …``, naming the file or flag;
anything else is a bug and keeps its traceback. ``--debug`` shows the traceback of user errors too.
"""
from __future__ import annotations

import json
from pathlib import Path


class UserError(ValueError):
    """Raise for a mistake the user can fix; the message names the flag or file and, where it helps, what
    to do instead. A ValueError, so that code catching bad values catches it too."""


# Errors from bad input that the library raises as they come (a flag's value, a file that is missing, not
# readable, not a folder, not text, not JSON): reported like UserError. json.JSONDecodeError and
# UnicodeDecodeError are ValueErrors; they are named for the reader.
USER_ERROR_TYPES = (UserError, ValueError, json.JSONDecodeError, UnicodeDecodeError, FileNotFoundError,
                    FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def describe(error: BaseException) -> str | None:
    """The one line a user sees for ``error``; None when it is not a user error (a bug, shown with its
    traceback). An OSError that names its file (any, from a missing file to a full or read-only disk) is a
    user error, told in words with the file."""
    if isinstance(error, OSError) and error.filename is not None:
        return _os_error_line(error)
    if isinstance(error, UnicodeDecodeError):
        return f"not UTF-8 text (byte {error.start}: {error.reason}); was a binary file given where text is read?"
    if isinstance(error, json.JSONDecodeError):
        return f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
    if isinstance(error, USER_ERROR_TYPES):
        return str(error) or type(error).__name__
    return None


def _os_error_line(error: OSError) -> str:
    name = error.filename if error.filename2 is None else f"{error.filename} → {error.filename2}"
    if isinstance(error, FileNotFoundError):
        return f"{name}: no such file or folder"
    if isinstance(error, FileExistsError):
        return f"{name} exists and is not a folder (give a folder's path, or a new one)"
    if isinstance(error, NotADirectoryError):
        return f"{name}: a part of this path is a file, not a folder"
    if isinstance(error, IsADirectoryError):
        return f"{name} is a folder; a file was expected"
    if isinstance(error, PermissionError):
        return f"{name}: permission denied"
    return f"{name}: {error.strerror or error}"


def read_text(path: Path, what: str) -> str:
    """A UTF-8 text file's contents; a UserError naming ``what`` and the file when it is missing, a folder,
    unreadable or not text."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {e.start}: {e.reason})") from e
    except OSError as e:
        raise UserError(f"{what}: {_os_error_line(e) if e.filename else f'{path}: {e}'}") from e


def read_json(path: Path, what: str):
    """A JSON file's value; a UserError naming ``what`` and the file for anything that is not JSON text."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{what} {path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e

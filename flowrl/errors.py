"""Errors that mean "the input is wrong", not "flowrl is broken".

Every command of flowrl/cli.py turns these into ONE line on stderr, `error: MESSAGE`, and exit code 2
(flowrl.cli.user_errors); any other exception keeps its traceback. A message names the file (and
line) or option at fault and says what to change. ConfigError (flowrl.config) and CheckpointError
(flowrl.checkpoint) are UserErrors too; the classes also derive from the builtin type that callers
caught before (ValueError, KeyError), so `except ValueError` keeps working.
"""
from __future__ import annotations

import errno
import json
import sys
from pathlib import Path
from typing import Dict, List


class UserError(Exception):
    """Bad input from the user: a config value, an option, a file they gave."""

    def __str__(self) -> str:  # KeyError would quote the message; show it as written
        return str(self.args[0]) if self.args else ""


class InputFileError(UserError, ValueError):
    """A file the user gave is malformed; the message starts with `PATH[:LINE]:`."""


class UnknownNameError(UserError, KeyError):
    """A registry name (model.name, algorithm.name, a reward) that does not exist."""


# OSErrors that are the machine's state, not a bug: full disk, read-only or forbidden folder.
# (EEXIST is not one: the CLI checks --output-dir itself; elsewhere it means a clash inside a run dir.)
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
                      errno.ENOTDIR, errno.EISDIR}


def environment_message(e: OSError) -> str:
    """One line for an OSError of ENVIRONMENT_ERRNOS, naming the file and the fix."""
    where = f" ({e.filename})" if e.filename else ""
    fix = {errno.ENOSPC: "free some disk space (or use another --output-dir), then run again with --resume",
           errno.EDQUOT: "free some of your disk quota, then run again with --resume",
           errno.EFBIG: "the file size limit was reached (ulimit -f); raise it, then run again with --resume",
           errno.EROFS: "the file system is read-only: pass a writable --output-dir",
           errno.EACCES: "no permission to write there: pass a folder you own as --output-dir",
           errno.EPERM: "no permission to write there: pass a folder you own as --output-dir",
           errno.ENOTDIR: "a path component is a file, not a folder: give a folder path",
           errno.EISDIR: "that path is a folder: give a file path"}[e.errno]
    return f"{e.strerror}{where}; {fix}"


def read_jsonl(path: Path, what: str = "JSON-lines file", fix: str = "repair or delete that line",
               cut_last_ok: bool = False) -> List[Dict]:
    """Rows of a JSON-lines file ([] if it does not exist); blank lines are skipped.

    cut_last_ok (logs appended to by a run): a last line cut short (no final newline: a crash or a
    full disk during an append) is dropped with a warning on stderr. Any other line that is not a
    JSON object raises InputFileError naming PATH:LINE and `fix`. Non-UTF-8 text raises InputFileError too."""
    path = Path(path)
    if not path.exists():
        return []
    text = decode_utf8(path, what)
    lines = text.split("\n")
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if cut_last_ok and n == len(lines):  # the last line has no newline: an append that was cut short
                print(f"[flowrl] warning: {path}:{n}: ignoring a cut-off last line (an interrupted "
                      f"write)", file=sys.stderr, flush=True)
                continue
            raise InputFileError(f"{path}:{n}: not valid JSON in this {what} ({e.msg}); {fix}") from None
        if not isinstance(row, dict):
            raise InputFileError(f"{path}:{n}: expected a JSON object {{...}} per line in this {what}; {fix}")
        rows.append(row)
    return rows


def decode_utf8(path: Path, what: str = "file") -> str:
    """The text of `path`; InputFileError naming the line of the first byte that is not UTF-8."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise InputFileError(f"{path}:{line}: this {what} is not UTF-8 text (byte {data[e.start]:#04x} at "
                             f"offset {e.start}); save it as UTF-8") from None

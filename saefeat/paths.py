"""Where names from users may lead: ids that are one safe path part, corpus files under
the corpus roots, destinations inside the folder they belong in.

Every check resolves first (`Path.resolve()`: `..` and symlinks followed), then asks
whether the result lies under an allowed folder, so neither `../../etc` nor a symlink
inside a root that points out gets through. A missing file and a forbidden one give the
same error, so an answer never tells a caller which files exist.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from saefeat.errors import SpecError

BUILTIN_PYTHON_DOCS = "builtin:python-docs"
# Ids that become file or folder names (SAE ids, activation set ids): one path part,
# never `.` or `..`, no separators, at most 128 characters.
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_id(value: str, field: str) -> str:
    if not SAFE_ID.fullmatch(value):
        raise SpecError(
            f"{value!r} is not an id: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            field=field,
        )
    return value


def is_inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies under it (both resolved here)."""
    return _under(path.resolve(), folder.resolve())


def _under(path: Path, folder: Path) -> bool:
    """`is_inside` for paths already resolved."""
    return path == folder or folder in path.parents


def inside(folder: Path, name: str, field: str) -> Path:
    """folder / name for an id `name`, checked to stay inside `folder` after resolving."""
    target = folder / check_id(name, field)
    if not is_inside(target, folder):
        raise SpecError(f"{name!r} leads outside {folder}", field=field)
    return target


@dataclass(frozen=True)
class CorpusRoots:
    """The folders (or single files) a corpus may be read from."""

    roots: tuple[Path, ...]

    @classmethod
    def of(cls, roots: Iterable[Path | str]) -> CorpusRoots:
        return cls(tuple(Path(r).expanduser().resolve() for r in roots))

    def describe(self) -> str:
        return ", ".join([*(str(r) for r in self.roots), BUILTIN_PYTHON_DOCS])

    def _refuse(self, source: str, field: str) -> SpecError:
        # One text for missing, unreadable and outside: the answer leaks nothing.
        return SpecError(
            f"corpus path {source!r} is not a readable corpus under the corpus roots "
            f"({self.describe()})",
            field=field,
        )

    def resolve(self, source: str, field: str = "corpus") -> Path:
        """The resolved file or folder `source` names, if it is a readable one under a
        root. Relative paths are taken from the first root, never the working folder."""
        raw = Path(source).expanduser()
        if not raw.is_absolute():
            if not self.roots:
                raise self._refuse(source, field)
            raw = self.roots[0] / raw
        try:
            path = raw.resolve()
        except (OSError, RuntimeError):  # a symlink loop
            raise self._refuse(source, field) from None
        if not any(_under(path, r) for r in self.roots):
            raise self._refuse(source, field)
        readable = (path.is_file() and os.access(path, os.R_OK)) or (
            path.is_dir() and os.access(path, os.R_OK | os.X_OK)
        )
        if not readable:
            raise self._refuse(source, field)
        return path

    def resolve_tree(self, source: str, field: str = "corpus") -> Path:
        """`resolve`, and for a folder every file the harvest would read in it checked by
        `check_found` (the reader's own check): admission refuses a symlink that points
        out before a job is queued, not when the harvest meets it."""
        path = self.resolve(source, field)
        if path.is_dir():
            for found in path.rglob("*"):
                if found.is_file():
                    self.check_found(found, source, field)
        return path

    def check_found(self, found: Path, source: str, field: str = "corpus") -> Path:
        """A file met while walking a corpus folder: it too must resolve under a root
        (a symlink in a root that points out is refused). Returns `found`, whose name
        the document ids keep."""
        path = found.resolve()
        if not any(_under(path, r) for r in self.roots):
            raise SpecError(
                f"{found} in corpus path {source!r} resolves outside the corpus roots "
                f"({self.describe()})",
                field=field,
            )
        return found

"""Output files and folders: the permissions a user expects, and places checked before the work.

Writers that go through a temporary file (``tempfile.mkstemp`` / ``mkdtemp``, then a rename)
get private modes (0600 files, 0700 folders) from :mod:`tempfile`. A file or folder that
lit_attn publishes under its final name gets the modes that ``open(path, "w")`` and
``mkdir`` would give it instead: ``0o666 & ~umask`` for files, ``0o777 & ~umask`` for
folders (0644 / 0755 under the usual umask 022), and a file that replaces an existing one
keeps that file's mode, as editors and ``sed -i`` do (docs/reliability.md, "Output file modes").
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from lit_attn.errors import UserError


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux's
    ``/proc/self/status``); elsewhere set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(*, folder: bool = False) -> int:
    """The mode a new file (``0o666 & ~umask``) or folder (``0o777 & ~umask``) gets."""
    return (0o777 if folder else 0o666) & ~current_umask()


def publish_file(temporary: str | os.PathLike, final: str | os.PathLike) -> None:
    """Give ``temporary`` (about to be renamed to ``final``) the mode ``final`` should have:
    the mode of the file it replaces, or the default mode of a new file."""
    try:
        mode = stat.S_IMODE(os.stat(final).st_mode)
    except FileNotFoundError:
        mode = default_mode()
    os.chmod(temporary, mode)


def publish_tree(folder: str | os.PathLike) -> None:
    """Give ``folder`` and everything under it the default modes of new folders and files
    (a staging folder from ``mkdtemp`` is 0700, and some writers make 0600 files)."""
    root = Path(folder)
    file_mode, folder_mode = default_mode(), default_mode(folder=True)
    root.chmod(folder_mode)
    for path in root.rglob("*"):
        if not path.is_symlink():
            path.chmod(folder_mode if path.is_dir() else file_mode)


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (a dangling symbolic link counts)."""
    while not path.exists() and not path.is_symlink() and path != path.parent:
        path = path.parent
    return path


def check_writable_folder(path: str | os.PathLike, option: str, *, fix: str | None = None) -> None:
    """Raise a one-line :class:`UserError` unless ``path`` is a folder lit_attn can write into,
    or a folder it can create (its nearest existing parent is a writable folder).

    Args:
        path: the folder an output goes to (relative to the working directory).
        option: what names it, for the message (e.g. ``trainer.default_root_dir``).
        fix: the fix to print; default "set <option> to a folder you can write to".
    """
    folder = Path(path).expanduser()
    existing = _nearest_existing(folder)
    if existing.exists() and not existing.is_dir():
        raise UserError(
            f"{option} {str(folder)!r} cannot be a folder: {str(existing)!r} is a file; {fix or f'set {option} to a folder'}"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "it is" if existing == folder else f"{str(existing)!r} is"
        raise UserError(
            f"cannot write to {option} {str(folder)!r}: {where} read-only; "
            f"{fix or f'set {option} to a folder you can write to'}"
        )


def check_writable_file(path: str | os.PathLike, option: str) -> None:
    """Raise a one-line :class:`UserError` unless ``path`` can be written as a file: it is not
    a folder, and its folder is writable (or can be created)."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise UserError(f"{option} {str(file)!r} is a folder; pass a file path such as {str(file / 'out.jsonl')!r}")
    folder = file.parent
    existing = _nearest_existing(folder)
    if existing.exists() and not existing.is_dir():
        raise UserError(f"cannot write {option} {str(file)!r}: {str(existing)!r} is a file, not a folder; pass another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"cannot write {option} {str(file)!r}: the folder {str(existing)!r} is read-only; "
            f"give {option} a path in a folder you can write to"
        )

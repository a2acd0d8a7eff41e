"""Re-read files: a change is handed over once, however it was made, and a failed read retries."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cerby_exporter.watched import WatchedFile, stamp_of


def write(path: Path, data: bytes, mtime: int) -> None:
    """Write `data` with a given mtime: some file systems keep mtime to the second, so an edit
    within the same second would otherwise look unchanged."""
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def test_changed_content_is_returned_once(tmp_path: Path) -> None:
    path = tmp_path / "key"
    write(path, b"first\n", 1_700_000_001)
    watched = WatchedFile(path)
    assert watched.changed() == b"first\n"
    assert watched.changed() is None
    assert watched.changed() is None


def test_an_in_place_rewrite_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "key"
    write(path, b"first\n", 1_700_000_001)
    watched = WatchedFile(path)
    assert watched.changed() == b"first\n"
    write(path, b"other\n", 1_700_000_002)  # same size, same inode: only the mtime differs
    assert watched.changed() == b"other\n"
    assert watched.changed() is None
    write(path, b"longer one\n", 1_700_000_002)  # same mtime: the size differs
    assert watched.changed() == b"longer one\n"
    assert watched.changed() is None


def test_a_kubernetes_symlink_swap_is_noticed(tmp_path: Path) -> None:
    """A Secret volume: `key -> ..data/key`, `..data -> ..<timestamp>`; an update writes a new
    timestamped directory and renames a new `..data` link over the old one. The new file has the
    same size and mtime here, so only its inode tells it apart."""
    old = tmp_path / "..2026_01_01_00_00_00.000000001"
    old.mkdir()
    write(old / "key", b"key-one\n", 1_700_000_001)
    (tmp_path / "..data").symlink_to(old.name)
    path = tmp_path / "key"
    path.symlink_to(Path("..data") / "key")
    watched = WatchedFile(path)
    assert watched.changed() == b"key-one\n"

    new = tmp_path / "..2026_01_02_00_00_00.000000002"
    new.mkdir()
    write(new / "key", b"key-two\n", 1_700_000_001)
    (tmp_path / "..data_tmp").symlink_to(new.name)
    (tmp_path / "..data_tmp").replace(tmp_path / "..data")
    shutil.rmtree(old)
    assert watched.changed() == b"key-two\n"
    assert watched.changed() is None


def test_an_unreadable_file_raises_and_is_tried_again(tmp_path: Path) -> None:
    path = tmp_path / "key"
    watched = WatchedFile(path)
    with pytest.raises(FileNotFoundError):
        watched.changed()
    write(path, b"first\n", 1_700_000_001)
    assert watched.changed() == b"first\n"

    path.unlink()
    path.mkdir()  # can be stat'ed, cannot be read
    for _ in range(2):  # a failed read is not taken for the new version: every call tries again
        with pytest.raises(IsADirectoryError):
            watched.changed()
    path.rmdir()
    write(path, b"second\n", 1_700_000_002)
    assert watched.changed() == b"second\n"


def test_stamp_of_a_missing_file_is_none(tmp_path: Path) -> None:
    assert stamp_of(tmp_path / "absent") is None
    write(tmp_path / "present", b"x", 1_700_000_001)
    assert stamp_of(tmp_path / "present") is not None

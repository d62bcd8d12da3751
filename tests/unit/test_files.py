"""Reading files documents name: regular files only, bounded, never blocking."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wardgate.files import read_bounded_file


def test_reads_a_small_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text('{"keys": []}')
    assert read_bounded_file(str(path)) == '{"keys": []}'
    link = tmp_path / "link.json"  # mounted secrets are symlinks
    link.symlink_to(path)
    assert read_bounded_file(str(link)) == '{"keys": []}'


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        read_bounded_file(str(fifo))


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/urandom", "/"])
def test_devices_and_directories_are_refused(path: str) -> None:
    with pytest.raises((ValueError, OSError)):
        read_bounded_file(path)


def test_large_and_binary_files_are_refused(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    with pytest.raises(ValueError, match="larger than 100 bytes"):
        read_bounded_file(str(big), limit=100)
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_bounded_file(str(binary))
    with pytest.raises(OSError):
        read_bounded_file(str(tmp_path / "missing"))

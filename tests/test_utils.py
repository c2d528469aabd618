"""Atomic writes, checksums and size parsing."""

import hashlib
import os

import pytest

from medvol.errors import MedvolError
from medvol.utils import atomic_dir, atomic_path, parse_size_bytes, sha256_file


def test_atomic_path_renames_on_success(tmp_path):
    target = tmp_path / "sub" / "vol.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"data")
        assert not target.exists()
    assert target.read_bytes() == b"data"
    assert [p.name for p in target.parent.iterdir()] == ["vol.nii.gz"]
    old = os.umask(0o022)
    os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o666 & ~old


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.npy"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_only_when_complete(tmp_path):
    target = tmp_path / "cache"
    target.mkdir()
    (target / "old.txt").write_text("old", encoding="utf-8")
    with pytest.raises(ValueError):
        with atomic_dir(target) as tmp:
            (tmp / "new.txt").write_text("new", encoding="utf-8")
            raise ValueError("fail")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new", encoding="utf-8")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


def test_sha256_file_matches_hashlib(tmp_path):
    path = tmp_path / "blob"
    payload = bytes(range(256)) * 5000
    path.write_bytes(payload)
    assert sha256_file(path, chunk=4096) == hashlib.sha256(payload).hexdigest()


@pytest.mark.parametrize("text,expected", [("12GB", 12 * 10**9), ("11GiB", 11 * 2**30),
                                           ("4096MB", 4096 * 10**6), ("1.5kb", 1500), ("100", 100)])
def test_parse_size_bytes(text, expected):
    assert parse_size_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "12XB", "-3GB", "0GB", "GB", "1.2.3GB"])
def test_parse_size_bytes_rejects(text):
    with pytest.raises(MedvolError, match="invalid memory size"):
        parse_size_bytes(text)

"""Folder entries of :mod:`medvol.outputs`: a sub-folder a job hands to other jobs."""

from __future__ import annotations

import json

import pytest

from medvol.errors import MedvolError
from medvol.outputs import MARKER, owned_output


def _study(folder, identity, overwrite=False):
    """A job that claims ``folder``, makes the folder entry ``sub/`` and lets another job write in it."""
    with owned_output(folder, "study", identity, overwrite=overwrite) as out:
        sub = out.path("sub/")
        (sub / "deep").mkdir(exist_ok=True)
        (sub / "deep" / "written_by_a_step.npy").write_bytes(b"x")
        out.record_tree("sub/")
        out.path("top.json").write_text("{}", encoding="utf-8")
        return out


def test_a_folder_entry_is_made_once_and_its_content_is_the_jobs(tmp_path):
    out = _study(tmp_path / "s", {"a": 1})
    assert out.files == sorted(out.files, key=out.files.index)  # recorded in order
    marker = json.loads((tmp_path / "s" / MARKER).read_text(encoding="utf-8"))
    assert {"sub/", "sub/deep/written_by_a_step.npy", "top.json"} <= set(marker["files"])
    # An unfinished step's file (not yet recorded) does not stop the same job from continuing.
    (tmp_path / "s" / "sub" / "deep" / "half_written.npy").write_bytes(b"y")
    again = _study(tmp_path / "s", {"a": 1})
    assert again.continued


def test_a_folder_that_exists_unrecorded_is_refused_as_a_folder_entry(tmp_path):
    (tmp_path / "s" / "sub").mkdir(parents=True)
    with owned_output(tmp_path / "s", "study", {"a": 1}) as out:
        with pytest.raises(MedvolError, match="sub: exists and was not made by medvol"):
            out.path("sub/")
        with pytest.raises(MedvolError, match="not a folder entry"):
            out.record_tree("top/")


def test_overwrite_removes_the_recorded_files_and_keeps_a_users_file_in_the_folder(tmp_path):
    _study(tmp_path / "s", {"a": 1})
    with pytest.raises(MedvolError, match="outputs of another medvol study"):
        _study(tmp_path / "s", {"a": 2})
    (tmp_path / "s" / "sub" / "deep" / "mine.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(MedvolError, match="sub: exists and was not made by medvol"):
        _study(tmp_path / "s", {"a": 2}, overwrite=True)
    assert sorted(p.relative_to(tmp_path / "s").as_posix() for p in (tmp_path / "s").rglob("*")
                  if p.name != MARKER) == ["sub", "sub/deep", "sub/deep/mine.txt"]
    (tmp_path / "s" / "sub" / "deep" / "mine.txt").unlink()
    (tmp_path / "s" / "sub" / "deep").rmdir()
    (tmp_path / "s" / "sub").rmdir()
    out = _study(tmp_path / "s", {"a": 2}, overwrite=True)
    assert (tmp_path / "s" / "sub" / "deep" / "written_by_a_step.npy").is_file() and out.identity == {"a": 2}


def test_overwrite_empties_a_recorded_folder_entry_completely(tmp_path):
    _study(tmp_path / "s", {"a": 1})
    with owned_output(tmp_path / "s", "other", {"b": 1}, overwrite=True) as out:
        assert sorted(out.removed) == ["sub/", "sub/deep/written_by_a_step.npy", "top.json"]
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [MARKER]

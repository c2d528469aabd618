"""The output rules: names stay inside their folder; nothing medvol did not write is replaced."""

import json
import os

import pytest

from medvol.errors import MedvolError
from medvol.outputs import MARKER, check_output, claim_output, owned_output, safe_name, safe_relpath


@pytest.mark.parametrize("name", ["../victim", "./../../victim", "/etc/passwd", "a/b", "a\\b", "..", ".", "",
                                  "x\x00y", 3, None])
def test_safe_name_refuses_names_that_leave_the_folder(tmp_path, name):
    with pytest.raises(MedvolError, match="manifest entry"):
        safe_name(tmp_path, name, "manifest entry")


def test_safe_name_refuses_a_symlink_pointing_out(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "link.npy").symlink_to(tmp_path / "victim.npy")
    with pytest.raises(MedvolError, match="outside"):
        safe_name(tmp_path / "in", "link.npy")
    assert safe_name(tmp_path / "in", "vol_0001.npy") == tmp_path / "in" / "vol_0001.npy"


def test_safe_relpath(tmp_path):
    assert safe_relpath(tmp_path, "a/b.json") == tmp_path / "a" / "b.json"
    for bad in ["a/../../x", "/abs", "a//b", "a/./b"]:
        with pytest.raises(MedvolError):
            safe_relpath(tmp_path, bad)


def test_a_folder_of_foreign_files_is_refused_and_overwrite_keeps_them(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(MedvolError, match="notes.txt"):
        claim_output(out, "generate", {"n": 1})
    claimed = claim_output(out, "generate", {"n": 1}, overwrite=True)
    with pytest.raises(MedvolError, match="not written by medvol"):
        claimed.path("notes.txt")
    claimed.path("sample_0000.nii.gz").write_text("x")
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_the_same_job_continues_another_is_refused_and_overwrite_removes_only_its_files(tmp_path):
    out = tmp_path / "out"
    first = claim_output(out, "generate", {"n": 2})
    first.path("a.nii.gz").write_text("a")
    first.path("sub/b.json").write_text("b")
    again = claim_output(out, "generate", {"n": 2})
    assert again.continued and again.owns("a.nii.gz")
    with pytest.raises(MedvolError, match="another medvol generate"):
        claim_output(out, "generate", {"n": 3})
    (out / "user.txt").write_text("keep")
    with pytest.raises(MedvolError, match="user.txt"):
        claim_output(out, "generate", {"n": 2})
    replaced = claim_output(out, "generate", {"n": 3}, overwrite=True)
    assert sorted(replaced.removed) == ["a.nii.gz", "sub/b.json"]
    assert not (out / "a.nii.gz").exists() and not (out / "sub").exists()
    assert (out / "user.txt").read_text(encoding="utf-8") == "keep"
    assert json.loads((out / MARKER).read_text(encoding="utf-8"))["files"] == []


def test_overwrite_never_removes_an_input_or_a_crafted_marker_entry(tmp_path):
    out = tmp_path / "out"
    claimed = claim_output(out, "study", {"v": 1})
    claimed.path("in.nii.gz").write_text("input")
    marker = json.loads((out / MARKER).read_text(encoding="utf-8"))
    (tmp_path / "victim").write_text("victim")
    marker["files"] += ["../victim"]
    (out / MARKER).write_text(json.dumps(marker))
    result = claim_output(out, "study", {"v": 2}, overwrite=True, inputs=[out / "in.nii.gz"])
    assert (out / "in.nii.gz").read_text(encoding="utf-8") == "input" and (tmp_path / "victim").read_text(encoding="utf-8") == "victim"
    assert result.removed == []


def test_a_file_as_output_and_a_busy_output_are_refused(tmp_path):
    (tmp_path / "x.nii.gz").write_text("")
    with pytest.raises(MedvolError, match="not a folder"):
        claim_output(tmp_path / "x.nii.gz", "generate")
    with owned_output(tmp_path / "o", "generate") as out:
        out.path("a").write_text("a")
        with pytest.raises(MedvolError, match="in use"):
            with owned_output(tmp_path / "o", "generate"):
                pass
    assert sorted(os.listdir(tmp_path / "o")) == [MARKER, "a"]


def test_check_output_refuses_what_claim_would_and_touches_nothing(tmp_path):
    from medvol.outputs import check_output

    assert check_output(tmp_path / "missing", "make", {"s": 1}) == [] and not (tmp_path / "missing").exists()
    out = tmp_path / "out"
    claimed = claim_output(out, "make", {"s": 1})
    with open(claimed.path("a/b.png"), "w") as handle:
        handle.write("x")
    (out / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    for identity in ({"s": 1}, {"s": 2}):  # notes.txt is foreign to any job
        with pytest.raises(MedvolError, match="notes.txt"):
            check_output(out, "make", identity)
    (out / "notes.txt").unlink()
    assert check_output(out, "make", {"s": 1}) == []  # the same job: nothing foreign
    with pytest.raises(MedvolError, match="outputs of another medvol make"):
        check_output(out, "make", {"s": 2})
    (out / "notes.txt").write_text("mine")
    assert check_output(out, "make", {"s": 2}, overwrite=True) == ["notes.txt"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before  # nothing removed
    with pytest.raises(MedvolError, match="not a folder"):
        check_output(out / "notes.txt", "make")


def test_paths_records_many_and_refuses_a_foreign_one_before_recording_any(tmp_path):
    out = tmp_path / "out"
    claimed = claim_output(out, "make", {"s": 1})
    (out / "key.json").write_text("mine")
    with pytest.raises(MedvolError, match="key.json: exists and was not written by medvol"):
        claimed.paths(["page/index.html", "key.json"])
    assert json.loads((out / MARKER).read_text(encoding="utf-8"))["files"] == []
    (out / "key.json").unlink()
    paths = claimed.paths(["page/index.html", "page/images/a.png", "key.json"])
    assert paths[1] == out / "page" / "images" / "a.png" and paths[1].parent.is_dir()
    assert json.loads((out / MARKER).read_text(encoding="utf-8"))["files"] == ["key.json", "page/images/a.png", "page/index.html"]
    with pytest.raises(MedvolError, match="output"):
        claimed.paths(["../escape"])


def test_overwrite_refuses_a_planned_output_that_is_a_users_file_before_removing_anything(tmp_path):
    out = tmp_path / "out"
    claim_output(out, "generate", {"n": 1}).path("a.nii.gz").write_text("a")
    (out / "b.nii.gz").write_text("user")
    with pytest.raises(MedvolError, match="b.nii.gz: exists and was not written by medvol"):
        claim_output(out, "generate", {"n": 2}, overwrite=True, outputs=["a.nii.gz", "b.nii.gz"])
    assert (out / "a.nii.gz").read_text(encoding="utf-8") == "a" and (out / "b.nii.gz").read_text(encoding="utf-8") == "user"
    with pytest.raises(MedvolError, match="b.nii.gz"):
        check_output(out, "generate", {"n": 2}, overwrite=True, outputs=["b.nii.gz"])
    check_output(out, "generate", {"n": 2}, overwrite=True, outputs=["a.nii.gz"])  # would be removed first
    check_output(tmp_path / "new" / "deeper", "generate", {"n": 2})
    assert not (tmp_path / "new").exists()


def test_a_failed_first_job_leaves_no_folder_and_unwritten_entries_are_no_outputs(tmp_path):
    with pytest.raises(RuntimeError):
        with owned_output(tmp_path / "o", "evaluate", {"v": 1}) as out:
            out.path("scores.json")  # recorded, never written
            raise RuntimeError("failed")
    assert not (tmp_path / "o").exists()
    kept = claim_output(tmp_path / "k", "evaluate", {"v": 1})
    kept.path("scores.json")
    claim_output(tmp_path / "k", "evaluate", {"v": 2})  # nothing of v 1 is there: not refused


def test_write_all_on_a_full_disk_leaves_none_of_them(tmp_path, monkeypatch):
    import errno

    import medvol.utils

    real_fsync = medvol.utils.fsync_file

    def fsync(path):
        if ".second.tmp-" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(path)

    monkeypatch.setattr(medvol.utils, "fsync_file", fsync)
    out = claim_output(tmp_path / "o", "evaluate", {"v": 1})
    with pytest.raises(MedvolError, match="cannot write result .*second.json: no space left on device"):
        out.write_all({"first.png": b"png", "second.json": "{}"}, "result")
    assert sorted(os.listdir(tmp_path / "o")) == [MARKER]
    monkeypatch.undo()
    assert [p.name for p in out.write_all({"first.png": b"png", "second.json": "{}"})] == ["first.png", "second.json"]
    assert (tmp_path / "o" / "second.json").read_text(encoding="utf-8") == "{}"


def test_overwrite_keeps_another_jobs_outputs_when_they_hold_this_jobs_inputs(tmp_path):
    """A folder of phantoms (medvol's) used as inputs and as --out: --overwrite keeps them and their
    sidecars; the new job's marker lists only what it writes."""
    out = tmp_path / "X"
    first = claim_output(out, "data phantom", {"n": 1})
    first.path("p.nii.gz").write_text("volume")
    first.path("p.factors.json").write_text("{}")
    claimed = claim_output(out, "study", {"s": 1}, overwrite=True, inputs=[out / "p.nii.gz"])
    assert claimed.removed == [] and (out / "p.factors.json").read_text(encoding="utf-8") == "{}"
    assert json.loads((out / MARKER).read_text(encoding="utf-8"))["files"] == []
    # Without the input, the other job's outputs are removed as usual.
    other = claim_output(tmp_path / "Y", "data phantom", {"n": 1})
    other.path("p.nii.gz").write_text("volume")
    assert claim_output(tmp_path / "Y", "study", {"s": 1}, overwrite=True).removed == ["p.nii.gz"]

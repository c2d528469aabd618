"""An MR scan preprocessed with the CT window is named in one warning line (issue 24, item 8)."""

from __future__ import annotations

import numpy as np
import pytest

from medvol import cli
from medvol.data.io import Volume, write_volume
from medvol.data.phantom import make_phantom
from medvol.data.preprocess import looks_like_hu

pytest.importorskip("SimpleITK")


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Two phantom CTs in HU, and the same anatomy as MR-like scanner units (>= 0, no air below 0)."""
    root = tmp_path_factory.mktemp("modality")
    for i in range(2):
        vol, _ = make_phantom(32, seed=i)
        write_volume(vol, root / "ct" / f"ct_{i}.nii.gz")
        mr = np.clip((vol.array + 1024.0) * 0.8, 0, None).astype(np.float32)
        write_volume(Volume(mr, vol.spacing, vol.origin, vol.direction), root / "mr" / f"mr_{i}.nii.gz")
    return root


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if "do not look like CT in HU" in line]


def test_mr_through_the_ct_window_warns_once(scans, tmp_path, capsys):
    assert cli.main(["preprocess", "--src", str(scans / "mr"), "--dst", str(tmp_path / "c"), "--size", "32",
                     "--workers", "1"]) == 0
    lines = _warnings(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert "2 of 2 volume(s)" in lines[0] and "--modality mr" in lines[0] and "mr_0.nii.gz" in lines[0]


@pytest.mark.parametrize("folder, modality", [("ct", "ct"), ("mr", "mr")])
def test_no_warning_when_the_modality_fits(scans, tmp_path, capsys, folder, modality):
    assert cli.main(["preprocess", "--src", str(scans / folder), "--dst", str(tmp_path / "c"), "--size", "32",
                     "--workers", "1", "--modality", modality]) == 0
    assert _warnings(capsys.readouterr().err) == []


def test_looks_like_hu():
    ct, _ = make_phantom(32, seed=0)
    assert looks_like_hu(ct.array)
    assert not looks_like_hu(np.clip(ct.array + 1024.0, 0, None))
    body = np.full((10, 10, 10), 40.0, dtype=np.float32)  # soft tissue only
    body[0, 0, :9] = -1000.0  # 0.9 % air: not enough
    assert not looks_like_hu(body)
    body[0, 0, 9] = -1000.0  # 1 %
    assert looks_like_hu(body)

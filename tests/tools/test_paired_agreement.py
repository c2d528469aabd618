"""tools/paired_agreement.py: the threshold lung segmentation and the Dice it is scored with,
against shapes whose areas are known by construction."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("paired_agreement_under_test", ROOT / "tools" / "paired_agreement.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _chest(shift=0):
    """A 40 x 40 slice: air (-1000) around a soft-tissue body (0 HU, rows 5..34, columns 3..36) holding
    two lungs (-850): rows 10..19 x columns 8..15 (80 px) and rows 10..19 x columns 24..31 (80 px),
    the right one with a vessel (40 HU) at its centre; returns (HU, true lung mask)."""
    hu = np.full((40, 40), -1000.0)
    hu[5:35, 3:37] = 0.0
    lungs = np.zeros((40, 40), dtype=bool)
    lungs[10 + shift:20 + shift, 8:16] = True
    lungs[10 + shift:20 + shift, 24:32] = True
    hu[lungs] = -850.0
    hu[14 + shift, 27] = 40.0
    return hu, lungs


def test_threshold_finds_the_lungs_not_the_outside_air(tool):
    hu, lungs = _chest()
    seg = tool.lung_threshold(hu)
    assert seg.sum() == 160 and np.array_equal(seg, lungs)  # the vessel filled in, outside air dropped
    volume = np.stack([hu, _chest(shift=5)[0]])
    assert np.array_equal(tool.lung_threshold(volume), np.stack([lungs, _chest(shift=5)[1]]))  # slice-wise


def test_dice_and_agreement_against_areas(tool):
    hu, lungs = _chest()
    left = lungs.copy()
    left[:, 20:] = False  # 80 of 160 px
    assert tool.dice(left, lungs) == pytest.approx(2 * 80 / (80 + 160))
    assert tool.dice(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0
    moved_hu, moved = _chest(shift=5)  # lungs 5 rows lower: 2 x 5 x 8 = 80 px shared
    out = tool.agreement(np.stack([hu, moved_hu]), np.stack([lungs, moved]).astype(np.uint8))
    assert out["mean"] == pytest.approx(1.0)
    assert out["shuffled_mean"] == pytest.approx(2 * 80 / (160 + 160))
    assert tool.to_hu(np.array([-1.0, 1.0, 0.0]), (-1024, 600)).tolist() == [-1024, 600, -212]

"""PNG previews (medvol.preview): the panel layout, a caption drawn above every panel, and
the previews a training run and ``medvol generate`` write (checked against the volumes on disk)."""

from __future__ import annotations

import numpy as np
import pytest

from medvol.cli import main
from medvol import preview as P

pytest.importorskip("PIL")


def read_png(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path))


def cells(image: np.ndarray, n_rows: int, n_cols: int, panel: int, title: bool) -> list[tuple[int, int]]:
    """Top-left corners of the panels of a :func:`P.labelled_grid` of square ``panel`` cells,
    recovered from the layout constants (the tests below check them against the pixels)."""
    font = P._font()
    line_h = int(sum(font.getbbox("Ag")[1::2])) + 2
    band = P.CAPTION_LINES * line_h + 4
    title_h = line_h + P.GAP if title else 0
    assert image.shape == (title_h + n_rows * (band + panel + P.ROW_GAP) + P.GAP,
                           n_cols * panel + (n_cols + 1) * P.GAP)
    return [(title_h + P.GAP + r * (band + panel + P.ROW_GAP) + band, P.GAP + c * (panel + P.GAP))
            for r in range(n_rows) for c in range(n_cols)]


def test_every_panel_is_placed_whole_and_captioned_above_itself():
    # 2 x 3 constant tiles of 32 px: each must come out as one 128 x 128 block of its own value
    tiles = [[(f"row {r} col {c}", np.full((32, 32), 40 + 30 * (3 * r + c), np.uint8)) for c in range(3)]
             for r in range(2)]
    image = P.labelled_grid(tiles, title="a title")
    bare = P.labelled_grid(tiles, title="a title", captions=False)
    assert image.shape == bare.shape
    corners = cells(image, 2, 3, 128, title=True)
    assert len(corners) == 6
    for (top, left), (_, tile) in zip(corners, [t for row in tiles for t in row]):
        assert (image[top:top + 128, left:left + 128] == tile[0, 0]).all()
        # the caption: ink in the band right above this panel, nowhere else in its cell
        above = image[top - 2 * 14:top, left:left + 128] != bare[top - 2 * 14:top, left:left + 128]
        assert above.sum() > 20
    differs = image != bare
    for top, left in corners:
        differs[top - 2 * 14:top, left:left + 128] = False
    differs[: corners[0][0] - 2 * 14 - P.GAP] = False  # the title
    assert not differs.any()  # captions are drawn only in their bands: never over an image


def test_long_captions_are_cut_to_the_panel():
    tiles = [[("a very long caption " * 6, np.zeros((32, 32), np.uint8)), ("b", np.zeros((32, 32), np.uint8))]]
    image = P.labelled_grid(tiles)
    bare = P.labelled_grid(tiles, captions=False)
    (top, left), (_, left2) = cells(image, 1, 2, 128, title=False)
    spill = (image != bare)[:, left + 128:left2]
    assert not spill.any()


def test_central_planes_orientation():
    volume = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    axial, coronal, sagittal = P.central_planes(volume)
    np.testing.assert_array_equal(axial, volume[2])
    np.testing.assert_array_equal(coronal, volume[::-1, 2, :])  # superior at the top
    np.testing.assert_array_equal(sagittal, volume[::-1, :, 3])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("preview") / "run"
    code = main(["train", "--config", "configs/demo.yaml", "--out", str(out),
                 "--model.size", "32", "--model.base_width", "2", "--model.latent_dim", "8",
                 "--data.phantom_n", "4", "--data.workers", "0", "--train.iterations", "2",
                 "--train.mode", "reference", "--train.device", "cpu", "--train.amp", "none",
                 "--train.ckpt_every", "2", "--train.sample_every", "1", "--train.progress", "false"])
    assert code == 0
    return out


def test_training_samples_get_a_labelled_png_and_a_tensorboard_image(run):
    pngs = sorted((run / "samples").glob("slices_*.png"))
    assert [p.stem for p in pngs] == [p.stem for p in sorted((run / "samples").glob("slices_*.npz"))]
    assert len(pngs) == 2
    image = read_png(pngs[-1])
    # two samples: rows real 0, generated 0, real 1, generated 1; three planes each
    corners = cells(image, 4, 3, 128, title=True)
    samples = np.load(pngs[-1].with_suffix(".npz"))
    for row, kind in enumerate(("real", "generated", "real", "generated")):
        # the axial panel is the npz's axial mid-slice (same volume, same slice, same grey levels)
        top, left = corners[3 * row]
        mid = samples[kind][row // 2, 0][:32, :32]
        expected = np.kron(np.round(mid * 255).astype(np.uint8), np.ones((4, 4), np.uint8))
        assert np.abs(image[top:top + 128, left:left + 128].astype(int) - expected).max() <= 1
        band = image[top - 28:top, left:left + 128]
        assert (band < 128).sum() > 20  # its caption
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert "volumes/preview" in events.Tags()["images"]
    shown = events.Images("volumes/preview")
    assert [e.step for e in shown] == [1, 2]
    assert (shown[-1].height, shown[-1].width) == image.shape


def test_generate_writes_a_captioned_preview_of_its_volumes(run, tmp_path):
    from medvol.data.io import read_volume

    out = tmp_path / "gen"
    assert main(["generate", "--ckpt", str(run), "--n", "3", "--out", str(out), "--device", "cpu"]) == 0
    image = read_png(out / "preview.png")
    corners = cells(image, 3, 3, 128, title=True)
    from medvol.eval.images2d import image_files

    assert image_files(str(out)) is None  # still a folder of volumes for medvol evaluate, not of 2D images
    for i in range(3):
        volume = read_volume(out / f"sample_{i:04d}.nii.gz").array
        for j, plane in enumerate(P.central_planes(volume)):
            top, left = corners[3 * i + j]
            expected = np.kron(P.to_grey(plane, (-1024.0, 600.0)), np.ones((4, 4), np.uint8))
            assert np.abs(image[top:top + 128, left:left + 128].astype(int) - expected).max() <= 1
            assert (image[top - 28:top, left:left + 128] < 128).sum() > 20


def test_2d_and_paired_samples_are_captioned_per_channel():
    rng = np.random.default_rng(0)
    real, fake = rng.uniform(-1, 1, (3, 2, 16, 16)), rng.uniform(-1, 1, (3, 2, 16, 16))
    image = P.training_preview(real, fake, 7)
    # 3 samples x (real, generated) x (image, mask 1) = 12 panels, 8 a row
    corners = cells(image, 2, 8, 128, title=True)
    bare = P.labelled_grid([[("", np.zeros((16, 16), np.uint8))] * 8] * 2, title="x", captions=False)
    assert image.shape == bare.shape
    for k, (top, left) in enumerate(corners[:12]):
        sample, kind, channel = k // 4, ("real", "generated")[k // 2 % 2], k % 2
        source = (real, fake)[k // 2 % 2][sample, channel]
        expected = np.kron(P.to_grey(source, (-1, 1)), np.ones((8, 8), np.uint8))
        assert (image[top:top + 128, left:left + 128] == expected).all(), (kind, sample, channel)
        assert (image[top - 28:top, left:left + 128] < 128).sum() > 20
    top, left = corners[12]
    assert (image[top - 28:top + 128, left:] == 255).all()  # no 13th panel
    volumes = P.training_preview(rng.uniform(-1, 1, (1, 3, 8, 8, 8)), rng.uniform(-1, 1, (1, 3, 8, 8, 8)), 1)
    cells(volumes, 6, 3, 128, title=True)  # a row per channel: image, mask 1, mask 2; real then generated


def test_a_model_names_its_preview_channels():
    """cyclegan's real items stack two domains, not an image and a mask: its own captions replace
    "mask 1"; names of the wrong length fall back to the default ones."""
    from medvol.models.gan2d.cyclegan import CycleGAN

    rng = np.random.default_rng(1)
    real, fake = rng.uniform(-1, 1, (2, 2, 16, 16)), rng.uniform(-1, 1, (2, 2, 16, 16))
    default = P.training_preview(real, fake, 3)
    named = P.training_preview(real, fake, 3, channel_names=CycleGAN.preview_channels)
    wrong = P.training_preview(real, fake, 3, channel_names={"real": ("only one",)})
    assert named.shape == default.shape and (wrong == default).all()
    corners = cells(named, 1, 8, 128, title=True)
    for top, left in corners:
        assert (named[top:top + 128, left:left + 128] == default[top:top + 128, left:left + 128]).all()
    captions = [(named[top - 28:top, left:left + 128] != default[top - 28:top, left:left + 128]).any()
                for top, left in corners]
    assert all(captions)

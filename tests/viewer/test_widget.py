"""The generator dock widget: a tiny checkpoint from the trainer, a volume into the viewer."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A one-iteration class-conditional CRF-GAN run at 32^3 (a few seconds on 2 CPU cores)."""
    from medvol.config import load_config
    from medvol.train.trainer import train

    out = tmp_path_factory.mktemp("viewer_run") / "run"
    cfg = load_config(None, [
        "--model.name", "crfgan", "--model.size", "32", "--model.base_width", "2",
        "--model.latent_dim", "8", "--model.num_classes", "2",
        "--data.source", "phantom", "--data.phantom_n", "2", "--data.workers", "0", "--data.batch", "2",
        "--train.iterations", "1", "--train.mode", "reference", "--train.device", "cpu",
        "--train.ckpt_every", "1", "--train.sample_every", "1000", "--train.progress", "false",
        "--train.out", str(out),
    ])
    return train(cfg)


def _wait_generated(qtbot, widget, viewer, n_layers):
    widget.generate_button.native.click()
    assert widget.progress.max == 0, "no busy indicator while generating"
    qtbot.waitUntil(lambda: len(viewer.layers) == n_layers and widget._worker is None, timeout=60_000)


def test_widget_generates_a_volume_from_a_checkpoint(make_napari_viewer, qtbot, tiny_run, tmp_path):
    from medvol.data.io import read_volume
    from medvol.sample.generate import generate_volumes
    from medvol.viewer.app import add_generator_widget

    viewer = make_napari_viewer()
    widget = add_generator_widget(viewer, tiny_run)
    assert widget.model.num_classes == 2 and widget.class_id.max == 1
    widget.seed.value, widget.class_id.value = 3, 1
    _wait_generated(qtbot, widget, viewer, 1)
    layer = viewer.layers[0]
    assert layer.data.shape == (32, 32, 32) and layer.name.endswith("seed 3 class 1")
    assert (widget.progress.value, widget.progress.max) == (1, 1) and "error" not in widget.status.value
    np.testing.assert_allclose(layer.scale, widget.model.spacing)
    assert float(np.std(layer.data)) > 0
    # Same seed and class as `medvol generate --seed 3 --label 1`: the same volume, in HU.
    (path,) = generate_volumes(tiny_run, 1, tmp_path / "gen", seed=3, label=1)
    np.testing.assert_allclose(layer.data, read_volume(path).array, atol=1e-3)
    widget.seed.value = 4
    _wait_generated(qtbot, widget, viewer, 2)
    assert not np.array_equal(viewer.layers[0].data, viewer.layers[1].data)


def test_plugin_widget_loads_a_checkpoint(make_napari_viewer, qtbot, tiny_run):
    from medvol.viewer.widget import GeneratorWidget

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("medvol", "Generate volume")
    assert isinstance(widget, GeneratorWidget)
    assert widget.model is None and not widget.generate_button.enabled
    widget.ckpt.value = tiny_run
    widget.load_button.native.click()
    assert widget.model is not None and widget.generate_button.enabled
    _wait_generated(qtbot, widget, viewer, 1)


def test_view_with_ckpt_docks_the_widget(napari_app, tiny_run, volumes_dir, tmp_path, monkeypatch):
    from medvol.cli import main
    from medvol.viewer import app

    docked = []
    add = app.add_generator_widget
    monkeypatch.setattr(app, "add_generator_widget", lambda viewer, model: docked.append(add(viewer, model)))
    out = tmp_path / "with_widget.png"
    assert main(["view", str(volumes_dir / "a.nii.gz"), "--ckpt", str(tiny_run), "--screenshot", str(out)]) == 0
    assert out.is_file()
    (widget,) = docked
    assert widget.model.num_classes == 2  # (its Qt widgets are gone with the closed viewer)

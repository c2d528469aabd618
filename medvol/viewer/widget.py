"""The medvol dock widget: load a checkpoint, generate a volume from a seed, show it in napari.

This module is GUI-only (magicgui on Qt): it is imported by ``medvol view --ckpt`` and by napari's
plugin machinery, never by the rest of medvol. Generation runs in a worker thread so the viewer
stays responsive; a busy progress bar and a status line say what is happening.
"""

from __future__ import annotations

import os
import time

from magicgui.widgets import Container, FileEdit, Label, ProgressBar, PushButton, SpinBox

from medvol.errors import MedvolError
from medvol.viewer.generator import LoadedModel
from medvol.viewer.layers import image_layer_data


class GeneratorWidget(Container):
    """Dock widget: checkpoint picker, seed, class label, Generate button, progress.

    Args:
        napari_viewer: the viewer that receives generated volumes as image layers.
        ckpt: a checkpoint to load at once (``medvol view --ckpt``), or a :class:`LoadedModel`.
    """

    def __init__(self, napari_viewer, ckpt: str | os.PathLike | LoadedModel | None = None):
        self.viewer = napari_viewer
        self.model: LoadedModel | None = None
        self.ckpt = FileEdit(label="checkpoint", mode="r", filter="*.pt")
        self.load_button = PushButton(text="Load")
        self.seed = SpinBox(label="seed", min=0, max=2**31 - 1, value=0)
        self.class_id = SpinBox(label="class", min=0, max=0, value=0, visible=False)
        self.generate_button = PushButton(text="Generate", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(value="load a checkpoint")
        super().__init__(widgets=[self.ckpt, self.load_button, self.seed, self.class_id,
                                  self.generate_button, self.progress, self.status])
        self.load_button.changed.connect(self._load_clicked)
        self.generate_button.changed.connect(self._generate_clicked)
        self._worker = None
        if isinstance(ckpt, LoadedModel):
            self.set_model(ckpt)
        elif ckpt is not None:
            self.ckpt.value = ckpt
            self.set_model(LoadedModel.load(ckpt))

    def set_model(self, model: LoadedModel) -> None:
        """Use ``model`` for generation; show the class selector only for conditional models."""
        self.model = model
        self.class_id.max = max(0, model.num_classes - 1)
        self.class_id.visible = model.num_classes > 0
        self.generate_button.enabled = True
        kind = f", {model.num_classes} classes" if model.num_classes else ""
        self.status.value = f"loaded {model.name}{kind}"

    def _load_clicked(self) -> None:
        try:
            self.set_model(LoadedModel.load(self.ckpt.value))
        except MedvolError as error:
            self._fail(str(error))

    def _generate_clicked(self) -> None:
        self.start_generation()

    def start_generation(self):
        """Generate in a worker thread; the layer is added when it finishes. Returns the worker."""
        from napari.qt.threading import create_worker

        if self.model is None or self._worker is not None:
            return None
        seed = int(self.seed.value)
        label = int(self.class_id.value) if self.model.num_classes else None
        self.generate_button.enabled = False
        self.progress.min, self.progress.max, self.progress.value = 0, 0, 0  # 0..0 = busy
        self.status.value = f"generating seed {seed}" + (f", class {label}" if label is not None else "")
        started = time.perf_counter()
        worker = create_worker(self.model.generate, seed, label, _start_thread=False)
        worker.returned.connect(lambda volume: self._add(volume, seed, label, time.perf_counter() - started))
        worker.errored.connect(lambda error: self._fail(str(error)))
        worker.finished.connect(self._finished)
        self._worker = worker
        worker.start()
        return worker

    def _add(self, volume, seed: int, label: int | None, seconds: float) -> None:
        name = f"{self.model.name} seed {seed}" + (f" class {label}" if label is not None else "")
        data, kwargs, _ = image_layer_data(volume, window=self.model.window, name=name)
        self.viewer.add_image(data, **kwargs)
        self.status.value = f"{name}: {seconds:.1f} s"

    def _fail(self, message: str) -> None:
        self.status.value = f"error: {message}"
        from napari.utils.notifications import show_error

        show_error(message)

    def _finished(self) -> None:
        self._worker = None
        self.progress.min, self.progress.max, self.progress.value = 0, 1, 1
        self.generate_button.enabled = self.model is not None

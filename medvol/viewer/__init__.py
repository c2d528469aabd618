"""napari viewer for real and generated volumes: ``medvol view``, the napari plugin, screenshots.

Importing this package imports nothing heavy; napari, Qt and torch load inside the functions.

- :mod:`medvol.viewer.presets`: CT window presets in HU, ``--window`` parsing.
- :mod:`medvol.viewer.layers`: files -> napari layer data (names, physical transforms, contrast).
- :mod:`medvol.viewer.app`: :func:`~medvol.viewer.app.view` (the CLI's library side), grid,
  slice views, screenshots.
- :mod:`medvol.viewer.display`: a private Xvfb for headless screenshots; Triton/OpenGL import order.
- :mod:`medvol.viewer.generator`: a checkpoint ready to generate volumes in HU.
- :mod:`medvol.viewer.widget`: the generator dock widget (magicgui).
- :mod:`medvol.viewer.plugin`: the npe2 reader (manifest ``medvol/napari.yaml``).
"""

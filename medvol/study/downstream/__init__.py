"""The downstream segmentation study (``medvol study downstream``): U-Nets trained on real, augmented,
synthetic and mixed data, scored by Dice on held-out real volumes, beside each generator's FID.

- :mod:`~medvol.study.downstream.data`: the real cache's splits and the checked synthetic sources.
- :mod:`~medvol.study.downstream.segment`: the MONAI U-Net, its training, augmentation and Dice.
- :mod:`~medvol.study.downstream.fid`: FID of each source through :mod:`medvol.eval`.
- :mod:`~medvol.study.downstream.study`: :func:`~medvol.study.downstream.study.run_downstream`.
- :mod:`~medvol.study.downstream.report`: results.json, results.md, dice_vs_fid.png.

docs/studies.md describes the protocol.
"""

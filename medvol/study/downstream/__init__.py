"""The downstream studies (``medvol study downstream``): U-Nets (``--task segment``) or classifiers
(``--task classify``) trained on real, augmented, synthetic and mixed data, scored on held-out real
data (Dice and IoU; accuracy, false positives and negatives), beside each generator's FID.

- :mod:`~medvol.study.downstream.data`: the real cache's splits and the checked synthetic sources.
- :mod:`~medvol.study.downstream.segment`: the MONAI U-Net, its training, augmentation, Dice and IoU.
- :mod:`~medvol.study.downstream.classdata`: the classes of real items and the per-class synthetic sources.
- :mod:`~medvol.study.downstream.classify`: the MONAI classifier, its training, augmentation and counts.
- :mod:`~medvol.study.downstream.classify_study`: :func:`~medvol.study.downstream.classify_study.run_classify`
  and its report (results.json, results.md, accuracy_vs_fid.png).
- :mod:`~medvol.study.downstream.fid`: FID of each source through :mod:`medvol.eval`.
- :mod:`~medvol.study.downstream.study`: :func:`~medvol.study.downstream.study.run_downstream`, and the
  set-up both tasks share (the lock, option checks, the training plan, FID).
- :mod:`~medvol.study.downstream.report`: results.json, results.md, dice_vs_fid.png, and the report
  helpers both tasks share.

docs/studies.md describes the protocol.
"""

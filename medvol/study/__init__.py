"""Studies that judge synthetic data beyond metrics (``medvol study …``).

- :mod:`medvol.study.reader`: the two-alternative forced-choice reader-study kit (make a static
  study page from real and generated volumes, score the readers' answers).
- :mod:`medvol.study.recursive`: recursive training on generated volumes (model collapse), scored
  per generation against the real validation split.
- :mod:`medvol.study.downstream`: U-Nets trained on real, augmented, synthetic and mixed data,
  Dice on held-out real volumes beside each generator's FID.
- :mod:`medvol.study.recipe`: one recipe per source study (``configs/studies/``): its data layout
  and the medvol commands that reproduce it, run step by step into one output folder.
"""

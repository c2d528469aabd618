"""The two-alternative forced-choice reader-study kit (``medvol study reader make|score``).

- :mod:`~medvol.study.reader.make`: :func:`~medvol.study.reader.make.make_study`: pairs of slices
  (real vs fake, or model vs model), PNG images, the static page, the separate answer key.
- :mod:`~medvol.study.reader.page`: the self-contained HTML page (template shipped as package data).
- :mod:`~medvol.study.reader.answers`: reading and checking the key and the answer files.
- :mod:`~medvol.study.reader.stats`: exact binomial intervals, d′, TOST, χ², Fleiss' κ.
- :mod:`~medvol.study.reader.score`: :func:`~medvol.study.reader.score.score_study`.

docs/studies.md describes the protocol and the statistics.
"""

"""Sampling: one :class:`~medvol.sample.sampler.Sampler` for any checkpoint, and the writers.

Modules, along the data flow: ``sampler`` (checkpoint -> device, mode -> seeded samples; the one
place the model is asked for samples) -> ``volumes`` (3D NIfTI with geometry and provenance,
preview.png) and ``images`` (2D NIfTI slices, PNG grids, stacked volumes), with ``records`` (the
provenance listing and job identity both keep) -> ``generate`` (``medvol generate``). Evaluation,
the viewer, the studies and the sweep sample through this package and nothing else.
Import the submodules directly.
"""

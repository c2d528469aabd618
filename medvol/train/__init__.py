"""The trainer: data stream, precision/memory modes, checkpoints and exact resume, DDP, logging.

Modules, along the data flow: ``data`` (dataset + resumable sampler) -> ``trainer`` (the loop
around ``GANSystem.train_step``) with ``distributed`` (torchrun, gradient averaging),
``checkpoint`` (atomic, checksummed, exact resume) and ``monitor`` (TensorBoard, progress bar).
Sampling a checkpoint is :mod:`medvol.sample`. Import the submodules directly.
"""

"""One training step of a tiny system on a share of a fixed batch, alone or as one rank under
torchrun (gloo): the crop start and every latent are fixed, so a 2-rank step sees exactly the
samples the 1-process step on the concatenated batch sees. Records each sub-step's synchronised
gradients, the losses and the updated weights.

Run by tests/models/test_objective.py: ``torchrun --nproc_per_node 2 ddp_step_worker.py NAME OUT``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

BATCH, SIZE, START = 4, 32, 12
TINY = dict(base_width=4, latent_dim=32)


def fixed_batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.rand(BATCH, 1, SIZE, SIZE, SIZE, generator=g) * 2 - 1


def run_step(name: str, rank: int = 0, world: int = 1) -> dict:
    """The step on rank's contiguous share of :func:`fixed_batch` (the whole batch when alone)."""
    from medvol.models import build
    from medvol.train.distributed import average_gradients

    # oneDNN picks its convolution kernels by batch size: on this project's AVX-512-BF16 EPYC the
    # 2-sample share and the 4-sample batch round differently, and the difference grows to ~4e-4
    # in HA-GAN's G gradient (measured; it passes with oneDNN off). With oneDNN off a sample is
    # computed the same way whatever the batch, so the comparison tests the objective.
    with torch.backends.mkldnn.flags(enabled=False):
        torch.manual_seed(0)
        system = build(name, SIZE, **TINY)
        share = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        latents = iter(torch.randn(8, BATCH, system.latent_dim, generator=torch.Generator().manual_seed(4)))
        system.sample_latent = lambda batch, generator=None, device=None: next(latents)[share]
        system._sample_crop = lambda generator: START
        grads: dict[str, list[torch.Tensor]] = {}

        def sync(group, params):
            if world > 1:
                average_gradients(params, world)
            grads[group] = [p.grad.detach().clone() for p in params if p.grad is not None]

        system.grad_sync = sync
        # Plain SGD: the update is linear in the gradient, so a wrong scale of the synchronised
        # gradient shows in the weights too (Adam's first step would hide it: it is scale-free).
        optimizers = {k: torch.optim.SGD(m.parameters(), lr=1e-3) for k, m in system.groups().items()}
        losses = system.train_step(fixed_batch()[share], optimizers, 0)
        return {"grads": grads, "losses": {k: float(v) for k, v in losses.items()},
                "params": {k: v.detach().clone() for k, v in system.named_parameters()}}


def main(name: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.save(run_step(name, rank, world), Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])

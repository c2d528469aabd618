"""The published CRF-GAN training iteration, written out here from its equations for the tests.

This is an independent transcription of the procedure of the published ``train.py`` (not a copy
of it, and not medvol's code path): plain ``requires_grad`` freezing as the published script
does, one Adam per network with the published learning rates, the mean-field CRF from its
equations. The networks are taken as callables (medvol's G/D/E with weights transplanted), since
their architecture is checked elsewhere (tests/models/test_param_counts.py); what is under test
is the step around them:

1. crop start c: any voxel 0 .. 7S/8; real crop = real[c : c + S/8]; D's position = c / (7S/8);
   the fake crop is G^H of the embedding slices c//4 .. c//4 + S/32;
2. D: BCE(D(real crop), 1) + BCE(D(G(z1) crop), 0);
3. G: w = max(0.5 - 0.5/60000 * it, 0); fresh z2; logit = w * CRF(G^A(z2), D(fake)) + (1-w) * D(fake);
   BCE(logit, 1); D, E and the CRF frozen;
4. CRF: fresh z3; BCE(CRF(G^A(z3), D(fake3)), 0) with the updated D, plus
   BCE(CRF(E(whole real volume), D(real crop)), 1); only W trained;
5. E: L1(G^H(E(real crop)), real crop).

The random draws come from one ``torch.Generator`` in the order crop, z1, z2, z3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LR = {"G": 1e-4, "D": 4e-4, "E": 1e-4, "crf": 4e-4}


def mean_field(a_inter: torch.Tensor, logit: torch.Tensor, w: torch.Tensor, iterations: int = 10,
               eps: float = 1e-6) -> torch.Tensor:
    """The published CRF: ``a_inter[B, C, D, H, W]``, ``logit[B, 1]``, ``w[N, N]`` -> ``[B, 1]``."""
    b, n = a_inter.shape[0], w.shape[-1]
    feats = a_inter[:, :, :n].reshape(b, n, -1).float()
    lengths = feats.norm(dim=2, keepdim=True)
    similarity = torch.bmm(feats, feats.transpose(1, 2)) / (torch.bmm(lengths, lengths.transpose(1, 2)) + eps)
    w = w.reshape(1, n, n)
    potential = similarity * (w + w.transpose(1, 2)) / 2
    unary = logit.float().unsqueeze(1).expand(b, n, 1)
    current = unary
    for _ in range(iterations):
        q = current.sigmoid().transpose(1, 2)
        current = unary + (q * potential - (1 - q) * potential).sum(dim=2, keepdim=True)
    return current.mean(dim=1)


def _freeze(*nets, on: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad = on


def published_step(G, D, E, W: torch.nn.Parameter, real: torch.Tensor, iteration: int,
                   generator: torch.Generator, optimizers: dict, latent_dim: int) -> dict[str, float]:
    """One published iteration on the modules as given (updated in place); returns the losses.

    ``G`` offers ``embed(z)`` (G^A) and ``render(emb)`` (G^H); ``D(crop, position)`` returns
    ``(logit, class_logits)``; ``E(x)`` the embedding; ``W`` is the CRF compatibility.
    """
    size = real.shape[-1]
    batch = real.shape[0]
    span = size * 7 // 8
    c = int(torch.randint(0, span + 1, (1,), generator=generator))
    real_crop = real[:, :, c : c + size // 8]
    position = torch.full((batch, 1), c / span)

    def fake_crop(emb):
        return G.render(emb[:, :, c // 4 : c // 4 + size // 32])

    def bce(logit, target):
        return F.binary_cross_entropy_with_logits(logit, torch.full_like(logit, target))

    losses = {}
    everything = (G, D, E, W)
    _freeze(*everything[:3], on=False)
    W.requires_grad = False

    # D
    _freeze(D, on=True)
    optimizers["D"].zero_grad()
    z1 = torch.randn(batch, latent_dim, generator=generator)
    loss_real = bce(D(real_crop, position)[0], 1.0)
    loss_fake = bce(D(fake_crop(G.embed(z1)), position)[0], 0.0)
    (loss_real + loss_fake).backward()
    optimizers["D"].step()
    losses.update(D=loss_real + loss_fake, D_real=loss_real, D_fake=loss_fake)

    # G
    _freeze(D, on=False)
    _freeze(G, on=True)
    optimizers["G"].zero_grad()
    z2 = torch.randn(batch, latent_dim, generator=generator)
    a_inter = G.embed(z2)
    d_logit = D(fake_crop(a_inter), position)[0]
    weight = max(0.5 - (0.5 / 60000) * iteration, 0)
    blend = mean_field(a_inter, d_logit, W) * weight + (1 - weight) * d_logit
    loss_g = bce(blend, 1.0)
    loss_g.backward()
    optimizers["G"].step()
    losses["G"] = loss_g

    # CRF
    _freeze(G, on=False)
    W.requires_grad = True
    optimizers["crf"].zero_grad()
    z3 = torch.randn(batch, latent_dim, generator=generator)
    a_fake = G.embed(z3)
    loss_crf_fake = bce(mean_field(a_fake, D(fake_crop(a_fake), position)[0], W), 0.0)
    a_real = E(real)
    loss_crf_real = bce(mean_field(a_real, D(real_crop, position)[0], W), 1.0)
    (loss_crf_real + loss_crf_fake).backward()
    optimizers["crf"].step()
    losses["crf"] = loss_crf_real + loss_crf_fake

    # E
    W.requires_grad = False
    _freeze(E, on=True)
    optimizers["E"].zero_grad()
    loss_e = F.l1_loss(G.render(E(real_crop)), real_crop)
    loss_e.backward()
    optimizers["E"].step()
    losses["E"] = loss_e
    _freeze(*everything[:3], on=True)
    return {key: float(value.detach()) for key, value in losses.items()}


def make_optimizers(G, D, E, W) -> dict:
    betas = (0.0, 0.999)
    return {"G": torch.optim.Adam(G.parameters(), lr=LR["G"], betas=betas),
            "D": torch.optim.Adam(D.parameters(), lr=LR["D"], betas=betas),
            "E": torch.optim.Adam(E.parameters(), lr=LR["E"], betas=betas),
            "crf": torch.optim.Adam([W], lr=LR["crf"], betas=betas)}

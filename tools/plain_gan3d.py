"""A diagnostic: does a plain 3D convolutional GAN learn the phantom cache at all?

    python tools/plain_gan3d.py --cache CACHE32 --out OUT [--iterations 1500] [--width 16] [--batch 8]

A 3D DCGAN with nothing of HA-GAN / CRF-GAN in it (no crop, no encoder, no CRF, no hierarchy):
G maps z (64) through a linear layer to 4^3 and three [nearest x2, conv3x3x3, BatchNorm, ReLU]
stages to 32^3 (tanh); D is three stride-2 conv4^3 + LeakyReLU(0.2) and a linear layer on the whole
volume; BCE, Adam 2e-4 betas (0.5, 0.999). If this learns the phantoms where the medvol models do
not, the difference lies in the models' architecture or procedure; if it does not, in the data or
the scale (docs/learning.md "Diagnosis"). It scores and draws its samples with
``tools/learn_check.py``'s functions (``OUT/numbers.json``, ``OUT/montage.png``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import learn_check  # noqa: E402


def generator(latent: int, w: int) -> nn.Module:
    def stage(cin, cout):
        return [nn.Upsample(scale_factor=2), nn.Conv3d(cin, cout, 3, padding=1), nn.BatchNorm3d(cout), nn.ReLU()]

    return nn.Sequential(nn.Linear(latent, 4 * w * 64), nn.Unflatten(1, (4 * w, 4, 4, 4)),
                         *stage(4 * w, 2 * w), *stage(2 * w, w), *stage(w, w),
                         nn.Conv3d(w, 1, 3, padding=1), nn.Tanh())


def discriminator(w: int) -> nn.Module:
    act = nn.LeakyReLU(0.2)
    return nn.Sequential(nn.Conv3d(1, w, 4, 2, 1), act, nn.Conv3d(w, 2 * w, 4, 2, 1), act,
                         nn.Conv3d(2 * w, 4 * w, 4, 2, 1), act, nn.Flatten(), nn.Linear(4 * w * 64, 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--n", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from medvol.config import DataConfig
    from medvol.train.data import build_dataset

    data = build_dataset(DataConfig(source=args.cache, split="train"), 32)
    real_all = torch.stack([torch.as_tensor(np.asarray(data[i]["image"], dtype=np.float32)) for i in range(len(data))])
    G, D = generator(args.latent, args.width), discriminator(args.width)
    opt_g = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "train.log", "w", encoding="utf-8")
    t0, c0 = time.perf_counter(), time.process_time()
    for it in range(args.iterations):
        real = real_all[torch.randint(len(real_all), (args.batch,))]
        fake = G(torch.randn(args.batch, args.latent))
        d_real, d_fake = D(real), D(fake.detach())
        loss_d = bce(d_real, torch.ones_like(d_real)) + bce(d_fake, torch.zeros_like(d_fake))
        opt_d.zero_grad(), loss_d.backward(), opt_d.step()
        d_gen = D(fake)
        loss_g = bce(d_gen, torch.ones_like(d_gen))
        opt_g.zero_grad(), loss_g.backward(), opt_g.step()
        if it % 25 == 0:
            print(f"it {it}/{args.iterations} D={loss_d.item():.4f} G={loss_g.item():.4f} 0 it/s", file=log, flush=True)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    log.close()
    G.eval()
    with torch.no_grad():
        fake = G(torch.randn(args.n, args.latent, generator=torch.Generator().manual_seed(0))).numpy()
    from medvol.config import TrainConfig

    cfg = TrainConfig()
    cfg.model.name, cfg.model.size = "crfgan", 32
    real = learn_check.real_items(cfg, args.n, 1000)
    train_set = real_all[np.linspace(0, len(real_all) - 1, args.n).round().astype(int)].numpy()
    numbers = {"iterations": args.iterations, "cpu_s": round(cpu, 1), "wall_s": round(wall, 1),
               "width": args.width, "batch": args.batch, **learn_check.scores(fake, real, train_set),
               "factors": learn_check.factor_numbers(fake, real)}
    (out / "numbers.json").write_text(json.dumps(numbers, indent=1))
    learn_check.montage(real, fake, out / "montage.png", f"plain 3D DCGAN width {args.width}, {args.iterations} it")
    learn_check.loss_plot(learn_check.losses_from_log(out / "train.log"), out / "losses.png", "plain 3D DCGAN")
    print(json.dumps({k: numbers[k] for k in ("cpu_s", "ssim_pairwise_fake", "ssim_pairwise_real", "prdc_pooled")}))
    print(json.dumps(learn_check.factor_summary(numbers["factors"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())

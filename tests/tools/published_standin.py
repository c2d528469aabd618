"""A tiny stand-in for the published HA-GAN/CRF-GAN repositories (tests only).

:func:`write_standin` writes a folder shaped like a clone of the published code: a ``train.py``
whose ``main()`` parses the published options, builds its networks with ``.cuda()``, wraps them in
``nn.DataParallel``, logs through tensorboardX/nibabel/nilearn/matplotlib and pulls batches from
``inf_train_gen`` over a ``Volume_Dataset`` loader, plus ``utils.py`` (importing skimage, as the
published one does), ``volume_dataset.py`` and ``models/CRF_GAN_<S>.py``. None of the published
code is copied: the networks are a few small convolutions. It checks what the tool promises:
batches of the training shape, on the device ``.cuda()`` was mapped to.
"""

from __future__ import annotations

from pathlib import Path

TRAIN = '''
import argparse
import os
import json

import numpy as np
import torch
from torch import nn, optim
from tensorboardX import SummaryWriter
import nibabel as nib
from nilearn import plotting
import matplotlib.pyplot as plt
from utils import inf_train_gen
from volume_dataset import Volume_Dataset

torch.manual_seed(0)
torch.cuda.manual_seed_all(0)

parser = argparse.ArgumentParser()
parser.add_argument("--batch-size", default=4, type=int)
parser.add_argument("--workers", default=8, type=int)
parser.add_argument("--img-size", default=256, type=int)
parser.add_argument("--num-iter", default=80000, type=int)
parser.add_argument("--latent-dim", default=8, type=int)
parser.add_argument("--data-dir", type=str)
parser.add_argument("--exp-name", default="run", type=str)
parser.add_argument("--fold", default=0, type=int)
parser.add_argument("--num-class", default=0, type=int)


def main():
    args = parser.parse_args()
    loader = torch.utils.data.DataLoader(Volume_Dataset(data_dir=args.data_dir, fold=args.fold),
                                         batch_size=args.batch_size, num_workers=args.workers)
    gen_load = inf_train_gen(loader)
    from models.CRF_GAN_{size} import Generator, Discriminator
    G = nn.DataParallel(Generator(args.latent_dim, args.img_size).cuda())
    D = nn.DataParallel(Discriminator().cuda())
    g_opt = optim.Adam(G.parameters(), lr=1e-4, betas=(0.0, 0.999))
    d_opt = optim.Adam(D.parameters(), lr=4e-4, betas=(0.0, 0.999))
    loss_f = nn.BCEWithLogitsLoss()
    ones = torch.ones((args.batch_size, 1)).cuda()
    zeros = torch.zeros((args.batch_size, 1)).cuda()
    writer = SummaryWriter("./checkpoint/" + args.exp_name)
    with open(os.path.join("./checkpoint/" + args.exp_name, "configs.json"), "w") as f:
        json.dump(vars(args), f)
    torch.cuda.reset_peak_memory_stats()
    for iteration in range(args.num_iter):
        real, label = gen_load.__next__()
        real = real.float().cuda()
        assert real.shape == (args.batch_size, 1, args.img_size, args.img_size, args.img_size), real.shape
        assert real.device == ones.device, (real.device, ones.device)
        crop = np.random.randint(0, args.img_size * 7 // 8 + 1)
        real_crop = real[:, :, crop:crop + args.img_size // 8]
        D.zero_grad()
        fake = G(torch.randn((args.batch_size, args.latent_dim)).cuda())
        d_loss = loss_f(D(real_crop), ones) + loss_f(D(fake.detach()), zeros)
        d_loss.backward()
        d_opt.step()
        G.zero_grad()
        g_loss = loss_f(D(G(torch.randn((args.batch_size, args.latent_dim)).cuda())), ones)
        g_loss.backward()
        g_opt.step()
        writer.add_scalar("D", d_loss.item(), iteration)
        if iteration % 200 == 0:
            print(iteration, "iter")
            image = nib.Nifti1Image(np.squeeze(fake[0].data.cpu().numpy()), affine=np.eye(4))
            fig = plt.figure()
            plotting.plot_img(image, figure=fig)
            writer.add_figure("Fake", fig, iteration, close=True)


if __name__ == "__main__":
    main()
'''

MODELS = '''
import torch
from torch import nn


class Generator(nn.Module):
    def __init__(self, latent_dim, size):
        super().__init__()
        self.size = size
        self.fc = nn.Linear(latent_dim, 2 * (size // 8) * (size // 4) ** 2)
        self.conv = nn.Conv3d(2, 1, 3, padding=1)

    def forward(self, z):
        s = self.size
        h = self.fc(z).view(z.shape[0], 2, s // 8, s // 4, s // 4)
        h = nn.functional.interpolate(h, size=(s // 8, s, s))
        return torch.tanh(self.conv(h))


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 4, stride=2, padding=1)
        self.fc = nn.Linear(4, 1)

    def forward(self, x):
        h = nn.functional.leaky_relu(self.conv(x), 0.2).mean(dim=(2, 3, 4))
        return self.fc(h)
'''

UTILS = '''
from skimage.transform import resize  # the published utils import it; the loop never uses it


def inf_train_gen(loader):
    while True:
        for batch in loader:
            yield batch
'''

DATASET = '''
import glob

import numpy as np
from torch.utils.data import Dataset


class Volume_Dataset(Dataset):
    def __init__(self, data_dir, mode="train", fold=0, num_class=0):
        self.files = sorted(glob.glob(data_dir + "*.npy"))
        if not self.files:
            raise FileNotFoundError("no volumes in " + str(data_dir))

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        return np.load(self.files[index])[None], -1
'''


def write_standin(root: Path, size: int = 32) -> Path:
    """Write the stand-in repository under ``root`` (created) and return ``root``."""
    root = Path(root)
    (root / "models").mkdir(parents=True, exist_ok=True)
    (root / "train.py").write_text(TRAIN.replace("{size}", str(size)), encoding="utf-8")
    (root / "utils.py").write_text(UTILS, encoding="utf-8")
    (root / "volume_dataset.py").write_text(DATASET, encoding="utf-8")
    (root / "models" / "__init__.py").write_text("", encoding="utf-8")
    (root / "models" / f"CRF_GAN_{size}.py").write_text(MODELS, encoding="utf-8")
    return root

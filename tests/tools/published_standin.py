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


# The learning stand-in (``--learn``): the published interface that tools/bench_vs_published.py's
# learning mode relies on, and the two habits of the published code it has to work around: the
# constructors call ``super(Name, self).__init__()`` and the generator reshapes its first linear's
# output with a literal ``view(-1, 512, 4, 4, 4)`` (512 = 16 x the default width 32).
LEARN_TRAIN = '''
import argparse

import numpy as np
import torch
from torch import nn, optim
from tensorboardX import SummaryWriter
from utils import inf_train_gen
from volume_dataset import Volume_Dataset

torch.manual_seed(0)

parser = argparse.ArgumentParser()
for name, default, kind in (("--batch-size", 4, int), ("--workers", 8, int), ("--img-size", 256, int),
                            ("--num-iter", 80000, int), ("--log-iter", 20, int), ("--latent-dim", 1024, int),
                            ("--lr-g", 1e-4, float), ("--lr-d", 4e-4, float), ("--lr-e", 1e-4, float),
                            ("--fold", 0, int), ("--num-class", 0, int), ("--data-dir", None, str),
                            ("--exp-name", "run", str)):
    parser.add_argument(name, default=default, type=kind)


def main():
    args = parser.parse_args()
    loader = torch.utils.data.DataLoader(Volume_Dataset(data_dir=args.data_dir, fold=args.fold),
                                         batch_size=args.batch_size, drop_last=True, shuffle=False,
                                         num_workers=args.workers)
    gen_load = inf_train_gen(loader)
    from models.CRF_GAN_{size} import Generator, Discriminator, Encoder
    G = Generator(mode="train", latent_dim=args.latent_dim).cuda()
    D = Discriminator().cuda()
    E = Encoder().cuda()
    assert G.fc1.in_features == args.latent_dim
    g_opt = optim.Adam(G.parameters(), lr=args.lr_g, betas=(0.0, 0.999))
    d_opt = optim.Adam(D.parameters(), lr=args.lr_d, betas=(0.0, 0.999))
    assert g_opt.param_groups[0]["lr"] == args.lr_g and d_opt.param_groups[0]["lr"] == args.lr_d
    G, D, E = nn.DataParallel(G), nn.DataParallel(D), nn.DataParallel(E)
    loss_f = nn.BCEWithLogitsLoss()
    ones = torch.ones((args.batch_size, 1)).cuda()
    zeros = torch.zeros((args.batch_size, 1)).cuda()
    writer = SummaryWriter("./checkpoint/" + args.exp_name)
    for iteration in range(args.num_iter):
        real, label = gen_load.__next__()
        real = real.float().cuda()
        assert real.shape == (args.batch_size, 1, args.img_size, args.img_size, args.img_size), real.shape
        assert float(real.min()) >= -1 and float(real.max()) <= 1
        crop = np.random.randint(0, args.img_size * 7 // 8 + 1)
        real_crop = real[:, :, crop:crop + args.img_size // 8]
        D.zero_grad()
        d_real = loss_f(D(real_crop), ones)
        d_fake = loss_f(D(G(torch.randn((args.batch_size, args.latent_dim)).cuda(), crop_idx=crop).detach()), zeros)
        (d_real + d_fake).backward()
        d_opt.step()
        G.zero_grad()
        g_loss = loss_f(D(G(torch.randn((args.batch_size, args.latent_dim)).cuda(), crop_idx=crop)), ones)
        g_loss.backward()
        g_opt.step()
        if iteration % args.log_iter == 0:
            writer.add_scalar("D", (d_real + d_fake).item(), iteration)
            writer.add_scalar("D_real", d_real.item(), iteration)
            writer.add_scalar("D_fake", d_fake.item(), iteration)
            writer.add_scalar("G_fake", g_loss.item(), iteration)
            writer.add_scalar("E", float(iteration), iteration)  # a known curve: the iteration itself


if __name__ == "__main__":
    main()
'''

LEARN_MODELS = '''
import torch
from torch import nn
from torch.nn import functional as F


class Generator(nn.Module):
    def __init__(self, mode="train", latent_dim=1024, channel=32, num_class=0):
        super(Generator, self).__init__()
        self.mode = mode
        self.fc1 = nn.Linear(latent_dim, 4 * 4 * 4 * channel * 16)
        self.conv1 = nn.Conv3d(channel * 16, channel, 3, padding=1)
        self.conv2 = nn.Conv3d(channel, 1, 3, padding=1)

    def forward(self, h, crop_idx=None, class_label=None):
        h = self.fc1(h).view(-1, 512, 4, 4, 4)
        h = F.relu(self.conv1(h))
        h = torch.tanh(self.conv2(F.interpolate(h, scale_factor={scale})))
        if self.mode == "train":
            return h[:, :, crop_idx:crop_idx + h.shape[2] // 8]
        return h


class Discriminator(nn.Module):
    def __init__(self, num_class=0, channel=512):
        super(Discriminator, self).__init__()
        self.conv = nn.Conv3d(1, channel // 16, 4, stride=2, padding=1)
        self.fc = nn.Linear(channel // 16, 1)

    def forward(self, x):
        return self.fc(F.leaky_relu(self.conv(x), 0.2).mean(dim=(2, 3, 4)))


class Encoder(nn.Module):
    def __init__(self, channel=64):
        super(Encoder, self).__init__()
        self.conv = nn.Conv3d(1, channel, 4, stride=2, padding=1)
'''


def write_learning_standin(root: Path, size: int = 32) -> Path:
    """Write the learning stand-in repository under ``root`` (created) and return ``root``."""
    root = Path(root)
    (root / "models").mkdir(parents=True, exist_ok=True)
    (root / "train.py").write_text(LEARN_TRAIN.replace("{size}", str(size)), encoding="utf-8")
    (root / "utils.py").write_text(UTILS, encoding="utf-8")
    (root / "volume_dataset.py").write_text(DATASET, encoding="utf-8")
    (root / "models" / "__init__.py").write_text("", encoding="utf-8")
    (root / "models" / f"CRF_GAN_{size}.py").write_text(LEARN_MODELS.replace("{scale}", str(size // 4)),
                                                          encoding="utf-8")
    return root

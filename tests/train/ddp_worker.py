"""Worker for test_train_ddp.py, run under ``torch.distributed.run``: train, then dump this rank's weights."""

import sys

import torch
import torch.distributed as dist

from medvol.config import load_config
from medvol.train.distributed import init_distributed
from medvol.train.trainer import Trainer

cfg = load_config(sys.argv[1])
info = init_distributed(cfg.train.device)
trainer = Trainer(cfg, info)
trainer.run()
flat = torch.cat([t.detach().flatten() for t in trainer.system.state_dict().values()])
torch.save(flat, f"{cfg.train.out}/weights_rank{info.rank}.pt")
dist.barrier()
dist.destroy_process_group()

"""A toy GAN-style TrainTask for the training-loop tests (importable, and runnable as a script).

Two nets with separate optimisers (D then G each step, like a GAN), a scheduler, dropout (torch RNG),
data augmentation drawn from numpy *and* python ``random`` (so every RNG stream has to be restored for
bit-identical resume), a task-owned generator saved through ``extra_state``, ``sample`` and
``on_eval``. ``--plain`` turns every random part off so a 2-process DDP run can be compared with a
single-process run. ``--sleep`` slows each step so a test can kill the process mid-run.

    python tests/_train_toy.py --out DIR --steps 40 [--sleep 0.05] [--plain] [--hook]
    torchrun --nproc_per_node 2 tests/_train_toy.py --out DIR --steps 6 --plain --hook
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from slimface.train import distributed as D  # noqa: E402
from slimface.train.loop import TrainConfig, Trainer  # noqa: E402

FINGERPRINT = "toy@8 w1"


class ToyData(torch.utils.data.Dataset):
    """``n`` random 1x8x8 'profiles' whose 'frontal' is the mirrored image (a learnable map)."""

    def __init__(self, n: int = 24, size: int = 8, seed: int = 123, aug: bool = True) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 1, size, size, generator=g) * 2 - 1
        self.y = torch.flip(self.x, dims=[3]) * 0.8
        self.aug = aug

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = self.x[i]
        if self.aug:  # numpy and python RNG on purpose
            x = x + 0.05 * float(np.random.randn()) + 0.02 * (random.random() - 0.5)
        return {"profile": x, "frontal": self.y[i], "index": torch.tensor(i)}


class ToyG(nn.Module):
    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Dropout(dropout), nn.Conv2d(8, 1, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.body(x))


class ToyD(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(128, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ToyTask:
    """GAN-shaped task: LSGAN D step, then G step with L1 + 0.1 adversarial loss."""

    def __init__(
        self, seed: int = 0, stochastic: bool = True, fingerprint: str = FINGERPRINT, sleep: float = 0.0
    ) -> None:
        torch.manual_seed(seed)
        self.fingerprint = fingerprint
        self.stochastic = stochastic
        self.sleep = sleep
        self.nets: dict[str, nn.Module] = {"G": ToyG(0.2 if stochastic else 0.0), "D": ToyD()}
        self.optimizers = {
            "G": torch.optim.Adam(self.nets["G"].parameters(), lr=3e-3, betas=(0.5, 0.999)),
            "D": torch.optim.Adam(self.nets["D"].parameters(), lr=1e-3, betas=(0.5, 0.999)),
        }
        self.schedulers = {"G": torch.optim.lr_scheduler.StepLR(self.optimizers["G"], 10, gamma=0.8)}
        self.gen = torch.Generator().manual_seed(seed + 99)
        self.net_types: set[str] = set()

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        G, D_ = self.nets["G"], self.nets["D"]
        self.net_types.add(type(G).__name__)
        x, y = batch["profile"], batch["frontal"]
        if self.stochastic:
            x = x + 0.01 * torch.randn(x.shape, generator=self.gen)
        fake = G(x)
        opt_g, opt_d = self.optimizers["G"], self.optimizers["D"]
        opt_d.zero_grad(set_to_none=True)
        loss_d = ((D_(y) - 1) ** 2).mean() + (D_(fake.detach()) ** 2).mean()
        loss_d.backward()
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        l1 = (fake - y).abs().mean()
        loss_g = l1 + 0.1 * ((D_(fake) - 1) ** 2).mean()
        loss_g.backward()
        opt_g.step()
        self.schedulers["G"].step()
        if self.sleep:
            time.sleep(self.sleep)
        return {"loss_G": loss_g.item(), "loss_D": loss_d.item(), "l1": l1.item()}

    def sample(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([batch["profile"], self.nets["G"](batch["profile"]), batch["frontal"]])

    def extra_state(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_extra_state(self, d: dict) -> None:
        self.gen.set_state(d["gen"])

    def on_eval(self, step: int) -> dict[str, float]:
        data = ToyData(aug=False)
        return {"l1": (self.nets["G"](data.x[:8]) - data.y[:8]).abs().mean().item()}


def make_config(out: Path | str, **kw) -> TrainConfig:
    base = dict(
        steps=40, batch_size=4, log_every=5, ckpt_every=5, sample_every=0, keep_last=3, seed=0,
        deterministic=True, out_dir=Path(out), progress=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--ckpt-every", type=int, default=5)
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--sample-every", type=int, default=0)
    ap.add_argument("--keep-last", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plain", action="store_true", help="no dropout/augmentation/noise")
    ap.add_argument("--hook", action="store_true", help="count forward calls of an inner G layer")
    ap.add_argument("--fingerprint", default=FINGERPRINT)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(1)
    info = D.init_distributed()
    task = ToyTask(args.seed, stochastic=not args.plain, fingerprint=args.fingerprint, sleep=args.sleep)
    calls = {"n": 0}
    if args.hook:
        inner = task.nets["G"].body[0]
        inner.register_forward_hook(lambda m, i, o: calls.__setitem__("n", calls["n"] + 1))
    cfg = make_config(
        args.out, steps=args.steps, batch_size=args.batch_size, ckpt_every=args.ckpt_every,
        log_every=args.log_every, sample_every=args.sample_every, keep_last=args.keep_last,
        seed=args.seed,
    )
    try:
        metrics = Trainer(task, ToyData(args.n, aug=not args.plain), cfg).fit()
        print("final " + json.dumps(metrics), flush=True)
    finally:
        if args.hook:
            Path(args.out, f"hook_rank{info.rank}.json").write_text(
                json.dumps({"calls": calls["n"], "net_types": sorted(task.net_types)})
            )
        D.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

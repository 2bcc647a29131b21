"""A fourth teacher, written from docs/DESIGN.md "Adding a teacher" alone, through the whole pipeline.

Everything the family needs is in this file (generator, discriminator, teacher task, loss weights,
student spec); it registers itself and then runs like the built-in ones: teacher training, supernet,
search, fine-tune and export on toy sizes, and the export loads back through the registry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimface.config import check, from_dict
from slimface.families import StudentSpec, register_family
from slimface.models.blocks import ConvBlock, UpBlock, Widths
from slimface.models.generator import Generator
from slimface.nn.modes import freeze, module_mode
from slimface.nn.super_layers import SuperConv2d, SuperLinear
from slimface.train.distributed import StepRandom
from slimface.train.losses import gan_loss_d, gan_loss_g

NAME = "unet4"


# ---------------------------------------------------------------------------------------- 1. generator
class UNet4Generator(Generator):
    """enc1 (R) -> enc2 (R/2) -> enc3 (R/4) + noise -> dec2 (R/2) -> dec1 (R) -> out; skip from enc1."""

    family = NAME
    noise_dim = 8

    def __init__(self, resolution: int, channels: int, width_mult: float, separable: bool,
                 sub: Mapping[str, int] | None) -> None:
        super().__init__(resolution, channels, width_mult, separable, sub)
        w = Widths(width_mult, sub)
        img = Widths.fixed(channels)
        e1, e2, e3 = w("enc1", 32), w("enc2", 64), w("enc3", 64)
        d2, d1 = w("dec2", 64), w("dec1", 32)
        self.enc1 = ConvBlock(img, e1, 3)  # the image stem stays a normal conv
        self.enc2 = ConvBlock(e1, e2, 3, stride=2, separable=separable)
        self.enc3 = ConvBlock(e2, e3, 3, stride=2, separable=separable)
        self.noise = SuperLinear(Widths.fixed(self.noise_dim), e3)  # z -> one offset per enc3 channel
        self.dec2 = UpBlock(e3, d2)
        self.dec1 = UpBlock(d2, d1)
        self.fuse = ConvBlock(d1 + e1, d1, 3, separable=separable)
        self.out = SuperConv2d(d1, img, 3)

    def forward(self, x: Tensor, landmarks: Tensor | None = None,  # type: ignore[override]
                noise: Tensor | None = None) -> Tensor:
        del landmarks  # this family needs none
        if noise is None:
            noise = (torch.randn(x.shape[0], self.noise_dim, device=x.device) if self.training
                     else x.new_zeros(x.shape[0], self.noise_dim))
        h1 = self.enc1(x)
        h = self.enc3(self.enc2(h1)) + 0.1 * self.noise(noise.to(x.dtype))[..., None, None]
        h = self.dec1(self.dec2(h))
        return torch.tanh(self.out(self.fuse(torch.cat([h, h1], 1))))


# ------------------------------------------------------------------------------------ 2. discriminator
class UNet4Disc(nn.Module):
    conditional = True

    def __init__(self, resolution: int, channels: int, width_mult: float) -> None:
        super().__init__()
        w = Widths(width_mult)
        c1, c2 = w("d1", 32), w("d2", 64)
        self.net = nn.Sequential(ConvBlock(Widths.fixed(2 * channels), c1, 3, 2, norm=False),
                                 ConvBlock(c1, c2, 3, 2), SuperConv2d(c2, Widths.fixed(1), 1))

    def forward(self, profile: Tensor, image: Tensor) -> Tensor:
        return self.net(torch.cat([profile, image], 1))


# ------------------------------------------------------------------------------------- 4. teacher task
@dataclass
class UNet4Loss:
    l1: float = 10.0
    adversarial: float = 1.0

    def validate(self) -> None:
        check(self.l1 >= 0 and self.adversarial >= 0, "loss weights must be >= 0")


class UNet4Task:
    def __init__(self, generator: nn.Module, discriminator: nn.Module, recognizer: nn.Module | None,
                 loss: UNet4Loss, lr: float, seed: int) -> None:
        self.cfg, self.seed = loss, seed
        self.recognizer = freeze(recognizer) if recognizer is not None else None  # unused, but frozen
        self.nets = {"generator": generator, "discriminator": discriminator}
        self.optimizers = {k: torch.optim.Adam(n.parameters(), lr=lr, betas=(0.5, 0.999)) for k, n in self.nets.items()}
        self.schedulers: dict[str, Any] = {}
        self.fingerprint = f"{NAME}@{generator.resolution} w{generator.width_mult}"

    def train_step(self, batch: dict[str, Tensor], step: int) -> dict[str, float]:
        gen, disc = self.nets["generator"], self.nets["discriminator"]
        profile, frontal = batch["profile"], batch["frontal"]
        rnd = StepRandom(self.seed, step, profile.shape[0], profile.device, stream="unet4")
        fake = gen(profile, batch["landmarks"], rnd.randn(UNet4Generator.noise_dim))
        d_loss = gan_loss_d(disc(profile, frontal), disc(profile, fake.detach()))
        self.optimizers["discriminator"].zero_grad(set_to_none=True)
        d_loss.backward()
        self.optimizers["discriminator"].step()
        g_loss = self.cfg.l1 * F.l1_loss(fake, frontal) + self.cfg.adversarial * gan_loss_g(disc(profile, fake))
        self.optimizers["generator"].zero_grad(set_to_none=True)
        g_loss.backward()
        self.optimizers["generator"].step()
        return {"d": float(d_loss.detach()), "g": float(g_loss.detach())}

    @torch.no_grad()
    def sample(self, batch: dict[str, Tensor]) -> Tensor:
        with module_mode(self.nets["generator"]) as gen:
            return torch.cat([batch["profile"], gen(batch["profile"]), batch["frontal"]])


# ------------------------------------------------------------------------------ 5., 6. spec and family
class UNet4Family:
    """A toy U-Net teacher written from docs/DESIGN.md alone."""

    name = NAME
    gan_mode = "bce"
    loss_config = UNet4Loss
    student_spec = StudentSpec(prunable={"enc*": (0.25, 1.0), "dec*": (0.25, 1.0)}, distill=["enc3", "dec1"])

    def build_generator(self, *, resolution: int = 128, channels: int = 3, width_mult: float = 1.0,
                        separable: bool = False, sub: Mapping[str, int] | None = None) -> UNet4Generator:
        return UNet4Generator(resolution, channels, width_mult, separable, sub)

    def build_discriminator(self, *, resolution: int = 128, channels: int = 3, width_mult: float = 1.0) -> UNet4Disc:
        return UNet4Disc(resolution, channels, width_mult)

    def make_teacher_task(self, generator: nn.Module, discriminator: nn.Module, recognizer: nn.Module | None = None,
                          *, num_subjects: int = 0, loss: Any = None, lr: float = 2e-4, seed: int = 0) -> UNet4Task:
        cfg = loss if isinstance(loss, UNet4Loss) else from_dict(UNet4Loss, loss, "loss")
        return UNet4Task(generator, discriminator, recognizer, cfg, lr, seed)


FAMILY = register_family(UNet4Family())


# ------------------------------------------------------------------------------------------------ test
def test_a_fourth_family_runs_from_teacher_to_export(tmp_path: Path) -> None:
    from slimface.config import load_config
    from slimface.families import generator_from_arch, get_family
    from slimface.pipeline import Pipeline
    from slimface.pipeline_config import PipelineConfig

    assert get_family(NAME) is FAMILY
    train = {"steps": 2, "batch_size": 4, "log_every": 1, "ckpt_every": 2}
    cfg_file = tmp_path / "unet4.yaml"
    cfg_file.write_text(json.dumps({
        "name": "unet4", "out_dir": str(tmp_path / "run"), "device": "cpu", "families": [NAME],
        "data": {"kind": "synth", "root": str(tmp_path / "data"), "resolution": 64, "val_subjects": 2,
                 "synth": {"subjects": 8, "train_subjects": 5, "illuminations": 1}},
        "recognizer": {"variant": "lightcnn9", "width_mult": 0.125, "train": train},
        "teachers": {NAME: {"width_mult": 0.25, "loss": {"l1": 5.0}, "train": train}},
        "student": {"sampling": "uniform", "train": train},
        "search": {"budget": "1.5x", "method": "evolution", "population": 4, "generations": 1,
                   "val_batches": 1, "bn_batches": 1},
        "finetune": {"train": train},
        "deploy": {"onnx": False},
        "eval_batch_size": 8,
    }))
    cfg = load_config(PipelineConfig, cfg_file)
    assert isinstance(cfg.teacher(NAME).loss, UNet4Loss) and cfg.teacher(NAME).loss.l1 == 5.0
    pipe = Pipeline(cfg, progress=False)
    results = pipe.run(only=["data", "recognizer", "teacher", "supernet", "search", "finetune", "export"])
    out = tmp_path / "run" / NAME
    for stage in ("teacher", "supernet", "search", "finetune", "export"):
        assert f"{stage}.{NAME}" in results, stage
    assert (out / "teacher" / "generator.safetensors").is_file()
    search = json.loads((out / "search" / "result.json").read_text())
    assert search["macs"] < search["budget_macs"]
    arch = json.loads((out / "export" / "arch.json").read_text())
    assert arch["arch"]["family"] == NAME and arch["config"] == search["config"]
    student = generator_from_arch(arch["arch"]).eval()
    x, lm = student.example_inputs(2)
    assert student(x, lm).shape == x.shape

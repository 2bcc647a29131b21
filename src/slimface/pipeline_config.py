"""The configuration of one `slimface run`: every stage's settings, validated strictly.

Presets live in ``configs/*.yaml`` (tiny for tests, quick for the default run, cpu for better
numbers on this kind of machine, full for GPUs). Any key can be overridden from the CLI with
``--set stage.key=value``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from slimface.config import check, from_dict, to_dict


def _check_width(value: float, name: str) -> None:
    check(0 < value <= 4, f"{name} must be in (0, 4], e.g. 1.0 (official widths) or 0.25; got {value}")


@dataclass
class SynthSettings:
    subjects: int = 337
    train_subjects: int = 200
    illuminations: int = 5
    pitch: bool = False
    gray: bool = False
    seed: int = 0


@dataclass
class DataSettings:
    kind: Literal["synth", "multipie", "caspeal", "folder"] = "synth"
    root: Path = Path("data_cache/synth")
    resolution: int = 64
    channels: int = 3
    synth: SynthSettings = field(default_factory=SynthSettings)
    train_subjects: Optional[int] = None  # None: the dataset's own split (setting 2 / dataset.json)
    val_subjects: int = 20  # held-out *training* identities for search and validation
    policy: Literal["skip", "stop"] = "skip"
    cache_images: bool = True

    def validate(self) -> None:
        check(self.resolution in (64, 128), f"data.resolution must be 64 or 128, got {self.resolution}")
        check(self.channels in (1, 3), f"data.channels must be 1 or 3, got {self.channels}")
        check(self.val_subjects >= 1, "data.val_subjects must be at least 1")


@dataclass
class TrainSettings:
    steps: int = 1000
    batch_size: int = 16
    lr: float = 2e-4
    log_every: int = 50
    ckpt_every: int = 200
    keep_last: int = 2
    channels_last: bool = True  # NHWC training (faster convs on CPU; see TrainConfig)

    def validate(self) -> None:
        check(self.steps >= 1, f"steps must be at least 1, got {self.steps}")
        check(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}")
        check(self.lr > 0, f"lr must be positive, got {self.lr}")


#: which of the (non-validation) training identities a recognizer learns: the loss recognizer and the
#: judge take disjoint halves, so the judge has never seen a face the generators were trained to please
Identities = Literal["all", "first_half", "second_half", "even", "odd"]


@dataclass
class RecognizerSettings:
    """The *loss recognizer*: identity losses, PIM's joint recognizer, distillation, search metric."""

    variant: Literal["lightcnn9", "lightcnn29", "lightcnn29v2"] = "lightcnn9"
    width_mult: float = 0.25
    max_abs_yaw: int = 30  # trained on near-frontal faces only, like public recognizers
    identities: Identities = "all"
    checkpoint: Optional[Path] = None  # instead of training: slimface .safetensors, or an official LightCNN file
    train: TrainSettings = field(default_factory=lambda: TrainSettings(steps=600, batch_size=64, lr=1e-3))

    def validate(self) -> None:
        _check_width(self.width_mult, "recognizer.width_mult")


@dataclass
class JudgeSettings:
    """The independent judges that every reported rank-1 is read from; no training stage, search or
    fine-tune ever receives them (slimface.models.judge)."""

    variant: Literal["lightcnn9", "lightcnn29", "lightcnn29v2"] = "lightcnn29v2"  # not the loss recognizer's
    width_mult: float = 0.25
    max_abs_yaw: int = 30
    identities: Identities = "second_half"
    seed: int = 1  # its own initialisation and batch order, apart from the loss recognizer's
    checkpoint: Optional[Path] = None  # a judge trained elsewhere (safetensors of this architecture)
    dlib: bool = True  # also judge with dlib's ResNet descriptor (trained on real faces)
    dlib_probes_per_group: int = 60  # dlib costs ~0.1 s per image on a CPU: a subset of the probes
    train: TrainSettings = field(default_factory=lambda: TrainSettings(steps=600, batch_size=64, lr=1e-3))

    def validate(self) -> None:
        _check_width(self.width_mult, "judge.width_mult")
        check(self.dlib_probes_per_group >= 0, "judge.dlib_probes_per_group must be >= 0 (0: every probe)")


@dataclass
class TeacherSettings:
    family: Literal["tpgan", "crgan", "pim"] = "tpgan"
    width_mult: float = 0.25
    checkpoint: Optional[Path] = None  # a trained teacher generator to compress instead of training
    loss: dict[str, float] = field(default_factory=dict)
    train: TrainSettings = field(default_factory=TrainSettings)
    # this family's changes to the top-level ``student`` / ``finetune`` settings (its compression
    # recipe), e.g. student: {sampling: uniform, identity_weight: 300}, finetune: {train: {steps: 400}};
    # nested ``train`` keys merge key by key
    student: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        _check_width(self.width_mult, f"teachers.{self.family}.width_mult")


@dataclass
class StudentSettings:
    # uniform: one random sub-network per step (the reference); sandwich: largest + smallest + random;
    # budget: random sub-networks shrunk under a MAC target in [budget_low, 1] x the search budget,
    # so a short run trains the region the search will pick from
    sampling: Literal["uniform", "sandwich", "budget"] = "uniform"
    budget_low: float = 0.5
    # start the supernet from the teacher (copied layers, rank-1 factorised separable convs, channels
    # sorted by importance) rather than from random weights; see slimface.compress.warmstart
    warm_start: bool = False
    recon_weight: float = 100.0
    teacher_weight: float = 0.0  # output distillation: L1 to the teacher's image
    distill_weight: float = 1.0
    gan_weight: float = 1.0
    identity_weight: float = 0.0
    gan_mode: Optional[Literal["bce", "wgan-gp"]] = None  # None: the family's own (bce; wgan-gp for crgan)
    train: TrainSettings = field(default_factory=TrainSettings)

    def validate(self) -> None:
        check(0 < self.budget_low <= 1, f"student.budget_low must be in (0, 1], got {self.budget_low}")


@dataclass
class SearchSettings:
    budget: str = "10x"  # absolute MACs ("2.5G", "300M") or a reduction factor vs the teacher ("10x")
    method: Literal["auto", "exhaustive", "evolution"] = "auto"
    population: int = 100
    generations: int = 5
    parent_ratio: float = 0.25
    mutation_ratio: float = 0.5
    val_batches: int = 4
    bn_batches: int = 4
    latency: Optional[str] = None  # predicted-latency budget on `runtime` ("15ms"), as well as the MACs budget
    runtime: Literal["torch", "ort", "ort-int8"] = "ort"  # whose latency table prices the candidates
    latency_table: Optional[str] = None  # a `slimface latency-table` JSON; default: built in the search dir

    def validate(self) -> None:
        import re

        check(self.latency is None or bool(re.fullmatch(r"\s*[0-9.]+(e-?[0-9]+)?\s*(ms|s|us)?\s*", str(self.latency))),
              f"search.latency must be a duration like 15ms, got {self.latency!r}")
        check(self.population >= 2, f"search.population must be at least 2, got {self.population}")
        check(self.generations >= 0, f"search.generations must be >= 0, got {self.generations}")
        check(0 < self.parent_ratio <= 1, f"search.parent_ratio must be in (0, 1], got {self.parent_ratio}")
        check(0 <= self.mutation_ratio <= 1, f"search.mutation_ratio must be in [0, 1], got {self.mutation_ratio}")
        check(self.val_batches >= 1 and self.bn_batches >= 1, "search.val_batches and bn_batches must be >= 1")


@dataclass
class FinetuneSettings:
    train: TrainSettings = field(default_factory=lambda: TrainSettings(steps=300))


@dataclass
class DeploySettings:
    onnx: bool = True
    int8: bool = True
    calibration_batches: int = 8
    int8_nodes: Literal["all", "faster"] = "all"  # faster: convs stay fp32 where the ort-int8 latency table says int8 is slower


@dataclass
class BenchSettings:
    warmup: int = 100
    runs: int = 100
    threads: Optional[int] = None
    full_size: bool = True  # also time the 128x128 official-width teacher vs its compressed arch
    full_size_warmup: int = 3
    full_size_runs: int = 10


@dataclass
class PipelineConfig:
    name: str = "quick"
    out_dir: Path = Path("runs/quick")
    seed: int = 0
    device: str = "auto"  # "auto" (a CUDA GPU when one is visible), "cpu", "cuda", "cuda:1"
    families: list[str] = field(default_factory=lambda: ["tpgan", "crgan"])
    data: DataSettings = field(default_factory=DataSettings)
    recognizer: RecognizerSettings = field(default_factory=RecognizerSettings)
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    teachers: dict[str, TeacherSettings] = field(default_factory=dict)
    student: StudentSettings = field(default_factory=StudentSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    deploy: DeploySettings = field(default_factory=DeploySettings)
    bench: BenchSettings = field(default_factory=BenchSettings)
    eval_batch_size: int = 64
    eval_probes_per_group: int = 0  # cap probes per pose group (0: every test probe)

    def validate(self) -> None:
        known = {"tpgan", "crgan", "pim"}
        for fam in self.families:
            check(fam in known, f"families: unknown model {fam!r}; choose from {sorted(known)}")
        check(len(self.families) >= 1, "families: name at least one model to compress")
        r, j = self.recognizer, self.judge
        check(not (r.checkpoint and j.checkpoint and Path(r.checkpoint).resolve() == Path(j.checkpoint).resolve()),
              "judge.checkpoint is the loss recognizer's file: a judge must be a network no training saw")
        for name in self.teachers:
            check(name in known, f"teachers: unknown model {name!r}; choose from {sorted(known)}")
            self.student_for(name), self.finetune_for(name)  # a bad per-family key fails at load time

    def teacher(self, family: str) -> TeacherSettings:
        return self.teachers.get(family) or TeacherSettings(family=family)  # type: ignore[arg-type]

    def student_for(self, family: str) -> StudentSettings:
        """The student settings for ``family``: the top-level ``student`` with the family's changes."""
        return _with_changes(self.student, self.teacher(family).student, f"teachers.{family}.student")

    def finetune_for(self, family: str) -> FinetuneSettings:
        """The fine-tune settings for ``family``: the top-level ``finetune`` with the family's changes."""
        return _with_changes(self.finetune, self.teacher(family).finetune, f"teachers.{family}.finetune")


def _with_changes(settings: Any, changes: dict[str, Any], where: str) -> Any:
    """``settings`` (a dataclass) with ``changes`` applied and validated; ``train`` merges key by key."""
    if not changes:
        return settings
    merged = to_dict(settings)
    for key, value in changes.items():
        if key == "train" and isinstance(value, dict):
            merged["train"] = {**merged["train"], **value}
        else:
            merged[key] = value
    return from_dict(type(settings), merged, where=where)

"""The configuration of one `slimface run`: every stage's settings, validated strictly.

Each section is the dataclass its stage consumes, nested as is (no copy in between): ``train:``
sections are :class:`~slimface.train.config.TrainConfig`, ``data.synth`` is
:class:`~slimface.data.synth.SynthConfig`, ``student`` / ``finetune`` / ``search`` are
:mod:`slimface.compress.config`'s, ``teachers.<family>.loss`` is the family's own loss dataclass. A
family's changes to ``student`` / ``finetune`` are merged once, when the config loads, and every
value (the search budget too) is checked then, before any stage or heavy import runs.

Presets live in ``configs/*.yaml`` (tiny for tests, quick for the default run, cpu for better
numbers on this kind of machine, full for GPUs). Any key can be overridden from the CLI with
``--set stage.key=value``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from slimface.compress.config import FinetuneConfig, OFAConfig, SearchConfig
from slimface.config import check, from_dict, with_changes
from slimface.data.synth import SynthConfig
from slimface.evaluate.config import BenchConfig
from slimface.families import family_names, get_family
from slimface.train.config import RUN_FIELDS, TrainConfig


def _check_width(value: float, name: str) -> None:
    check(0 < value <= 4, f"{name} must be in (0, 4], e.g. 1.0 (official widths) or 0.25; got {value}")


@dataclass
class DataSettings:
    kind: Literal["synth", "multipie", "caspeal", "folder"] = "synth"
    root: Path = Path("data_cache/synth")
    resolution: int = 64
    channels: int = 3
    synth: SynthConfig = field(default_factory=SynthConfig)  # kind synth: what is rendered (at ``resolution``)
    train_subjects: Optional[int] = None  # None: the dataset's own split (setting 2 / dataset.json)
    val_subjects: int = 20  # held-out *training* identities for search and validation
    policy: Literal["skip", "stop"] = "skip"
    cache_images: bool = True

    def validate(self) -> None:
        check(self.resolution in (64, 128), f"data.resolution must be 64 or 128, got {self.resolution}")
        check(self.channels in (1, 3), f"data.channels must be 1 or 3, got {self.channels}")
        check(self.val_subjects >= 1, "data.val_subjects must be at least 1")
        check(self.synth.resolution in (None, self.resolution),
              f"data.synth.resolution {self.synth.resolution} differs from data.resolution {self.resolution}; "
              "drop it (the data is rendered at data.resolution)")
        self.synth.resolution = self.resolution


#: which of the (non-validation) training identities a recognizer learns: the loss recognizer and the
#: judge take disjoint halves, so the judge has never seen a face the generators were trained to please
Identities = Literal["all", "first_half", "second_half", "even", "odd"]


def _check_extras(s: "RecognizerSettings | JudgeSettings", where: str) -> None:
    check(s.extra_identities >= 0, f"{where}.extra_identities {s.extra_identities} must be >= 0")
    check(s.extra_offset >= 0, f"{where}.extra_offset {s.extra_offset} must be >= 0")
    check(s.grad_clip >= 0, f"{where}.grad_clip {s.grad_clip} must be >= 0 (0: off)")


def extra_range(s: "RecognizerSettings | JudgeSettings") -> range:
    """Which extra identities (0 = the first id after the dataset's subjects) a recognizer learns."""
    return range(s.extra_offset, s.extra_offset + s.extra_identities)


def learnt_extras(s: "RecognizerSettings | JudgeSettings") -> str:
    """How a recognizer's extra identities read in a report ('' when it learnt none)."""
    r = extra_range(s)
    return f" + {len(r)} identities beyond the dataset (extra {r.start}..{r.stop - 1})" if len(r) else ""


@dataclass
class RecognizerMember:
    """One more network of the loss recognizer (``recognizer.members``), trained by the recognizer
    stage on the loss recognizer's identities (its ``identities``, ``max_abs_yaw``, ``grad_clip`` and
    ``train``) with an architecture and extra faces of its own, or read from ``checkpoint``."""

    # its own initialisation and batch order; another variant adds another architecture, trained with
    # the loss recognizer's recipe (which suits lightcnn9: docs/experiments)
    variant: Literal["lightcnn9", "lightcnn29", "lightcnn29v2"] = "lightcnn9"
    width_mult: float = 0.25
    extra_identities: int = 0
    extra_offset: int = 0
    checkpoint: Optional[Path] = None  # instead of training: a slimface .safetensors of this variant and width


@dataclass
class RecognizerSettings:
    """The *loss recognizer*: identity losses, PIM's joint recognizer, distillation, search metric."""

    variant: Literal["lightcnn9", "lightcnn29", "lightcnn29v2"] = "lightcnn9"
    width_mult: float = 0.25
    max_abs_yaw: int = 30  # trained on near-frontal faces only, like public recognizers
    identities: Identities = "all"
    # built-in data only: also learn this many identities the dataset never contains, as the judge does
    # (see JudgeSettings), the ones from ``extra_offset`` on: a range apart from the judge's, so the two
    # networks share no training face
    extra_identities: int = 0
    extra_offset: int = 0
    grad_clip: float = 0.0  # clip the gradient norm at this value (0: off)
    checkpoint: Optional[Path] = None  # instead of training: slimface .safetensors, or an official LightCNN file
    pretrained: bool = False  # instead of training: the shipped recognizer in ``weights`` (slimface.shipped)
    # more networks beside this one: the students' identity term, validation rank-1 and search metric
    # then read the ensemble (slimface.models.recognizer.EnsembleRecognizer); the teachers' objectives,
    # the int8 check and the report's "loss recognizer" column keep this network alone
    members: list[RecognizerMember] = field(default_factory=list)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=600, batch_size=64, lr=1e-3))

    def validate(self) -> None:
        _check_width(self.width_mult, "recognizer.width_mult")
        _check_extras(self, "recognizer")
        for i in range(len(self.members)):  # checked as the recognizer it stands for
            where, m = f"recognizer.members[{i}]", self.member(i)
            _check_width(m.width_mult, f"{where}.width_mult")
            _check_extras(m, where)
            check(m.checkpoint is None or Path(m.checkpoint).suffix == ".safetensors",
                  f"{where}.checkpoint {m.checkpoint}: give a slimface .safetensors recognizer file")

    def member(self, i: int) -> "RecognizerSettings":
        """Member ``i`` as the settings of a recognizer of its own (what the stage trains or loads)."""
        m = self.members[i]
        return dataclasses.replace(self, variant=m.variant, width_mult=m.width_mult, extra_identities=m.extra_identities,
                                   extra_offset=m.extra_offset, checkpoint=m.checkpoint, pretrained=False, members=[])


@dataclass
class JudgeSettings:
    """The independent judges that every reported rank-1 is read from; no training stage, search or
    fine-tune ever receives them (slimface.models.judge)."""

    variant: Literal["lightcnn9", "lightcnn29", "lightcnn29v2"] = "lightcnn29v2"  # not the loss recognizer's
    width_mult: float = 0.25
    max_abs_yaw: int = 30
    identities: Identities = "second_half"
    # built-in data only: also learn this many identities that the dataset never contains (synth ids
    # after its last subject, near-frontal): a recognizer generalises to unseen faces with the number
    # of identities it learnt, and none of these is a test identity (public LightCNNs learn ~80k people)
    extra_identities: int = 0
    extra_offset: int = 0  # the first extra identity (0: right after the dataset's subjects)
    # clip the gradient norm at this value (0: off): many classes from scratch at lr 1e-3 can spike
    grad_clip: float = 0.0
    seed: int = 1  # its own initialisation and batch order, apart from the loss recognizer's
    checkpoint: Optional[Path] = None  # a judge trained elsewhere (safetensors of this architecture)
    pretrained: bool = False  # instead of training: the shipped judge in ``weights`` (slimface.shipped)
    dlib: bool = True  # also judge with dlib's ResNet descriptor (trained on real faces)
    dlib_probes_per_group: int = 60  # dlib costs ~0.1 s per image on a CPU: a subset of the probes
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=600, batch_size=64, lr=1e-3))

    def validate(self) -> None:
        _check_width(self.width_mult, "judge.width_mult")
        _check_extras(self, "judge")
        check(self.dlib_probes_per_group >= 0, "judge.dlib_probes_per_group must be >= 0 (0: every probe)")


@dataclass
class TeacherSettings:
    """One ``teachers.<family>`` section; the key names the family (slimface.families)."""

    width_mult: float = 0.25
    checkpoint: Optional[Path] = None  # a trained teacher generator to compress instead of training
    # instead of training: the shipped generator + discriminator in ``weights`` (slimface.shipped);
    # --set teachers.<family>.pretrained=false trains the teacher in this run
    pretrained: bool = False
    # train this run's teacher *from* the shipped generator + discriminator (verified as pretrained
    # checks them) for train.steps more steps: pretraining continued without its checkpoints
    init_shipped: bool = False
    # the family's loss weights: a mapping in the file, loaded into the family's ``loss_config``
    # dataclass by PipelineConfig.validate (unknown keys and wrong types fail at load time)
    loss: Any = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    # the last N steps decay the lr linearly to 0 (0: constant): a GAN's images sharpen once the lr
    # falls, and a resumed run with more train.steps decays towards its new end
    lr_decay_steps: int = 0
    # this family's changes to the top-level ``student`` / ``finetune`` settings (its compression
    # recipe), e.g. student: {sampling: uniform, identity_weight: 300}, finetune: {train: {steps: 400}};
    # nested ``train`` keys merge key by key
    student: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)

@dataclass
class DeploySettings:
    onnx: bool = True
    int8: bool = True
    calibration_batches: int = 8
    int8_nodes: Literal["all", "faster"] = "all"  # faster: convs stay fp32 where the ort-int8 latency table says int8 is slower
    # fnmatch patterns of the student's modules kept fp32 in int8, convs and element-wise ops alike
    # (e.g. "decoder.s128.*": the full-resolution output stage, where 8-bit activations of the
    # additions and concatenations cost most of int8's error)
    int8_fp32: list[str] = field(default_factory=list)


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
    student: OFAConfig = field(default_factory=OFAConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    deploy: DeploySettings = field(default_factory=DeploySettings)
    bench: BenchConfig = field(default_factory=BenchConfig)
    eval_batch_size: int = 64
    eval_probes_per_group: int = 0  # cap probes per pose group (0: every test probe)
    # shipped weights (weights/manifest.json, slimface.shipped): what recognizer/judge/teachers.<f>.pretrained
    # load instead of training, after checking checksum, architecture and data fingerprint
    weights: Path = Path("weights")

    @classmethod
    def upgrade_keys(cls, data: dict[str, Any], where: str) -> dict[str, Any]:
        """Older files repeat the family inside its teacher section (``teachers.tpgan.family: tpgan``):
        accepted when it equals the key, refused otherwise (the key is the family)."""
        teachers = data.get("teachers")
        if not isinstance(teachers, dict):
            return data
        fixed = {}
        for name, section in teachers.items():
            if isinstance(section, dict) and "family" in section:
                check(section["family"] == name,
                      f"{where}.teachers.{name}.family is {section['family']!r}, but the key {name!r} names "
                      f"the family; drop the family: line or rename the section")
                section = {k: v for k, v in section.items() if k != "family"}
            fixed[name] = section
        return {**data, "teachers": fixed}

    def validate(self) -> None:
        known = family_names()
        for fam in self.families:
            check(fam in known, f"families: unknown model {fam!r}; choose from {known}")
        check(len(self.families) >= 1, "families: name at least one model to compress")
        r, j = self.recognizer, self.judge
        for where, rec in (("recognizer", r), *((f"recognizer.members[{i}]", r.member(i)) for i in range(len(r.members)))):
            shared = set(extra_range(rec)) & set(extra_range(j))
            check(not shared, f"{where} and judge would both learn extra identities {min(shared, default=0)}.."
                              f"{max(shared, default=0)}: a judge shares no training face with the loss recognizer; "
                              f"set {where}.extra_offset >= {j.extra_offset + j.extra_identities}")
            check(not (rec.checkpoint and j.checkpoint and Path(rec.checkpoint).resolve() == Path(j.checkpoint).resolve()),
                  f"judge.checkpoint is also {where}.checkpoint: a judge must be a network no training saw")
        for where, part in (("recognizer", r), ("judge", j), *((f"teachers.{n}", t) for n, t in self.teachers.items())):
            check(not (part.pretrained and part.checkpoint),
                  f"{where}: pretrained (shipped weights) and checkpoint (a given file) exclude each other; drop one")
        for name in self.teachers:
            check(name in known, f"teachers: unknown model {name!r}; choose from {known}")
        self._students: dict[str, OFAConfig] = {}
        self._finetunes: dict[str, FinetuneConfig] = {}
        for name in [*self.teachers, *(f for f in self.families if f not in self.teachers)]:
            t = self.teachers.setdefault(name, TeacherSettings())
            _check_width(t.width_mult, f"teachers.{name}.width_mult")
            check(not (t.init_shipped and (t.pretrained or t.checkpoint)),
                  f"teachers.{name}.init_shipped trains from the shipped weights; it excludes pretrained (which "
                  f"loads them without training) and checkpoint: set those to false/null")
            check(0 <= t.lr_decay_steps <= t.train.steps,
                  f"teachers.{name}.lr_decay_steps must lie in [0, train.steps = {t.train.steps}], "
                  f"got {t.lr_decay_steps}")
            loss_cls = get_family(name).loss_config
            if not isinstance(t.loss, loss_cls):
                check(isinstance(t.loss, dict), f"teachers.{name}.loss must be a mapping of loss weights")
                t.loss = from_dict(loss_cls, t.loss, f"teachers.{name}.loss")
            # the family's recipe, merged once (a bad key fails here, at load time)
            self._students[name] = with_changes(self.student, t.student, f"teachers.{name}.student")
            self._finetunes[name] = with_changes(self.finetune, t.finetune, f"teachers.{name}.finetune")
        for where, train in self._train_sections():
            for run_field in RUN_FIELDS:
                check(getattr(train, run_field) == getattr(_DEFAULT_TRAIN, run_field),
                      f"{where}.{run_field} is set per stage by slimface run (the top-level seed, --out); "
                      f"drop it from {where}")

    def _train_sections(self) -> list[tuple[str, TrainConfig]]:
        out = [("recognizer.train", self.recognizer.train), ("judge.train", self.judge.train),
               ("student.train", self.student.train), ("finetune.train", self.finetune.train)]
        for name, t in self.teachers.items():
            out.append((f"teachers.{name}.train", t.train))
            out.append((f"teachers.{name}.student.train", self.student_for(name).train))
            out.append((f"teachers.{name}.finetune.train", self.finetune_for(name).train))
        return out

    def teacher(self, family: str) -> TeacherSettings:
        return self.teachers[family]

    def student_for(self, family: str) -> OFAConfig:
        """The supernet stage's settings for ``family``: the top-level ``student`` with the family's changes."""
        return self._students[family]

    def finetune_for(self, family: str) -> FinetuneConfig:
        """The fine-tune stage's settings for ``family``: the top-level ``finetune`` with the family's changes."""
        return self._finetunes[family]


_DEFAULT_TRAIN = TrainConfig()

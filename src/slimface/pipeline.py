"""`slimface run`: every stage from data to report, resumable and skipping finished work.

Stages (in order): ``data``, ``recognizer`` (the loss recognizer), ``judge`` (the independent judge,
which only the evaluate stage reads), then per family ``teacher``, ``supernet``, ``search``,
``finetune``, ``export``; then ``evaluate``, ``bench`` and ``report``. A finished stage writes
``OUT/stages/<stage>.json`` (wall time, outputs, its key and its output files' hashes); re-running
skips it while its key matches. The key covers the stage's settings and the content of the outputs it
reads (slimface.stage_keys), so a changed input re-runs everything downstream of it. An interrupted
training stage resumes from its last checkpoint through the Trainer, but only from checkpoints made
from the same inputs; others are moved aside.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import torch
from torch import nn

from slimface.data.splits import DataBundle
from slimface.errors import ConfigError, DataError
from slimface.fileio import atomic_write
from slimface.pipeline_config import JudgeSettings, PipelineConfig, RecognizerSettings, learnt_extras
from slimface.train.checkpoint import load_weights, save_weights
from slimface.train.config import TrainConfig
from slimface.train.schedule import attach_linear_decay

if TYPE_CHECKING:
    from slimface.evaluate.context import RunContext
    from slimface.models.judge import Judge

log = logging.getLogger("slimface")

TRAIN_STAGES = ("teacher", "supernet", "search", "finetune", "export")
#: stages every torchrun process takes part in (DDP training, sharded search)
DISTRIBUTED_STAGES = ("recognizer", "judge", "teacher", "mobile", "supernet", "search", "finetune")
ALL_STAGES = ("data", "recognizer", "judge", *TRAIN_STAGES, "sensitivity", "mobile", "evaluate", "bench", "report")
#: the supernet task's network of each shipped supernet file (``slimface.shipped`` slot part)
_SUPERNET_NETS = {"generator": "student", "discriminator": "disc", "mappers": "mappers"}


def _say(text: str) -> None:
    from slimface.train import distributed as D

    if D.is_main():
        print(text, flush=True)


class Pipeline:
    def __init__(self, cfg: PipelineConfig, progress: bool = True) -> None:
        self.cfg = cfg
        self.progress = progress
        self.out = Path(cfg.out_dir)
        self.stage_dir = self.out / "stages"
        self._data: DataBundle | None = None
        self._recognizer: nn.Module | None = None
        self._student_recognizer: nn.Module | None = None
        self._judges: dict[str, Judge] | None = None
        self.timings: dict[str, float] = {}
        self._active_key: tuple[str, str] | None = None  # (resume key, why) of the stage running now
        self._told_design: set[str] = set()  # families whose auto conv types were printed
        torch.manual_seed(cfg.seed)
        from slimface.train import distributed as D

        D.init_distributed()  # under torchrun join now, so rank 0 alone renders data, logs and writes markers
        if cfg.device == "auto":
            self.device = D.default_device()
        else:
            if cfg.device.startswith("cuda") and not torch.cuda.is_available():
                raise ConfigError(f"device {cfg.device!r}: no CUDA GPU is visible here; use device: auto or cpu")
            self.device = torch.device(cfg.device)

    # ------------------------------------------------------------------ stage bookkeeping
    def _marker(self, stage: str) -> Path:
        return self.stage_dir / f"{stage}.json"

    def _stage_settings(self, stage: str) -> Any:
        """The config part ``stage`` itself reads (its key adds the content of what it reads)."""
        from slimface import stage_keys

        return stage_keys.own_settings(self.cfg, stage)

    def key_of(self, stage: str):  # noqa: ANN201 - stage_keys.StageKey
        from slimface import stage_keys

        return stage_keys.stage_key(self.cfg, self.out, stage, self.stages())

    def done(self, stage: str) -> dict[str, Any] | None:
        """The stage's marker if it stands for the current settings and inputs, else None."""
        from slimface import stage_keys

        info = stage_keys.read_marker(self.out, stage)
        return info if not stage_keys.stale_reasons(info, self.key_of(stage), self.out) else None

    def status(self) -> list[Any]:
        """Each stage as done / stale (naming what changed) / missing; runs nothing, writes nothing."""
        from slimface import stage_keys

        return stage_keys.status(self.cfg, self.out, self.stages())

    def _run_stage(self, stage: str, fn: Callable[[], dict[str, Any]], force: bool) -> dict[str, Any]:
        from slimface import stage_keys
        from slimface.train import distributed as D

        sk = self.key_of(stage)
        info = stage_keys.read_marker(self.out, stage)
        reasons = stage_keys.stale_reasons(info, sk, self.out)
        if info is not None and not reasons and not force:
            _say(f"[{stage}] up to date ({info['wall_s']:.1f} s earlier run), skipped")
            fresh = stage_keys.refreshed(info, self.out) if D.is_main() else None
            if fresh is not None:  # an output touched or replaced by hand: record it, so it is hashed once
                replaced, _ = stage_keys.changed_files(info, self.out)
                if replaced:
                    _say(f"  {', '.join(replaced)} changed since this stage wrote it: the stages that read it re-run")
                atomic_write(self._marker(stage), json.dumps(fresh, indent=2, default=str))
            D.barrier()
            self.timings[stage] = info["wall_s"]
            return info["outputs"]
        why = "--force" if not reasons else stage_keys.describe(reasons)
        _say(f"[{stage}] running" + (f" ({why})" if info is not None else ""))
        # why checkpoints of another resume key are set aside: the most upstream change that matters
        ckpt_why = next((r.text for r in reasons if not r.resumable and not r.missing), "")
        self._active_key = (sk.resume_key, f"[{stage}] {ckpt_why or 'its inputs or settings changed'}")
        t0 = time.perf_counter()
        try:
            # Under torchrun every rank trains and searches; the rest is rank 0's job.
            outputs = (fn() or {}) if (D.is_main() or stage.partition(".")[0] in DISTRIBUTED_STAGES) else {}
        finally:
            self._active_key = None
        wall = time.perf_counter() - t0
        self.timings[stage] = wall
        if D.is_main():
            self.stage_dir.mkdir(parents=True, exist_ok=True)
            text = json.dumps(stage_keys.new_marker(self.cfg, self.out, sk, outputs, wall), indent=2, default=str)
            atomic_write(self._marker(stage), lambda f: f.write(text.encode()))  # disk full: one-line error
            _say(f"[{stage}] done in {wall:.1f} s")
        D.barrier()
        return outputs

    def stages(self) -> list[str]:
        names = ["data", "recognizer", "judge"]
        for fam in self.cfg.families:
            kinds = list(TRAIN_STAGES)
            if self.cfg.student_for(fam).runs_sensitivity:  # optional: after the teacher, before the supernet
                kinds.insert(kinds.index("supernet"), "sensitivity")
            if self.cfg.student_for(fam).mobile_teacher:  # optional: right before the supernet
                kinds.insert(kinds.index("supernet"), "mobile")
            names += [f"{kind}.{fam}" for kind in kinds]
        return names + ["evaluate", "bench", "report"]

    def run(self, only: Iterable[str] | None = None, force: bool = False) -> dict[str, Any]:
        selected = self.stages()
        if only:
            wanted = set(only)
            unknown = wanted - set(ALL_STAGES) - set(selected)
            if unknown:
                raise ConfigError(f"unknown stage {sorted(unknown)[0]!r}; stages: {', '.join(selected)}")
            selected = [s for s in selected if s in wanted or s.partition(".")[0] in wanted]
        _say(f"slimface run '{self.cfg.name}' -> {self.out}  (stages: {', '.join(selected)})")
        self.out.mkdir(parents=True, exist_ok=True)
        results: dict[str, Any] = {}
        t0 = time.perf_counter()
        for stage in selected:
            kind, _, fam = stage.partition(".")
            fn = getattr(self, f"stage_{kind}")
            results[stage] = self._run_stage(stage, (lambda f=fn, a=fam: f(a) if a else f()), force)
        _say(f"all stages finished in {time.perf_counter() - t0:.1f} s; report: {self.out / 'report' / 'report.md'}")
        return results

    # ------------------------------------------------------------------ shared helpers
    def train_config(self, settings: TrainConfig, out_dir: Path, seed_offset: int = 0) -> TrainConfig:
        """A stage's ``train:`` section with the per-stage fields filled in (``train.config.RUN_FIELDS``)."""
        return dataclasses.replace(
            settings, seed=self.cfg.seed + seed_offset, out_dir=out_dir, progress=self.progress,
            key=self._active_key[0] if self._active_key else "",
            key_reason=self._active_key[1] if self._active_key else "",
        )

    def compression_seed(self, family: str) -> int:
        """The seed of the supernet, search and fine-tune stages: the run's ``seed`` plus ``student.seed``,
        which repeats the compression from the same teacher (the top-level seed also keys the teacher)."""
        return self.cfg.seed + self.cfg.student_for(family).seed

    @property
    def data(self) -> DataBundle:
        if self._data is None:
            self._data = self._load_data()
        return self._data

    def _dataset_root(self) -> Path:
        d = self.cfg.data
        if d.kind != "synth":
            return Path(d.root)
        s = d.synth
        tag = f"n{s.subjects}_r{d.resolution}_i{s.illuminations}{'_p' if s.pitch else ''}{'_g' if s.gray else ''}_s{s.seed}"
        return Path(d.root) / tag

    def _load_data(self, verify: bool = False) -> DataBundle:
        from slimface.data.loaders import load_dataset
        from slimface.data.torch_data import subject_labels

        d = self.cfg.data
        index = load_dataset(d.kind, self._dataset_root(), policy=d.policy, verify=verify)
        train_index, test_index = index.split(d.train_subjects)
        train_subjects = train_index.subjects()
        if len(train_subjects) <= d.val_subjects:
            raise DataError(
                f"{len(train_subjects)} training identities cannot spare {d.val_subjects} for validation; "
                "lower data.val_subjects or add identities"
            )
        val_set = set(train_subjects[-d.val_subjects:])
        fit_index = train_index.filter(subjects=[s for s in train_subjects if s not in val_set])
        val_index = train_index.filter(subjects=sorted(val_set))
        has_pitch = any(r.pitch != 0 for r in index)
        train_pairs = fit_index.pairs(include_frontal=True)
        val_pairs = [p for p in val_index.pairs() if p[0].yaw != 0]
        test_pairs = [p for p in test_index.pairs() if p[0].yaw != 0 or p[0].pitch != 0]
        gallery = test_index.gallery()
        labels = subject_labels(list(fit_index))
        return DataBundle(train_pairs, val_pairs, test_pairs, gallery, list(fit_index), labels, has_pitch,
                          index.report.n_skipped)

    def pair_dataset(self, pairs: list):  # noqa: ANN201
        from slimface.data.torch_data import PairDataset

        d = self.cfg.data
        labels = self.data.subject_labels
        if any(p[0].subject not in labels for p in pairs):
            labels = {**labels, **{s: -1 for s in {p[0].subject for p in pairs} - set(labels)}}
        return PairDataset(pairs, d.resolution, d.channels, labels, cache=d.cache_images, policy=d.policy)

    def batches(self, pairs: list, batch_size: int, limit: int | None = None) -> list[dict[str, torch.Tensor]]:
        """Fixed, ordered batches (evaluation/search); ``limit`` caps the number of batches."""
        from torch.utils.data import DataLoader

        ds = self.pair_dataset(pairs)
        out = []
        for i, batch in enumerate(DataLoader(ds, batch_size=batch_size, shuffle=False)):
            if limit is not None and i >= limit:
                break
            out.append(batch)
        return out

    def search_batches(self) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
        """What the search and the sensitivity analysis score a sub-network on: ``search.val_batches``
        batches of validation pairs and ``search.bn_batches`` of training pairs (batch-norm
        recalibration), each spread over its whole split (every identity, yaw and illumination)."""
        from slimface.data.splits import spread

        sc, bs = self.cfg.search, self.cfg.eval_batch_size
        return (self.batches(spread(self.data.val_pairs, bs * sc.val_batches), bs),
                self.batches(spread(self.data.train_pairs, bs * sc.bn_batches), bs))

    def family_dir(self, family: str) -> Path:
        return self.out / family

    @property
    def recognizer(self) -> nn.Module:
        """The loss recognizer (identity losses, distillation, search metric), frozen."""
        if self._recognizer is None:
            from slimface.nn.modes import freeze

            r = self.cfg.recognizer
            if r.checkpoint and Path(r.checkpoint).suffix == ".safetensors":  # one slimface trained elsewhere
                rec = load_weights(self._build_recognizer(r), Path(r.checkpoint), "recognizer")
            elif r.checkpoint:  # an official LightCNN file
                from slimface.models.recognizer import build_recognizer

                rec = build_recognizer(r.variant, checkpoint=r.checkpoint, channels=self.cfg.data.channels)
            else:
                rec = self._build_recognizer(r)
                load_weights(rec, self.out / "recognizer" / "recognizer.safetensors", "recognizer")
            self._recognizer = freeze(rec.to(self.device))
        return self._recognizer

    @property
    def student_recognizer(self) -> nn.Module:
        """What the students' identity term, validation rank-1 and search metric read: the loss
        recognizer, or it and ``recognizer.members`` as one ensemble (frozen)."""
        if not self.cfg.recognizer.members:
            return self.recognizer
        if self._student_recognizer is None:
            from slimface.models.recognizer import EnsembleRecognizer
            from slimface.nn.modes import freeze

            r = self.cfg.recognizer
            members = [load_weights(self._build_recognizer(r.member(i)), self._member_path(i), f"recognizer member {i}")
                       for i in range(len(r.members))]
            self._student_recognizer = freeze(EnsembleRecognizer([self.recognizer, *members]).to(self.device))
        return self._student_recognizer

    def _recognition_records(self, settings: "RecognizerSettings | JudgeSettings") -> list:
        records = self.data.recognition_records(settings.max_abs_yaw, settings.identities)
        if settings.extra_identities:
            records += self._extra_identity_records(settings)
        return records

    def _extra_identity_records(self, settings: "RecognizerSettings | JudgeSettings") -> list:
        """Near-frontal images of synth identities beyond the dataset's subjects (rendered once next
        to the dataset): more faces for a recognizer, none of them a test identity."""
        from slimface.data.loaders import load_dataset
        from slimface.data.synth import render_identities

        d = self.cfg.data
        count, offset, yaw = settings.extra_identities, settings.extra_offset, settings.max_abs_yaw
        if d.kind != "synth":
            raise ConfigError(f"extra_identities {count}: extra identities are rendered by the built-in "
                              "data only; set it to 0 for a dataset on disk")
        root = self._dataset_root()
        root = root.with_name(f"{root.name}_extra{count}_y{yaw}" + (f"_o{offset}" if offset else ""))
        render_identities(d.synth, count, yaw, root, progress=self.progress, offset=offset)
        return list(load_dataset("synth", root, policy=d.policy))

    def _build_recognizer(self, settings: "RecognizerSettings | JudgeSettings") -> nn.Module:
        """A LightCNN with one class per identity it learns (the subset named by ``settings``)."""
        from slimface.models.recognizer import build_recognizer

        # counted without rendering the extra identities: a shipped judge needs only its shape
        dataset_ids = {r.subject for r in self.data.recognition_records(settings.max_abs_yaw, settings.identities)}
        num_classes = len(dataset_ids) + settings.extra_identities
        return build_recognizer(settings.variant, input_size=self.cfg.data.resolution,
                                width_mult=settings.width_mult, num_classes=num_classes,
                                channels=self.cfg.data.channels)

    def _train_recognizer(self, settings: "RecognizerSettings | JudgeSettings", out: Path, seed_offset: int,
                          weights_name: str) -> dict[str, Any]:
        from slimface.data.torch_data import ImageDataset, subject_labels
        from slimface.train.loop import Trainer
        from slimface.train.recognizer_task import RecognizerTask

        records = self._recognition_records(settings)
        if not records:
            raise DataError(f"no near-frontal images of the {settings.identities} identities to train a recognizer "
                            "on; raise max_abs_yaw or use identities: all")
        model = self._build_recognizer(settings).to(self.device)
        d = self.cfg.data
        ds = ImageDataset(records, d.resolution, d.channels, subject_labels(records), cache=d.cache_images,
                          policy=d.policy)
        task = RecognizerTask(model, lr=settings.train.lr, total_steps=settings.train.steps,
                              grad_clip=settings.grad_clip or None)
        metrics = Trainer(task, ds, self.train_config(settings.train, out, seed_offset)).fit()
        save_weights(model, out / weights_name)
        return {"final": metrics, "identities": len(ds.subject_to_label), "images": len(records)}

    @property
    def judges(self) -> dict[str, "Judge"]:
        """The independent judges, primary first: the separately trained LightCNN, then dlib.
        Only the evaluate stage asks for them; nothing that trains or searches ever does."""
        if self._judges is None:
            from slimface.models.judge import Judge, JudgeInfo
            from slimface.models.recognizer import build_recognizer

            j = self.cfg.judge
            path = Path(j.checkpoint) if j.checkpoint else self.out / "judge" / "judge.safetensors"
            net = load_weights(self._build_recognizer(j), path, "judge")
            kind = f"{j.variant} w{j.width_mult:g}"
            judges = {"judge": Judge(net.to(self.device), JudgeInfo(
                "judge", kind, str(path),
                f"{j.identities} of the training identities{learnt_extras(j)}, seed {j.seed}"))}
            if j.dlib:
                dlib = build_recognizer("dlib", detect=False)
                judges["dlib"] = Judge(dlib, JudgeInfo("dlib", "dlib ResNet (150x150 chips, upsampled)",
                                                       "face_recognition_models package", "real faces (not ours)"))
            self._judges = judges
        return self._judges

    def teacher_generator(self, family: str) -> nn.Module:
        from slimface.families import build_generator
        from slimface.nn.modes import freeze

        t = self.cfg.teacher(family)
        d = self.cfg.data
        gen = build_generator(family, d.resolution, d.channels, t.width_mult)
        path = Path(t.checkpoint) if t.checkpoint else self.family_dir(family) / "teacher" / "generator.safetensors"
        return freeze(load_weights(gen, path, f"{family} teacher").to(self.device))

    # ------------------------------------------------------------------ stages
    def stage_data(self) -> dict[str, Any]:
        d = self.cfg.data
        root = self._dataset_root()
        if d.kind == "synth":
            from slimface.data.synth import render_dataset

            render_dataset(d.synth, root, progress=self.progress)
        self._data = self._load_data(verify=True)  # decode every image once: bad files surface here
        b = self.data
        info = {
            "root": str(root), "train_pairs": len(b.train_pairs), "val_pairs": len(b.val_pairs),
            "test_probes": len(b.test_pairs), "gallery": len(b.gallery),
            "train_identities": len(b.subject_labels),
            "recognizer_images": len(b.recognition_records(self.cfg.recognizer.max_abs_yaw,
                                                           self.cfg.recognizer.identities)),
            "judge_images": len(b.recognition_records(self.cfg.judge.max_abs_yaw, self.cfg.judge.identities)),
            "skipped_files": b.skipped,
        }
        _say("  " + ", ".join(f"{k} {v}" for k, v in info.items() if k != "root"))
        return info

    def _install_shipped(self, stage: str) -> dict[str, Any] | None:
        """The stage's outputs when this config loads its shipped files instead of training (the
        switch its stage key reads too, ``Slot.switched_on``): verified against this run's config and
        written where the stage writes its own (slimface.shipped.install). None: the stage trains."""
        from slimface.shipped import install, slots_of

        slots = slots_of(stage)
        if not slots or not slots[0].switched_on(self.cfg):
            return None
        return install(self, stage, _say)

    def stage_recognizer(self) -> dict[str, Any]:
        r = self.cfg.recognizer
        self._recognizer = self._student_recognizer = None
        if r.checkpoint:
            self.recognizer  # noqa: B018 - loads and validates the official file
            info: dict[str, Any] = {"source": str(r.checkpoint)}
        elif (shipped := self._install_shipped("recognizer")) is not None:
            info = shipped
        else:
            info = self._train_recognizer(r, self.out / "recognizer", 1, "recognizer.safetensors")
        members = []
        for i, m in enumerate(r.members):
            if m.checkpoint:
                members.append({"source": str(m.checkpoint)})
            else:  # each in a folder of its own: its checkpoints resume apart from the others'
                members.append(self._train_recognizer(r.member(i), self._member_path(i).parent, 20 + i,
                                                      self._member_path(i).name))
        if members:
            self.student_recognizer  # noqa: B018 - loads every member, or says which file does not fit
            info["members"] = members
        return info

    def _member_path(self, i: int) -> Path:
        """Where recognizer member ``i`` lives: its checkpoint, or the file the recognizer stage trains."""
        from slimface import stage_keys

        return stage_keys.member_path(self.cfg, self.out, i)

    def stage_judge(self) -> dict[str, Any]:
        """Train (or load) the independent LightCNN judge: its own identities, seed and architecture."""
        j = self.cfg.judge
        if j.checkpoint:
            self._judges = None
            return {"source": str(j.checkpoint), "judges": list(self.judges)}
        if (shipped := self._install_shipped("judge")) is not None:
            self._judges = None
            return shipped
        info = self._train_recognizer(j, self.out / "judge", 10 + j.seed, "judge.safetensors")
        self._judges = None
        return info

    def stage_teacher(self, family: str) -> dict[str, Any]:
        from slimface.families import get_family
        from slimface.train.loop import Trainer

        t = self.cfg.teacher(family)
        d = self.cfg.data
        out = self.family_dir(family) / "teacher"
        if t.checkpoint:
            self.teacher_generator(family)  # validates the given file against the architecture
            return {"source": str(t.checkpoint)}
        if (shipped := self._install_shipped(f"teacher.{family}")) is not None:
            return shipped
        fam = get_family(family)
        gen = fam.build_generator(resolution=d.resolution, channels=d.channels, width_mult=t.width_mult,
                                  separable=False, sub=None)
        disc = fam.build_discriminator(resolution=d.resolution, channels=d.channels, width_mult=t.width_mult)
        init: dict[str, Any] = {}
        if t.init_shipped:  # continued pretraining: start from the verified shipped networks
            init = self._start_from_shipped(f"teacher.{family}", {"generator": gen, "discriminator": disc})
        gen, disc = gen.to(self.device), disc.to(self.device)
        task = fam.make_teacher_task(gen, disc, recognizer=self.recognizer,
                                     num_subjects=len(self.data.subject_labels), loss=t.loss, lr=t.train.lr,
                                     seed=self.cfg.seed)
        attach_linear_decay(task, t.train.steps, t.lr_decay_steps)
        metrics = Trainer(task, self.pair_dataset(self.data.train_pairs), self.train_config(t.train, out, 2)).fit()
        save_weights(gen, out / "generator.safetensors")
        save_weights(disc, out / "discriminator.safetensors")
        return {"final": metrics, **({"init": init} if init else {})}

    def _start_from_shipped(self, stage: str, nets: dict[str, nn.Module]) -> dict[str, Any]:
        """Load the verified shipped files of ``stage`` into ``nets`` (by slot part: generator,
        discriminator, mappers) to train on from them; returns each file's record by role."""
        from slimface.shipped import verified

        init: dict[str, Any] = {}
        for slot, module, record in verified(self, stage):
            nets[slot.part].load_state_dict(module.state_dict())
            init[slot.role] = record
            _say(f"  {slot.label}: starts from shipped {record['file']} (sha256 {record['sha256'][:12]}), verified")
        return init

    def _teacher_disc(self, family: str) -> nn.Module:
        from slimface.families import get_family

        t = self.cfg.teacher(family)
        d = self.cfg.data
        disc = get_family(family).build_discriminator(resolution=d.resolution, channels=d.channels,
                                                      width_mult=t.width_mult)
        path = self.family_dir(family) / "teacher" / "discriminator.safetensors"
        if path.is_file():
            load_weights(disc, path, f"{family} teacher discriminator")
        return disc.to(self.device)

    def _supernet(self, family: str) -> nn.Module:
        """The student supernet with the conv types ``student.separable`` picks (slimface.compress.conv_types)."""
        from slimface.compress.conv_types import auto_normal, build_supernet, read_table

        d = self.cfg.data
        s = self.cfg.student_for(family)
        table = None
        if s.separable == "auto":
            table = read_table(self.family_dir(family) / "sensitivity" / "sensitivity.json", family)
        supernet = build_supernet(family, d.resolution, d.channels, self.cfg.teacher(family).width_mult,
                                  s.separable, table, s.separable_keep, s.max_kernel, s.channel_multiple)
        if table is not None and family not in self._told_design:
            # the fixed list that rebuilds this design without the sensitivity stage (e.g. to ship it)
            self._told_design.add(family)
            convertible = sorted({str(r["name"]) for r in table["rows"] if r.get("change") == "separable"})
            normal = auto_normal(table["rows"], convertible, s.separable_keep)
            same = ("all" if not normal else "none" if len(normal) == len(convertible)
                    else f"[{', '.join('!' + n for n in sorted(normal))}]")
            _say(f"  {family} separable auto keeps {len(normal)} conv(s) normal; the same design as a list: "
                 f"student.separable={same}")
        return supernet.to(self.device)

    def stage_sensitivity(self, family: str) -> dict[str, Any]:
        """Every convertible conv made separable alone, every prunable group shrunk alone, each scored
        after the same short fine-tune (slimface.compress.sensitivity); table, Markdown and plot."""
        from torch.utils.data import DataLoader

        from slimface.compress.sensitivity import analyse
        from slimface.evaluate.figures import plot_sensitivity
        from slimface.families import get_family

        s = self.cfg.student_for(family)
        out = self.family_dir(family) / "sensitivity"

        def on_device(batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in batches]

        seed = self.compression_seed(family)
        loader = DataLoader(self.pair_dataset(self.data.train_pairs), batch_size=s.train.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
        train = on_device([b for b, _ in zip(loader, range(max(1, s.sensitivity_steps)))])
        val, bn = (on_device(b) for b in self.search_batches())
        table = analyse(get_family(family), self.teacher_generator(family), self._teacher_disc(family), s,
                        steps=s.sensitivity_steps, train_batches=train, val_batches=val, bn_batches=bn,
                        recognizer=self.student_recognizer, seed=seed,
                        fit_batches=[(b["profile"], b["landmarks"]) for b in train], progress=_say)
        paths = table.write(out)
        png = plot_sensitivity([r.as_dict() for r in table.rows], out / "sensitivity.png",
                               metric_label=f"{table.metric} metric change", title=f"{family}: one change at a time")
        _say(f"  {len(table.rows)} single changes scored against the teacher's {table.metric} metric "
             f"{table.baseline_metric:.4f}; table {paths['md']}")
        return {"json": str(paths["json"]), "md": str(paths["md"]), "png": str(png), "rows": len(table.rows),
                "baseline_metric": table.baseline_metric}

    def _ofa_task(self, family: str, supernet: nn.Module, fixed: dict[str, int] | None = None):  # noqa: ANN202
        """The supernet stage's task, or with ``fixed`` the fine-tune stage's: the same objective
        (``student``) trained for ``finetune.train``."""
        from slimface.compress.ofa import OFATask
        from slimface.compress.space import ConfigSpace
        from slimface.families import get_family

        s = self.cfg.student_for(family)
        if fixed:  # the fine-tune stage: its own train section and lr schedule (decay over its second half)
            s = dataclasses.replace(s, train=self.cfg.finetune_for(family).train, decay_steps=None)
        fam = get_family(family)
        teacher = self.teacher_generator(family)
        source, disc = teacher, self._teacher_disc(family)
        if s.mobile_teacher:  # distilled from the mobile teacher; budgets stay relative to the teacher
            source, disc = self._mobile_teacher(family)
        return OFATask(
            fam, supernet, source, disc, s,
            space=ConfigSpace.from_supernet(fam, supernet),
            recognizer=self.student_recognizer if s.identity_weight > 0 else None, seed=self.compression_seed(family),
            budget_macs=self.budget_macs(family, teacher) if s.sampling == "budget" and not fixed else 0.0,
            fixed_config=fixed,
        )

    def _mobile_teacher(self, family: str) -> tuple[nn.Module, nn.Module]:
        """The mobile stage's generator (a supernet, full width, frozen) and discriminator."""
        from slimface.nn.modes import freeze

        d = self.family_dir(family) / "mobile"
        net = load_weights(self._supernet(family), d / "generator.safetensors", f"{family} mobile teacher")
        disc = load_weights(self._teacher_disc(family), d / "discriminator.safetensors",
                            f"{family} mobile teacher discriminator")
        return freeze(net), disc

    def _val_rank1(self, max_probes: int = 512):  # noqa: ANN202
        """Validation rank-1 by the loss recognizer (slimface.compress.mobile.ValidationRank1): up to
        ``max_probes`` validation profiles spread over the split, gallery one frontal per identity."""
        from slimface.compress.mobile import ValidationRank1

        pairs = self.data.val_pairs
        pairs = pairs[:: max(1, math.ceil(len(pairs) / max_probes))]
        ds = self.pair_dataset(pairs)
        first: dict[Any, int] = {}
        for i, p in enumerate(pairs):
            first.setdefault(p[0].subject, i)
        gallery = torch.stack([ds[i]["frontal"] for i in first.values()]).to(self.device)
        probes = [{k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in b.items()}
                  for b in self.batches(pairs, self.cfg.eval_batch_size)]
        return ValidationRank1(probes, [p[0].subject for p in pairs], gallery, list(first), self.student_recognizer)

    def stage_mobile(self, family: str) -> dict[str, Any]:
        """The student design at full width trained with the student objective until its validation
        rank-1 is within ``student.mobile_gap`` of the teacher's (slimface.compress.mobile), or the
        shipped one (``student.mobile_pretrained``)."""
        from slimface.compress.mobile import MobileTeacherTask
        from slimface.families import get_family
        from slimface.train.loop import Trainer

        out = self.family_dir(family) / "mobile"
        s = self.cfg.student_for(family)
        if (shipped := self._install_shipped(f"mobile.{family}")) is not None:
            return shipped
        if s.seed:
            torch.manual_seed(self.compression_seed(family))
        net = self._supernet(family)
        teacher = self.teacher_generator(family)
        rank1 = self._val_rank1()
        teacher_rank1 = rank1(teacher)
        train = dataclasses.replace(s.train, steps=s.mobile_steps, eval_every=s.mobile_eval_every)
        task = MobileTeacherTask(
            get_family(family), net, teacher, self._teacher_disc(family), dataclasses.replace(s, train=train, decay_steps=None),
            rank1=rank1, teacher_rank1=teacher_rank1, gap=s.mobile_gap,
            recognizer=self.student_recognizer if s.identity_weight > 0 else None, seed=self.compression_seed(family),
        )
        if s.warm_start:
            self._warm_start(family, net, task.teacher)
        metrics = Trainer(task, self.pair_dataset(self.data.train_pairs), self.train_config(train, out, 5 + s.seed)).fit()
        save_weights(net, out / "generator.safetensors")
        save_weights(task.nets["disc"], out / "discriminator.safetensors")
        mobile_rank1 = metrics["eval/rank1"] if "eval/rank1" in metrics else rank1(net, task.fixed)
        _say(f"  mobile teacher: validation rank-1 {mobile_rank1:.2f} vs teacher {teacher_rank1:.2f} "
             f"after {int(metrics['step'])} steps (loss recognizer, {len(rank1.probe_subjects)} probes)")
        return {"final": metrics, "rank1": mobile_rank1, "teacher_rank1": teacher_rank1, "steps": int(metrics["step"]),
                "converged": mobile_rank1 >= teacher_rank1 - s.mobile_gap}

    def _warm_start(self, family: str, supernet: nn.Module, teacher: nn.Module) -> None:
        """Fill ``supernet`` from the teacher (copied layers, factorised separable convs, sorted channels;
        ``student.warm_start_fit: activations`` fits the separable convs on training profiles)."""
        from slimface.compress.space import ConfigSpace
        from slimface.compress.warmstart import warm_start
        from slimface.families import get_family

        student = self.cfg.student_for(family)
        batches = None
        if student.warm_start_fit == "activations":  # fit separable convs on training profiles
            from torch.utils.data import DataLoader

            n = student.warm_start_fit_images
            loader = DataLoader(self.pair_dataset(self.data.train_pairs), batch_size=min(32, n), shuffle=True,
                                generator=torch.Generator().manual_seed(self.compression_seed(family)))
            batches = ((b["profile"].to(self.device), b["landmarks"].to(self.device)) for b in loader)
        groups = ConfigSpace.from_supernet(get_family(family), supernet).widths
        report = warm_start(supernet, teacher, groups, batches=batches, images=student.warm_start_fit_images)
        _say(f"  warm start from the {family} teacher: {report.summary()}")

    def stage_supernet(self, family: str) -> dict[str, Any]:
        """The student supernet distilled from the teacher (or the mobile teacher) under ``student``,
        or the shipped one (``student.supernet_pretrained``)."""
        from slimface.train.loop import Trainer

        out = self.family_dir(family) / "supernet"
        student = self.cfg.student_for(family)
        if (shipped := self._install_shipped(f"supernet.{family}")) is not None:
            return shipped
        if student.seed:  # another compression seed: the layers the teacher does not fill start elsewhere too
            torch.manual_seed(self.compression_seed(family))
        supernet = self._supernet(family)
        task = self._ofa_task(family, supernet)
        init: dict[str, Any] = {}
        if student.supernet_init_shipped:  # continued pretraining: the shipped supernet, mappers and D
            from slimface.nn.modes import unwrap

            init = self._start_from_shipped(f"supernet.{family}",
                                            {part: unwrap(task.nets[n]) for part, n in _SUPERNET_NETS.items()})
        elif student.mobile_teacher:  # its exact copy, channels sorted by importance for pruning
            from slimface.compress.warmstart import sort_channels

            supernet.load_state_dict(task.teacher.state_dict())
            sort_channels(supernet, task.space.widths)
            _say(f"  supernet starts from the {family} mobile teacher (channels sorted by importance)")
        elif student.warm_start:
            self._warm_start(family, supernet, task.teacher)
        metrics = Trainer(task, self.pair_dataset(self.data.train_pairs),
                          self.train_config(student.train, out, 3 + student.seed)).fit()
        save_weights(supernet, out / "supernet.safetensors")
        save_weights(task.nets["mappers"], out / "mappers.safetensors")
        save_weights(task.nets["disc"], out / "discriminator.safetensors")
        return {"final": metrics, **({"init": init} if init else {})}

    def budget_macs(self, family: str, teacher: nn.Module | None = None) -> float:
        """The search budget in MACs (``search.budget``, parsed when the config loaded): absolute, or
        relative to the teacher (``teacher``: the loaded teacher generator, if the caller has it)."""
        from slimface.nn.profile import count_macs

        def teacher_macs() -> float:
            net = teacher if teacher is not None else self.teacher_generator(family)
            return float(count_macs(net, net.example_inputs()))  # type: ignore[operator]

        return self.cfg.search.budget.macs(teacher_macs)

    def _trained_supernet(self, family: str) -> nn.Module:
        supernet = self._supernet(family)
        return load_weights(supernet, self.family_dir(family) / "supernet" / "supernet.safetensors",
                            f"{family} supernet")

    def stage_search(self, family: str) -> dict[str, Any]:
        from slimface.compress.search import identity_metric, recon_metric, search
        from slimface.compress.space import ConfigSpace
        from slimface.families import get_family

        sc = self.cfg.search
        out = self.family_dir(family) / "search"
        out.mkdir(parents=True, exist_ok=True)
        supernet = self._trained_supernet(family)
        space = ConfigSpace.from_supernet(get_family(family), supernet)
        val, bn = self.search_batches()
        budget = self.budget_macs(family)
        latency_fn, latency_ms, teacher_ms = None, None, None
        if sc.latency:  # priced by a measured latency table of sc.runtime (deploy.latency_table)
            from slimface.deploy.latency_table import parse_latency, search_latency_model

            factor = sc.latency_factor()
            latency_fn = search_latency_model(family, supernet, sc.runtime, sc.threads,
                                              sc.latency_table, out, _say, size=sc.latency_at(),
                                              need_teacher=factor is not None,
                                              int8_where_faster=self.cfg.deploy.int8_nodes == "faster")
            teacher_ms = latency_fn.table.teacher_ms
            latency_ms = parse_latency(sc.latency) if factor is None else float(teacher_ms or 0.0) / factor
            if factor is not None:
                _say(f"  latency budget {latency_ms:.2f} ms: the teacher's {teacher_ms:.2f} ms in {sc.runtime} / {factor:g}")
        if sc.metric == "recon":
            def metric(cfg: Any) -> float:
                return recon_metric(supernet, cfg, val, bn)
        else:
            def metric(cfg: Any) -> float:
                return identity_metric(supernet, cfg, val, self.student_recognizer, bn)
        result = search(
            supernet, space, budget, metric,
            sc, seed=self.compression_seed(family), cache_path=out / "cache.jsonl", out_jsonl=out / "evaluated.jsonl",
            resolution=self.cfg.data.resolution, latency_fn=latency_fn, latency_budget_ms=latency_ms,
            cache_key=self._active_key[0] if self._active_key is not None else None,
        )
        if result.cache_set_aside is not None and self._active_key is not None:
            _say(f"{self._active_key[1]}: search cache moved to {result.cache_set_aside}; "
                 "every candidate is evaluated again")
        info = {"config": space.encode(result.best_cfg), "metric": result.best_metric, "macs": result.best_macs,
                "params": result.best_params, "budget_macs": budget, "evaluated": len(result.evaluated)}
        if getattr(supernet, "channel_multiple", None) is not None:  # the step the config string is encoded in
            info["channel_multiple"] = supernet.channel_multiple
        if latency_ms is not None:
            info.update(latency_ms=result.best_latency_ms, latency_budget_ms=latency_ms, runtime=sc.runtime,
                        latency_size=sc.latency_size, teacher_latency_ms=teacher_ms)
        from slimface.train import distributed as D

        if D.is_main():
            atomic_write(out / "result.json", lambda f: f.write(json.dumps(info, indent=2).encode()))
        _say(f"  best {info['config']}  metric {info['metric']:.4f}  MACs {info['macs'] / 1e6:.1f}M "
             f"(budget {budget / 1e6:.1f}M, {info['evaluated']} evaluated)")
        return info

    def _search_result(self, family: str) -> dict[str, Any]:
        path = self.family_dir(family) / "search" / "result.json"
        if not path.is_file():
            raise ConfigError(f"no search result for {family}: run the search stage first")
        return json.loads(path.read_text())

    def stage_finetune(self, family: str) -> dict[str, Any]:
        from slimface.compress.space import ConfigSpace
        from slimface.families import get_family
        from slimface.train.loop import Trainer

        out = self.family_dir(family) / "finetune"
        supernet = self._trained_supernet(family)
        space = ConfigSpace.from_supernet(get_family(family), supernet)
        cfg = space.decode(self._search_result(family)["config"])
        if not self.cfg.finetune_for(family).enabled:
            save_weights(supernet, out / "supernet.safetensors")
            _say(f"  {family}: finetune.enabled is false: the searched sub-network keeps the supernet's weights")
            return {"final": {}, "config": space.encode(cfg), "trained": False}
        task = self._ofa_task(family, supernet, fixed=cfg)
        sup_dir = self.family_dir(family) / "supernet"
        load_weights(task.nets["mappers"], sup_dir / "mappers.safetensors", "distillation mappers")
        load_weights(task.nets["disc"], sup_dir / "discriminator.safetensors", "student discriminator")
        metrics = Trainer(task, self.pair_dataset(self.data.train_pairs),
                          self.train_config(self.cfg.finetune_for(family).train, out,
                                            4 + self.cfg.student_for(family).seed)).fit()
        save_weights(supernet, out / "supernet.safetensors")
        return {"final": metrics, "config": space.encode(cfg)}

    def stage_export(self, family: str) -> dict[str, Any]:
        from slimface.compress.extract import extract_subnet
        from slimface.export_format import save_export
        from slimface.compress.bn import recalibrate_bn
        from slimface.compress.space import ConfigSpace
        from slimface.families import get_family

        d = self.cfg.data
        out = self.family_dir(family) / "export"
        supernet = self._supernet(family)
        load_weights(supernet, self.family_dir(family) / "finetune" / "supernet.safetensors", f"{family} fine-tuned")
        space = ConfigSpace.from_supernet(get_family(family), supernet)
        cfg = space.decode(self._search_result(family)["config"])
        bs = self.cfg.eval_batch_size
        bn = self.batches(self.data.train_pairs[:: max(1, len(self.data.train_pairs) // (bs * 4))], bs, 4)
        recalibrate_bn(supernet, bn, cfg)
        student = extract_subnet(get_family(family), supernet, cfg, d.resolution, d.channels,
                                 self.cfg.teacher(family).width_mult)
        # an earlier export's files (an ONNX or int8 model this run's deploy settings no longer make)
        # must not be evaluated or benchmarked as this student's
        shutil.rmtree(out, ignore_errors=True)
        path = save_export(student, out)
        info: dict[str, Any] = {"export": str(path), "config": space.encode(cfg)}
        if self.cfg.deploy.onnx:
            fp32_modules: list[str] = []
            if self.cfg.deploy.int8 and self.cfg.deploy.int8_nodes == "faster":
                # int8 only where the measured table says it pays, at the size the search priced
                # (the deployment size): the int8 model checked here is the one timed there
                from slimface.deploy.latency_table import slow_int8_modules

                sc = self.cfg.search
                fp32_modules = slow_int8_modules(family, supernet, cfg, sc.threads,
                                                 sc.latency_table if sc.runtime == "ort-int8" else None,
                                                 self.family_dir(family) / "search", _say, size=sc.latency_at())
            info.update(self._deploy(student, out, fp32_modules))
        return info

    def _deploy(self, student: nn.Module, out: Path, fp32_modules: Sequence[str] = ()) -> dict[str, Any]:
        from slimface.deploy.onnx_export import export_onnx
        from slimface.deploy.runtime import check_onnx

        student.eval()
        inputs = student.example_inputs()
        onnx_path = export_onnx(student, inputs, out / "model.onnx")
        info: dict[str, Any] = {"onnx": str(onnx_path), "onnx_max_abs_diff": check_onnx(student, onnx_path, inputs)}
        if self.cfg.deploy.int8:
            from slimface.deploy.quantize import calibration_from_batches, quantize_int8
            from slimface.errors import Int8RefusedError

            n = self.cfg.deploy.calibration_batches
            step = max(1, len(self.data.train_pairs) // max(n, 1))
            calib = calibration_from_batches(self.batches(self.data.train_pairs[::step], 1, n), limit=n)
            keep_fp32: list[str] = []
            if fp32_modules or self.cfg.deploy.int8_fp32:  # by module name; recorded for the full-size bench
                modules, keep_fp32 = self._int8_fp32_nodes(student, onnx_path, fp32_modules)
                info["int8_fp32_modules"] = modules
            try:
                report = quantize_int8(onnx_path, out / "model.int8.onnx", calib, nodes_to_exclude=keep_fp32,
                                       recognizer=self.recognizer)  # identity checked too, not pixels alone
            except Int8RefusedError as e:  # noted beside the model (int8_guard.refusal_note); the run goes on
                info["int8_refused"] = str(e)
                _say(f"  {e}")
            else:
                info["int8"] = str(out / "model.int8.onnx")
                info["int8_report"] = report.as_dict()
        return info

    def _int8_fp32_nodes(self, student: nn.Module, onnx_path: Path, fp32_modules: Sequence[str],
                         ) -> tuple[list[str], list[str]]:
        """(module patterns, ONNX node names) int8 keeps fp32: the convs ``fp32_modules`` and the
        ``deploy.int8_fp32`` patterns; a pattern that names no node is a one-line error."""
        import onnx

        from slimface.deploy.latency_table import fp32_nodes, module_matches, onnx_node_module

        scopes = [onnx_node_module(n.name) for n in onnx.load(str(onnx_path)).graph.node]
        for pattern in self.cfg.deploy.int8_fp32:
            if not any(module_matches(m, [pattern]) for m in scopes):
                raise ConfigError(f"deploy.int8_fp32 pattern {pattern!r} names no module of the {student.family} "
                                  f"student (names like {scopes[-1]!r}); fix the pattern")
        patterns = [*fp32_modules, *self.cfg.deploy.int8_fp32]
        return patterns, fp32_nodes(onnx_path, student, patterns)

    def context(self) -> "RunContext":
        """What the evaluate, bench and report stages read of this run (they never see the Pipeline)."""
        from slimface import stage_keys
        from slimface.evaluate.context import RunContext

        c, r = self.cfg, self.cfg.recognizer

        def provenance() -> tuple[dict[str, Any], list[str], set[str]]:
            prov = stage_keys.provenance(self.out, c.families)
            return (prov, *stage_keys.provenance_lines(prov))

        return RunContext(
            name=c.name, out=self.out, seed=c.seed, device=self.device, families=list(c.families),
            stages=self.stages(), data_kind=c.data.kind, resolution=c.data.resolution, channels=c.data.channels,
            teacher_widths={f: c.teacher(f).width_mult for f in c.families}, eval_batch_size=c.eval_batch_size,
            eval_probes_per_group=c.eval_probes_per_group, dlib_probes_per_group=c.judge.dlib_probes_per_group,
            bench=c.bench,
            recognizer_info={"kind": f"{r.variant} w{r.width_mult:g}",
                             "source": str(r.checkpoint or self.out / "recognizer" / "recognizer.safetensors"),
                             "identities": f"{r.identities} of the training identities" + learnt_extras(r)},
            data=lambda: self.data, pair_dataset=self.pair_dataset, batches=self.batches,
            teacher=self.teacher_generator, recognizer=lambda: self.recognizer, judges=lambda: self.judges,
            provenance=provenance, mobile_teacher=self._mobile_generator,
            int8_fp32_modules=lambda fam: list(((stage_keys.read_marker(self.out, f"export.{fam}") or {})
                                                .get("outputs") or {}).get("int8_fp32_modules") or []),
        )

    def _mobile_generator(self, family: str) -> nn.Module | None:
        """The family's mobile teacher generator when this run has one (for evaluation)."""
        if family not in self.cfg.families or not self.cfg.student_for(family).mobile_teacher:
            return None
        return self._mobile_teacher(family)[0]

    def stage_evaluate(self) -> dict[str, Any]:
        from slimface.evaluate.run_eval import evaluate_run

        return evaluate_run(self.context())

    def stage_bench(self) -> dict[str, Any]:
        from slimface.evaluate.run_eval import bench_run

        return bench_run(self.context())

    def stage_report(self) -> dict[str, Any]:
        from slimface.evaluate.report import write_report

        path = write_report(self.context())
        return {"report": str(path)}

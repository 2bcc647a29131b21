"""The judge role: judges measure and are never trained against; the artefact figure; identity halves;
bootstrap intervals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from slimface.compress.config import OFAConfig
from slimface.compress.ofa import OFATask
from slimface.compress.search import identity_metric
from slimface.data.records import identity_subset
from slimface.evaluate.quality import hf_ratio, image_quality
from slimface.evaluate.rank1 import bootstrap_rank1, group_rates, rank1_hits
from slimface.models.judge import Judge, JudgeInfo, JudgeNotForTraining
from slimface.models.recognizer import LightCNNRecognizer
from slimface.families import get_family
from slimface.train.loop import TrainConfig, Trainer
from slimface.nn.modes import freeze


def _judge() -> Judge:
    torch.manual_seed(0)
    net = LightCNNRecognizer("lightcnn9", input_size=64, width_mult=0.125, num_classes=4)
    return Judge(net, JudgeInfo("judge", "lightcnn9 w0.125", "test", "second_half"))


def _tpgan(width: float = 0.0625):
    fam = get_family("tpgan")
    kw = dict(resolution=64, channels=3, width_mult=width)
    return fam, fam.build_generator(separable=False, sub=None, **kw), fam.build_discriminator(**kw)


def test_a_teacher_task_refuses_a_judge_as_its_recognizer() -> None:
    fam, gen, disc = _tpgan()
    with pytest.raises(JudgeNotForTraining, match="judge 'judge'"):
        fam.make_teacher_task(gen, disc, recognizer=_judge(), num_subjects=4, loss={"identity": 1.0}, lr=2e-4,
                              seed=0)


def test_the_student_task_and_the_search_refuse_a_judge() -> None:
    fam, teacher, disc = _tpgan()
    student = fam.build_generator(resolution=64, channels=3, width_mult=0.0625, separable=True, sub=None)
    from slimface.compress.space import ConfigSpace

    cfg = OFAConfig(identity_weight=1.0)
    with pytest.raises(JudgeNotForTraining):
        OFATask(fam, student, teacher, disc, cfg, recognizer=_judge())
    space = ConfigSpace.from_supernet(fam, student)
    x, lm = student.example_inputs(2)
    batch = {"profile": x, "frontal": x, "landmarks": lm}
    with pytest.raises(JudgeNotForTraining, match="search metric"):
        identity_metric(student, space.largest(), [batch], _judge())


def test_the_trainer_refuses_any_task_that_holds_a_judge(tmp_path) -> None:
    class Sneaky:
        def __init__(self) -> None:
            self.net = torch.nn.Linear(2, 2)
            self.nets = {"net": self.net}
            self.optimizers = {"net": torch.optim.SGD(self.net.parameters(), lr=0.1)}
            self.helper = _judge()  # e.g. for a "better" identity loss

        def train_step(self, batch, step):  # pragma: no cover - never reached
            return {}

    with pytest.raises(JudgeNotForTraining, match="Sneaky.helper"):
        Trainer(Sneaky(), [torch.zeros(2)] * 4, TrainConfig(steps=1, batch_size=2, out_dir=tmp_path))
    with pytest.raises(JudgeNotForTraining):
        freeze(_judge())  # type: ignore[arg-type]


def test_a_judge_gives_no_gradient_and_never_changes() -> None:
    judge = _judge()
    before = judge.state_dict()
    img = (torch.rand(3, 3, 64, 64) * 2 - 1).requires_grad_(True)
    emb = judge.embed(img)
    assert not emb.requires_grad  # nothing can be optimised against it
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    with pytest.raises(JudgeNotForTraining):
        judge.parameters()
    after = judge.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_hf_ratio_is_one_for_the_truth_and_rises_with_stripes() -> None:
    torch.manual_seed(0)
    truth = torch.nn.functional.avg_pool2d(torch.rand(4, 3, 64, 64) * 2 - 1, 5, 1, 2)  # a smooth "face"
    assert hf_ratio(truth, truth).item() == pytest.approx(1.0, abs=1e-6)
    stripes = truth.clone()
    stripes[:, :, ::2, :] += 0.3  # horizontal stripes, as an identity-loss-fooling generator draws
    assert hf_ratio(stripes.clamp(-1, 1), truth).item() > 3.0
    blurred = torch.nn.functional.avg_pool2d(truth, 5, 1, 2)
    assert hf_ratio(blurred, truth).item() < 0.5
    assert image_quality(truth, truth)["hf_ratio"] == pytest.approx(1.0, abs=1e-6)


def test_identity_halves_are_disjoint_and_cover_every_identity() -> None:
    subjects = [f"{i:03d}" for i in range(1, 12)]
    first, second = identity_subset(subjects, "first_half"), identity_subset(subjects, "second_half")
    assert not set(first) & set(second) and sorted(first + second) == subjects
    assert first == subjects[:6] and second == subjects[6:]
    even, odd = identity_subset(subjects, "even"), identity_subset(subjects, "odd")
    assert not set(even) & set(odd) and len(even) + len(odd) == 11
    assert identity_subset(subjects[::-1], "all") == subjects  # numeric-aware order, not input order
    with pytest.raises(ValueError, match="use one of"):
        identity_subset(subjects, "third")


def test_rank1_hits_and_group_rates() -> None:
    gallery = torch.eye(3)
    probes = torch.tensor([[1.0, 0.1, 0], [0, 1, 0], [1, 0, 0.2], [0, 0, 1]])
    hits = rank1_hits(probes, ["a", "b", "c", "c"], gallery, ["a", "b", "c"])
    assert hits.tolist() == [1, 1, 0, 1]
    rates = group_rates(hits, [15, 15, 90, 90])
    assert rates == {15: 100.0, 90: 50.0, "avg": 75.0}


def test_bootstrap_interval_covers_the_true_rate_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(0)
    p, n, trials, covered = 0.6, 200, 200, 0
    groups = [15] * n
    for t in range(trials):
        hits = (rng.random(n) < p).astype(np.int8)
        lo, hi = bootstrap_rank1(hits, groups, reps=400, seed=t)["avg"]
        covered += lo <= 100 * p <= hi
    assert 0.89 <= covered / trials <= 0.99


def test_paired_interval_is_of_the_difference_on_the_same_probes() -> None:
    rng = np.random.default_rng(1)
    base = (rng.random(300) < 0.5).astype(np.int8)
    same = base.copy()
    ci = bootstrap_rank1(same, [30] * 300, baseline=base, reps=200)
    assert ci["avg"] == (0.0, 0.0)  # identical models: no spread at all when paired
    better = base.copy()
    better[:60] = 1  # strictly more hits
    lo, hi = bootstrap_rank1(better, [30] * 300, baseline=base, reps=500)["avg"]
    assert 0 < lo <= hi


TINY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def _trained_with_extras(tmp_path: Path, role: str, over: dict) -> tuple:
    """The tiny preset's data and its ``role`` stage (judge or recognizer, 2 steps) with ``over``: the
    config, the pipeline, the stage's info and how many dataset identities that network learns."""
    from slimface.config import load_config
    from slimface.pipeline import Pipeline, PipelineConfig

    cfg = load_config(PipelineConfig, TINY_CONFIG, {"out_dir": str(tmp_path / "run"), "data.root": str(tmp_path / "data"),
                                                    f"{role}.train.steps": 2, **over})
    p = Pipeline(cfg, progress=False)
    p.stage_data()
    info = getattr(p, f"stage_{role}")()
    settings = getattr(cfg, role)
    own = {r.subject for r in p.data.recognition_records(settings.max_abs_yaw, settings.identities)}
    return cfg, p, info, len(own)


def test_judge_learns_extra_identities_that_are_never_test_identities(tmp_path) -> None:
    """judge.extra_identities: the judge's classifier covers its half of the training identities plus
    the extra ones; those are rendered beside the dataset with ids after its last subject (so never a
    test identity); at 0 the setting stays out of the judge's key (older runs keep theirs)."""
    from slimface import stage_keys as K
    from slimface.config import load_config
    from slimface.data.loaders import load_dataset
    from slimface.pipeline import PipelineConfig
    from safetensors.torch import load_file

    over = {"judge.extra_identities": 3, "judge.grad_clip": 5.0}
    cfg, p, info, own = _trained_with_extras(tmp_path, "judge", over)
    assert info["identities"] == own + 3
    extra_root = next((tmp_path / "data").glob("*_extra3_y30"))
    extra = {r.subject for r in load_dataset("synth", extra_root)}
    assert extra == {"017", "018", "019"}  # the tiny dataset has subjects 001..016
    assert not extra & {r.subject for r, _ in p.data.test_pairs}
    fc2 = load_file(tmp_path / "run" / "judge" / "judge.safetensors")
    assert [v.shape[0] for k, v in fc2.items() if k.endswith("fc2.weight")] == [info["identities"]]
    assert p.judges["judge"] is not None  # its shape is known without rendering again
    plain = load_config(PipelineConfig, TINY_CONFIG, {"out_dir": str(tmp_path / "run"), "data.root": str(tmp_path / "data"),
                                                      "judge.train.steps": 2})
    assert not {"extra_identities", "grad_clip"} & set(K.own_settings(plain, "judge")["judge"])
    assert K.own_settings(plain, "judge") != K.own_settings(cfg, "judge")


def test_loss_recognizer_learns_extra_identities_apart_from_the_judges(tmp_path) -> None:
    """recognizer.extra_identities from recognizer.extra_offset: ids after the judge's range, so the two
    networks share no training face; an overlapping range is refused when the config loads."""
    from slimface import stage_keys as K
    from slimface.config import load_config
    from slimface.data.loaders import load_dataset
    from slimface.errors import ConfigError
    from slimface.pipeline import PipelineConfig
    from slimface.pipeline_config import learnt_extras  # what the report's recognizer line says

    over = {"judge.extra_identities": 3, "recognizer.extra_identities": 2, "recognizer.extra_offset": 3}
    cfg, _, info, own = _trained_with_extras(tmp_path, "recognizer", over)
    assert info["identities"] == own + 2
    extra_root = next((tmp_path / "data").glob("*_extra2_y30_o3"))
    assert {r.subject for r in load_dataset("synth", extra_root)} == {"020", "021"}  # the judge's: 017..019
    assert "extra_offset" in K.own_settings(cfg, "recognizer")["recognizer"]
    assert learnt_extras(cfg.recognizer) == " + 2 identities beyond the dataset (extra 3..4)"
    assert learnt_extras(load_config(PipelineConfig, TINY_CONFIG, {}).recognizer) == ""
    plain = load_config(PipelineConfig, TINY_CONFIG, {"out_dir": str(tmp_path / "run")})
    assert not {"extra_identities", "extra_offset", "grad_clip"} & set(K.own_settings(plain, "recognizer")["recognizer"])
    with pytest.raises(ConfigError, match="recognizer.extra_offset >= 3"):
        load_config(PipelineConfig, TINY_CONFIG, {**over, "recognizer.extra_offset": 2})

"""Strict config loading: unknown keys and wrong types fail with a one-line message."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

from slimface.config import check, from_dict, load_config, to_dict
from slimface.errors import ConfigError


@dataclass
class Inner:
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])


@dataclass
class Outer:
    name: Literal["tpgan", "crgan"] = "tpgan"
    steps: int = 10
    out: Path = Path("runs")
    budget: Optional[str] = None
    inner: Inner = field(default_factory=Inner)

    def validate(self) -> None:
        check(self.steps > 0, f"steps must be positive, got {self.steps}")


def test_round_trip() -> None:
    cfg = from_dict(Outer, {"name": "crgan", "steps": 5, "inner": {"lr": 1}})
    assert cfg.inner.lr == 1.0 and isinstance(cfg.inner.lr, float) and cfg.name == "crgan"
    assert from_dict(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "data,message",
    [
        ({"stepz": 3}, "unknown key 'stepz'"),
        ({"steps": "3"}, "config.steps: expected an integer"),
        ({"steps": True}, "expected an integer"),
        ({"name": "pix2pix"}, "not one of"),
        ({"inner": {"lr": "fast"}}, "config.inner.lr: expected a number"),
        ({"inner": {"betas": 0.5}}, "expected a list"),
        ({"steps": 0}, "steps must be positive"),
    ],
)
def test_bad_values(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data)


def test_load_yaml_file_and_overrides(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("steps: 4\ninner:\n  lr: 0.1\n")
    cfg = load_config(Outer, p, {"inner.lr": 0.5})
    assert cfg.steps == 4 and cfg.inner.lr == 0.5


def test_an_inline_section_changes_only_the_keys_it_names(tmp_path: Path) -> None:
    """``--set 'inner={betas: [0, 0.9]}'`` keeps the file's ``inner.lr``; lists and scalars replace."""
    p = tmp_path / "c.yaml"
    p.write_text("steps: 4\ninner:\n  lr: 0.1\n  betas: [0.5, 0.9, 0.99]\n")
    cfg = load_config(Outer, p, {"inner": {"betas": [0.0, 0.9]}})
    assert cfg.inner.lr == 0.1 and cfg.inner.betas == [0.0, 0.9] and cfg.steps == 4
    quick = Path(__file__).resolve().parents[1] / "configs" / "quick.yaml"
    from slimface.pipeline_config import PipelineConfig

    q = load_config(PipelineConfig, quick, {"teachers": {"tpgan": {"finetune": {"train": {"steps": 5}}}}})
    assert q.finetune_for("tpgan").train.steps == 5 and q.finetune_for("tpgan").train.lr == 2e-4
    assert q.teacher("tpgan").pretrained and q.student_for("tpgan").supernet_pretrained  # the rest of the section


def test_missing_and_broken_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, bad)


def test_exponent_without_dot_is_a_number(tmp_path: Path) -> None:
    """YAML 1.1 reads ``1e-3`` as a string; a float field still takes it (``--set ...lr=1e-3``)."""
    p = tmp_path / "c.yaml"
    p.write_text("steps: 4\ninner:\n  lr: 1e-3\n")
    assert load_config(Outer, p).inner.lr == pytest.approx(1e-3)
    assert load_config(Outer, p, {"inner.lr": "2E-4"}).inner.lr == pytest.approx(2e-4)


def test_budget_sampling_ties_the_supernet_stage_to_the_search_budget() -> None:
    """With sampling 'budget' the supernet is trained for one budget, so changing the budget must
    re-run it; with uniform sampling only the search and later stages depend on the budget."""
    from slimface.pipeline import Pipeline
    from slimface.pipeline_config import PipelineConfig

    root = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"

    def settings(stage: str, **over: object) -> dict:
        cfg = load_config(PipelineConfig, root, {k.replace("__", "."): v for k, v in over.items()})
        return Pipeline(cfg, progress=False)._stage_settings(stage)

    assert settings("supernet.tpgan", student__sampling="budget") != settings(
        "supernet.tpgan", student__sampling="budget", search__budget="3x")
    assert settings("supernet.tpgan", student__sampling="uniform") == settings(
        "supernet.tpgan", student__sampling="uniform", search__budget="3x")
    assert settings("search.tpgan", student__sampling="uniform") != settings(
        "search.tpgan", student__sampling="uniform", search__budget="3x")
    with pytest.raises(ConfigError, match="budget_low"):
        load_config(PipelineConfig, root, {"student.budget_low": 0})


def test_identity_jitter_keys_the_student_stages_only_when_set() -> None:
    """At 0 (what every earlier run did) the setting is out of every key; set, the stages that train
    the student re-run; a negative shift is a one-line error."""
    from slimface.pipeline import Pipeline
    from slimface.pipeline_config import PipelineConfig

    root = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"

    def settings(stage: str, **over: object) -> dict:
        return Pipeline(load_config(PipelineConfig, root, over), progress=False)._stage_settings(stage)

    for stage in ("supernet.tpgan", "finetune.tpgan"):
        assert settings(stage, **{"student.identity_jitter": 0}) == settings(stage)
        assert settings(stage, **{"student.identity_jitter": 2}) != settings(stage)
    assert settings("search.tpgan", **{"student.identity_jitter": 2}) == settings("search.tpgan")
    with pytest.raises(ConfigError, match="identity_jitter must be >= 0 pixels"):
        load_config(PipelineConfig, root, {"student.identity_jitter": -1})


def test_per_family_student_recipe() -> None:
    """``teachers.<family>.student`` / ``.finetune`` change that family's settings only; the teacher stage
    does not depend on them; a bad key is a one-line error at load time."""
    from slimface.pipeline import Pipeline
    from slimface.pipeline_config import PipelineConfig

    root = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    base = {"families": ["tpgan", "crgan"], "student.identity_weight": 50.0, "student.train.steps": 4}
    cfg = load_config(PipelineConfig, root, {**base, "teachers.crgan.student.identity_weight": 7,
                                             "teachers.crgan.student.sampling": "uniform",
                                             "teachers.crgan.student.train": {"lr": 1e-4}})
    cr, tp = cfg.student_for("crgan"), cfg.student_for("tpgan")
    assert (cr.identity_weight, cr.sampling, cr.train.lr, cr.train.steps) == (7.0, "uniform", 1e-4, 4)
    assert tp == cfg.student and tp.identity_weight == 50.0

    def settings(stage: str, over: dict) -> dict:
        return Pipeline(load_config(PipelineConfig, root, {**base, **over}), progress=False)._stage_settings(stage)

    change = {"teachers.crgan.student.identity_weight": 7}
    assert settings("teacher.crgan", {}) == settings("teacher.crgan", change)
    assert settings("supernet.crgan", {}) != settings("supernet.crgan", change)
    assert settings("supernet.tpgan", {}) == settings("supernet.tpgan", change)
    ft = {"teachers.crgan.finetune.train": {"steps": 9}}
    assert load_config(PipelineConfig, root, {**base, **ft}).finetune_for("crgan").train.steps == 9
    assert settings("teacher.crgan", {}) == settings("teacher.crgan", ft)
    assert settings("finetune.crgan", {}) != settings("finetune.crgan", ft)
    assert settings("finetune.tpgan", {}) == settings("finetune.tpgan", ft)
    with pytest.raises(ConfigError, match=r"teachers\.crgan\.student: unknown key 'identity'"):
        load_config(PipelineConfig, root, {**base, "teachers.crgan.student.identity": 7})
    with pytest.raises(ConfigError, match="budget_low"):
        load_config(PipelineConfig, root, {**base, "teachers.crgan.student.budget_low": 2})


def test_the_teachers_key_is_the_family_and_loss_weights_are_the_familys_dataclass() -> None:
    """``teachers.<family>``: the key names the family (checked against the one registry); an old
    ``family:`` line is accepted only when it repeats the key; ``loss`` loads into the family's own
    loss dataclass at load time (ints stay ints, tuples are tuples, unknown keys fail)."""
    from slimface.families.crgan.task import CRGANLossConfig
    from slimface.pipeline_config import PipelineConfig

    root = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    cfg = load_config(PipelineConfig, root, {"teachers.tpgan.family": "tpgan"})  # an older file
    assert cfg.teacher("tpgan").width_mult == 0.0625 and not hasattr(cfg.teacher("tpgan"), "family")
    with pytest.raises(ConfigError, match=r"teachers\.crgan\.family is 'tpgan', but the key 'crgan'") as err:
        load_config(PipelineConfig, root, {"teachers.crgan.family": "tpgan"})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"teachers: unknown model 'stylegan'; choose from \[.*'crgan', 'pim'"):
        load_config(PipelineConfig, root, {"teachers.stylegan": {"width_mult": 0.5}})
    with pytest.raises(ConfigError, match="families: unknown model 'tp-gan'"):
        load_config(PipelineConfig, root, {"families": ["tp-gan"]})
    cfg = load_config(PipelineConfig, root, {"families": ["tpgan", "crgan", "pim"],
                                             "teachers.crgan.loss": {"warmup_steps": 3, "betas": [0.5, 0.9]}})
    loss = cfg.teacher("crgan").loss
    assert isinstance(loss, CRGANLossConfig) and loss.warmup_steps == 3 and loss.betas == (0.5, 0.9)
    assert cfg.teacher("pim").loss.rec_cls == 3e-3  # a family without a section gets its defaults
    with pytest.raises(ConfigError, match=r"teachers\.tpgan\.loss: unknown key 'pixle'"):
        load_config(PipelineConfig, root, {"teachers.tpgan.loss.pixle": 1.0})
    with pytest.raises(ConfigError, match=r"teachers\.crgan\.loss\.warmup_steps: expected an integer"):
        load_config(PipelineConfig, root, {"teachers.crgan.loss.warmup_steps": 2.5})

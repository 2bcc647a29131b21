"""recognizer.members: the students' loss recognizer as an ensemble of networks (slimface.models.recognizer)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slimface.models.recognizer import EnsembleRecognizer, LightCNNRecognizer
from slimface.train.losses import identity_loss

TINY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def _members() -> list[LightCNNRecognizer]:
    torch.manual_seed(0)
    return [LightCNNRecognizer("lightcnn9", input_size=32, width_mult=0.125).eval(),
            LightCNNRecognizer("lightcnn29", input_size=32, width_mult=0.125).eval()]


def test_ensemble_cosine_is_the_members_mean_and_its_loss_their_mean_term() -> None:
    """``embed`` is unit-norm and its cosine the members' mean cosine (what rank-1 reads);
    ``loss_embed`` makes the L1 identity term the members' mean term, at one network's scale."""
    members = _members()
    ens = EnsembleRecognizer(members).eval()
    a, b = torch.rand(4, 3, 32, 32) * 2 - 1, torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        ea, eb = ens.embed(a), ens.embed(b)
        assert torch.allclose(ea.norm(dim=1), torch.ones(4), atol=1e-5)
        mean_cos = torch.stack([(m.embed(a) * m.embed(b)).sum(1) for m in members]).mean(0)
        assert torch.allclose((ea * eb).sum(1), mean_cos, atol=1e-5)
        one_by_one = torch.stack([identity_loss(m.embed, a, b) for m in members]).mean()
        assert torch.allclose(identity_loss(ens.loss_embed, a, b), one_by_one, atol=1e-6)
    assert ens.embedding_dim == sum(m.embedding_dim for m in members)


def test_the_student_identity_term_reads_every_member() -> None:
    """The distillation objective's identity term goes through ``loss_embed``: a gradient reaches the
    output through each member (none is skipped), and the term equals the members' mean."""
    from slimface.compress.distill import _loss_embed

    members = _members()
    ens = EnsembleRecognizer(members).eval()
    fake = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_()
    real = torch.rand(2, 3, 32, 32) * 2 - 1
    term = identity_loss(_loss_embed(ens), fake, real)
    grads = [torch.autograd.grad(identity_loss(m.embed, fake, real), fake)[0] for m in members]
    (total,) = torch.autograd.grad(term, fake)
    assert all(g.abs().sum() > 0 for g in grads)
    assert torch.allclose(total, sum(grads) / len(grads), atol=1e-6)


def test_members_train_beside_the_loss_recognizer_and_key_its_stage(tmp_path) -> None:
    """The recognizer stage trains each member in a folder of its own (its architecture, its extra
    identities apart from the judge's); the students read the ensemble while the teachers keep the
    loss recognizer; members change the stage's key and outputs; none leaves both as they were."""
    from slimface import stage_keys as K
    from slimface.config import load_config
    from slimface.pipeline import Pipeline, PipelineConfig
    from safetensors.torch import load_file

    base = {"out_dir": str(tmp_path / "run"), "data.root": str(tmp_path / "data"), "recognizer.train.steps": 2}
    member = {"variant": "lightcnn29", "width_mult": 0.25, "extra_identities": 2, "extra_offset": 5}
    cfg = load_config(PipelineConfig, TINY_CONFIG, {**base, "recognizer.members": [member]})
    p = Pipeline(cfg, progress=False)
    p.stage_data()
    info = p.stage_recognizer()
    own = len({r.subject for r in p.data.recognition_records(cfg.recognizer.max_abs_yaw, cfg.recognizer.identities)})
    assert info["members"][0]["identities"] == own + 2
    path = tmp_path / "run" / "recognizer" / "member0" / "recognizer.safetensors"
    assert any(k.startswith("net.block1.") for k in load_file(path))  # a LightCNN-29's residual blocks
    assert not any(k.startswith("net.block1.") for k in load_file(tmp_path / "run" / "recognizer" / "recognizer.safetensors"))
    assert isinstance(p.student_recognizer, EnsembleRecognizer)
    assert len(p.student_recognizer.members) == 2 and p.student_recognizer.members[0] is p.recognizer
    assert path in K.output_paths(cfg, tmp_path / "run", "recognizer")

    plain = load_config(PipelineConfig, TINY_CONFIG, base)
    empty = load_config(PipelineConfig, TINY_CONFIG, {**base, "recognizer.members": []})
    assert "members" not in K.own_settings(plain, "recognizer")["recognizer"]
    assert K.own_settings(empty, "recognizer") == K.own_settings(plain, "recognizer")
    assert K.own_settings(cfg, "recognizer") != K.own_settings(plain, "recognizer")
    assert Pipeline(plain, progress=False).student_recognizer is not None  # no members: the loss recognizer itself


def test_member_settings_are_checked_when_the_config_loads(tmp_path) -> None:
    from slimface.config import load_config
    from slimface.errors import ConfigError
    from slimface.pipeline import PipelineConfig

    over = {"judge.extra_identities": 3}
    with pytest.raises(ConfigError, match=r"recognizer.members\[0\].extra_offset >= 3"):
        load_config(PipelineConfig, TINY_CONFIG, {**over, "recognizer.members": [{"extra_identities": 2}]})
    with pytest.raises(ConfigError, match=r"recognizer.members\[0\].width_mult"):
        load_config(PipelineConfig, TINY_CONFIG, {"recognizer.members": [{"width_mult": 0}]})
    with pytest.raises(ConfigError, match="safetensors"):
        load_config(PipelineConfig, TINY_CONFIG, {"recognizer.members": [{"checkpoint": str(tmp_path / "m.pth")}]})
    judge_file = str(tmp_path / "j.safetensors")
    with pytest.raises(ConfigError, match="a judge must be a network no training saw"):
        load_config(PipelineConfig, TINY_CONFIG, {"judge.checkpoint": judge_file,
                                                  "recognizer.members": [{"checkpoint": judge_file}]})

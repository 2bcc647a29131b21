"""What the search and the sensitivity analysis score sub-networks on: validation pairs spread over
every identity, not the first pairs of a list that is ordered identity by identity."""

from __future__ import annotations

from pathlib import Path

import torch

from slimface.config import load_config
from slimface.data.splits import spread
from slimface.pipeline_config import PipelineConfig

REPO = Path(__file__).resolve().parents[1]


def test_spread_takes_evenly_spaced_items_in_order() -> None:
    assert spread(list(range(10)), 5) == [0, 2, 4, 6, 8]
    assert spread(list(range(10)), 3) == [0, 3, 6]
    assert spread(list(range(4)), 9) == [0, 1, 2, 3]
    assert spread(list(range(4)), 0) == []


def test_spread_sees_every_group_of_a_grouped_list() -> None:
    """20 identities of 60 pairs each: 128 spread pairs hold every identity about equally; the first
    128 hold three."""
    pairs = [(subject, k) for subject in range(20) for k in range(60)]
    counts = torch.bincount(torch.tensor([s for s, _ in spread(pairs, 128)]), minlength=20)
    assert counts.min() >= 6 and counts.max() <= 7
    assert len({s for s, _ in pairs[:128]}) == 3


def test_search_batches_hold_every_validation_identity(tmp_path: Path) -> None:
    """On the tiny preset's data: the validation batches' frontal images (one per identity and
    illumination) are all the validation split has; the first 32 pairs would hold two identities."""
    from slimface.pipeline import Pipeline

    cfg = load_config(PipelineConfig, REPO / "configs" / "tiny.yaml",
                      {"out_dir": str(tmp_path / "run"), "data.root": str(tmp_path / "data")})
    pipe = Pipeline(cfg, progress=False)
    pipe.run(only=["data"])
    val, bn = pipe.search_batches()
    assert sum(len(b["profile"]) for b in val) == cfg.eval_batch_size * cfg.search.val_batches
    assert sum(len(b["profile"]) for b in bn) == cfg.eval_batch_size * cfg.search.bn_batches
    frontals = {tuple(f.flatten()[::97].tolist()) for b in val for f in b["frontal"]}
    val_frontals = {(p[1].subject, p[1].illumination) for p in pipe.data.val_pairs}
    assert len(val_frontals) == cfg.data.val_subjects * cfg.data.synth.illuminations
    assert len(frontals) == len(val_frontals)

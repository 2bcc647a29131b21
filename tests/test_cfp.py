"""CFP: the loader on generated trees, the verification maths against hand-computed folds, the
CFP-FP evaluation end to end with fake detectors/judges, and CFP fiducials -> landmarks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from slimface.data import face_detect
from slimface.data.cfp import load_cfp
from slimface.data.face_detect import Detection
from slimface.data.landmark_files import cfp_fiducials_for, fiducial_box, read_fiducials
from slimface.data.pose import pose_template
from slimface.deploy.frontalize import find_landmarks
from slimface.deploy.runtime import from_module
from slimface.errors import DataError
from slimface.evaluate.cfp_eval import evaluate_cfp, write_cfp_results
from slimface.evaluate.verification import auc, best_threshold, eer, rank1, summarize_folds, verify_folds

COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]
SIZE = 48


def fake68(lm5: np.ndarray) -> np.ndarray:
    """68 iBUG points whose eyes/nose/mouth corners are the given 5 landmarks."""
    lm5 = np.asarray(lm5, dtype=np.float64)
    p = np.tile(lm5.mean(0), (68, 1))
    p[36:42], p[42:48], p[30], p[48], p[54] = lm5[0], lm5[1], lm5[2], lm5[3], lm5[4]
    return p


def box_face(rgb: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """Fake predictor: a canonical frontal face filling ``box``."""
    side = box[2] - box[0]
    return fake68(pose_template(0.0, 128) / 128.0 * side + np.array(box[:2]))


def make_cfp(root: Path, ids: int = 4, per_kind: int = 2, folds: int = 3, level: str | None = None,
             fiducials: str = "all") -> Path:
    """A tiny CFP tree: identity i's photos are flat colour COLOURS[i]; FP folds pair each identity's
    frontal n with its profile n (same) and with the next identity's profile (diff)."""
    images = root / "Data" / "Images" / (level or "")
    fid = root / "Data" / "Fiducials" / (level or "")
    lists = {"F": [], "P": []}
    for i in range(ids):
        sid = f"{i + 1:03d}"
        for kind, code in (("frontal", "F"), ("profile", "P")):
            for n in range(1, per_kind + 1):
                d = images / sid / kind
                d.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (SIZE, SIZE), COLOURS[i % len(COLOURS)]).save(d / f"{n:02d}.jpg", quality=95)
                lists[code].append(f"../Data/Images/{sid}/{kind}/{n:02d}.jpg")
                if fiducials == "all" or (fiducials == "first" and n == 1):
                    fd = fid / sid / kind
                    fd.mkdir(parents=True, exist_ok=True)
                    pts = [(16 + (k % 6) * 3, 16 + (k // 6) * 4) for k in range(30)]
                    (fd / f"{n:02d}.txt").write_text("\n".join(f"{x},{y}" for x, y in pts) + "\n")
    proto = root / "Protocol"
    proto.mkdir(parents=True, exist_ok=True)
    for code, rows in lists.items():
        (proto / f"Pair_list_{code}.txt").write_text("".join(f"{k + 1} {r}\n" for k, r in enumerate(rows)))
    for k in range(folds):
        d = proto / "Split" / "FP" / f"{k + 1:02d}"
        d.mkdir(parents=True, exist_ok=True)
        i = k % ids
        f_idx = i * per_kind + 1
        same = [(f_idx, i * per_kind + n) for n in range(1, per_kind + 1)]
        other = ((i + 1) % ids) * per_kind + 1
        diff = [(f_idx + n, other + n) for n in range(per_kind)]
        (d / "same.txt").write_text("".join(f"{a},{b}\n" for a, b in same))
        (d / "diff.txt").write_text("".join(f"{a},{b}\n" for a, b in diff))
    return root


# ----------------------------------------------------------------------------- verification maths

# Three folds of four pairs (score, same?), worked by hand in the comments below.
FOLDS = [
    ([0.9, 0.8, 0.3, 0.2], [True, True, False, False]),
    ([0.7, 0.4, 0.6, 0.1], [True, True, False, False]),
    ([0.85, 0.5, 0.55, 0.35], [True, True, False, False]),
]


def test_fold_arithmetic_matches_hand_computation() -> None:
    # fold 1 is scored with a threshold chosen on folds 2+3: sorted scores 0.1F 0.35F 0.4T 0.5T
    # 0.55F 0.6F 0.7T 0.85T; midpoints 0.375 and 0.65 both classify 6/8 right -> the smaller, 0.375;
    # fold 1 at 0.375: all 4 right. Fold 2 (threshold from 1+3: 0.425 and 0.675 give 7/8 -> 0.425):
    # 0.7T right, 0.4T wrong, 0.6F wrong, 0.1F right = 0.5. Fold 3 (from 1+2: 0.35 and 0.65 give
    # 7/8 -> 0.35): 0.85T, 0.5T right, 0.55F wrong, 0.35F >= 0.35 -> "same", wrong = 0.5.
    res = verify_folds([s for s, _ in FOLDS], [y for _, y in FOLDS])
    assert [r.threshold for r in res] == pytest.approx([0.375, 0.425, 0.35])
    assert [r.accuracy for r in res] == pytest.approx([1.0, 0.5, 0.5])
    # EER per fold: fold 1 separable -> 0; folds 2/3: at t = 0.6 / 0.55 FAR = FRR = 1/2
    assert [r.eer for r in res] == pytest.approx([0.0, 0.5, 0.5])
    # AUC: fold 1 separable; folds 2/3: 3 of the 4 (same, diff) orderings right
    assert [r.auc for r in res] == pytest.approx([1.0, 0.75, 0.75])
    s = summarize_folds(res)
    assert s["accuracy"]["mean"] == pytest.approx(2 / 3)
    assert s["accuracy"]["sd"] == pytest.approx(math.sqrt(1 / 18))  # population sd of 1, .5, .5
    assert s["auc"]["mean"] == pytest.approx(5 / 6) and len(s["folds"]) == 3


def test_metric_edges() -> None:
    assert auc([0.5, 0.5], [True, False]) == 0.5  # a tie counts one half
    assert math.isnan(eer([0.1, 0.2], [True, True])) and math.isnan(auc([0.1], [False]))
    assert best_threshold([0.2, 0.8], [False, True]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="2 folds"):
        verify_folds([[0.1]], [[True]])
    g = np.eye(3)
    p = np.array([[1.0, 0.1, 0.0], [0.0, 0.2, 1.0], [0.9, 1.0, 0.0]])
    assert rank1(p, ["a", "c", "a"], g, ["a", "b", "c"]) == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- loader


def test_loader_reads_tree_with_split_level(tmp_path: Path) -> None:
    root = make_cfp(tmp_path / "cfp", level="test")
    b = load_cfp(root)
    assert len(b.frontal) == 8 and len(b.profile) == 8 and list(b.splits) == ["FP"]
    p = b.profile[3]
    assert p.subject == "002" and p.kind == "profile" and p.path.is_file() and "test" in p.path.parts
    assert p.fiducials is not None and p.fiducials.parts[-4:] == ("test", "002", "profile", "01.txt")
    folds = b.pairs("FP")
    assert len(folds) == 3 and all(len(f) == 4 for f in folds)
    a, c, same = folds[1][0]
    assert same and a.kind == "frontal" and c.kind == "profile" and a.subject == c.subject == "002"
    assert [g.subject for g in b.gallery()] == ["001", "002", "003", "004"]
    assert all(g.number == "01" for g in b.gallery())
    with pytest.raises(DataError, match="Split/FF"):
        b.pairs("FF")


@pytest.mark.parametrize("breakage, match", [
    ("no_list", "not a CFP copy"),
    ("bad_line", r"Pair_list_P.txt:2: expected '<index> <path>'"),
    ("bad_index", r"same.txt:1: index 99 is not in Pair_list_P.txt"),
    ("missing_photo", "1 photo\\(s\\) of Pair_list_F.txt are missing"),
    ("one_fold", "the protocol needs at least 2"),
])
def test_loader_names_the_problem(tmp_path: Path, breakage: str, match: str) -> None:
    root = make_cfp(tmp_path / "cfp", ids=2, per_kind=1, folds=2)
    proto = root / "Protocol"
    if breakage == "no_list":
        (proto / "Pair_list_F.txt").unlink()
    elif breakage == "bad_line":
        (proto / "Pair_list_P.txt").write_text("1 ../Data/Images/001/profile/01.jpg\nbroken\n")
    elif breakage == "bad_index":
        (proto / "Split" / "FP" / "01" / "same.txt").write_text("1,99\n")
    elif breakage == "missing_photo":
        (root / "Data" / "Images" / "002" / "frontal" / "01.jpg").unlink()
    elif breakage == "one_fold":
        import shutil

        shutil.rmtree(proto / "Split" / "FP" / "02")
    with pytest.raises(DataError, match=match):
        load_cfp(root)


# ----------------------------------------------------------------------------- fiducials -> landmarks


def test_fiducials_give_the_face_box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_cfp(tmp_path / "cfp", ids=1, per_kind=1, folds=2)
    photo = root / "Data" / "Images" / "001" / "profile" / "01.jpg"
    fid = cfp_fiducials_for(photo)
    assert fid == root / "Data" / "Fiducials" / "001" / "profile" / "01.txt"
    pts = read_fiducials(fid)
    assert pts.shape == (30, 2)
    box = fiducial_box(pts)  # points span x 16..31, y 16..32 -> square of side 16 * 1.2 around (23.5, 24)
    assert box == pytest.approx((13.9, 14.4, 33.1, 33.6))
    seen = []

    def predictor(rgb: np.ndarray, b: tuple) -> np.ndarray:
        seen.append(b)
        return box_face(rgb, b)

    monkeypatch.setattr(face_detect, "predict68", predictor)
    monkeypatch.setattr(face_detect, "probe_facing", lambda rgb, b: "right")
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    fit, cause, _ = find_landmarks(photo, rgb)
    assert cause == "" and fit is not None and fit.method == "fiducials" and seen == [box]
    # a CFP profile is a strong profile: rebuilt from the visible eye and mouth corner at 75 deg
    assert fit.profile and fit.yaw == 75.0
    lm = box_face(rgb, box)
    assert np.allclose(fit.landmarks[0], lm[42:48].mean(0))  # the eye on the side the face looks to
    # a frontal photo with fiducials keeps the predictor's points
    front = root / "Data" / "Images" / "001" / "frontal" / "01.jpg"
    fit, _, _ = find_landmarks(front, rgb)
    assert fit is not None and not fit.profile and fit.yaw == 0.0
    assert np.allclose(fit.landmarks, face_detect.ibug68_to_ours(box_face(rgb, fiducial_box(read_fiducials(
        cfp_fiducials_for(front))))))
    bad = root / "Data" / "Fiducials" / "001" / "frontal" / "01.txt"
    bad.write_text("1,2\nthree\n")
    fit, cause, msg = find_landmarks(front, rgb)
    assert fit is None and cause == "bad_landmarks" and "01.txt:2" in msg


# ----------------------------------------------------------------------------- evaluation


class ColourJudge:
    """Embeds a crop as its mean colour (identities are flat colours in the fixture)."""

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(images.mean(dim=(2, 3)) + 1.0, dim=1)


class Identity(nn.Module):
    def forward(self, x: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        return x


class ColourDetector:
    """Finds a face (a fixed box) only in photos of identities 001 and 002 (known by colour)."""

    name = "fake"

    def __call__(self, rgb: np.ndarray) -> list[Detection]:
        c = rgb[SIZE // 2, SIZE // 2].astype(int)
        nearest = min(range(len(COLOURS)), key=lambda i: int(np.abs(c - COLOURS[i]).sum()))
        return [Detection((12.0, 12.0, 36.0, 36.0), 1.0, self.name)] if nearest in (0, 1) else []


def test_cfp_fp_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_cfp(tmp_path / "cfp", fiducials="first")
    for sid in ("001", "002", "003", "004"):  # frontals all have fiducials; profiles only 01
        d = root / "Data" / "Fiducials" / sid / "frontal"
        (d / "02.txt").write_text((d / "01.txt").read_text())
    bench = load_cfp(root)
    monkeypatch.setattr(face_detect, "predict68", box_face)
    monkeypatch.setattr(face_detect, "probe_facing", lambda rgb, b: "right")
    model = from_module(Identity(), resolution=16, channels=3)
    r = evaluate_cfp(bench, model, {"colour": ColourJudge()}, chain=[ColourDetector()], batch_size=5)
    # 7 frontals: those in FP pairs plus the gallery (identity 004's frontal 02 is in neither)
    assert r["alignment"] == {"frontal": {"fiducials": 7}, "profile": {"fake": 2, "failed": 2, "fiducials": 4}}
    assert r["folds"] == 3 and r["pairs"] == 12 and r["identities"] == 4 and r["probes"] == 8
    for cond in ("raw", "frontalized"):
        s = r["judges"]["colour"][cond]
        assert s["accuracy"]["mean"] == pytest.approx(1.0) and s["rank1"] == pytest.approx(1.0)
        assert s["auc"]["mean"] == pytest.approx(1.0) and s["eer"]["mean"] == pytest.approx(0.0)
    md, js = write_cfp_results(r, tmp_path / "res", {"colour": "mean colour"})
    data = json.loads(js.read_text())
    assert data["judges"]["colour"]["raw"]["folds"][0]["pairs"] == 4
    text = md.read_text()
    assert "| colour | frontalized | 100.00 ± 0.00 |" in text and "| profile | 2 | 2 | 4 |" in text


def test_cli_benchmark_writes_markdown_and_json(tmp_path: Path, capsys: pytest.CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import slimface.models.recognizer as recognizer
    from slimface.cli import main
    from slimface.deploy.onnx_export import export_onnx

    # dlib's descriptor and 68-point model take seconds to load: stand-ins (tested elsewhere)
    monkeypatch.setattr(recognizer, "build_recognizer", lambda name, **kw: ColourJudge())
    monkeypatch.setattr(face_detect, "predict68", box_face)
    monkeypatch.setattr(face_detect, "probe_facing", lambda rgb, b: "right")

    root = make_cfp(tmp_path / "cfp", ids=2, per_kind=1, folds=2)
    onnx_path = export_onnx(Identity(), (torch.zeros(1, 3, 32, 32), torch.zeros(1, 5, 2)), tmp_path / "m.onnx")
    config = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    base = ["evaluate", "--config", str(config), "--out", str(tmp_path / "run"), "--benchmark", "cfp-fp"]
    assert main(base + ["--model", str(onnx_path)]) == 2  # no --data
    assert "needs --data" in capsys.readouterr().err
    rc = main(base + ["--data", str(root), "--model", str(onnx_path), "--recognizer", "dlib",
                      "--detectors", "hog"])
    assert rc == 0, capsys.readouterr().err
    out = tmp_path / "run" / "evaluate" / "cfp-fp"
    data = json.loads((out / "cfp_fp.json").read_text())
    assert list(data["judges"]) == ["dlib"] and data["detectors"] == ["hog"] and data["pairs"] == 4
    assert set(data["judges"]["dlib"]) == {"raw", "frontalized"}
    assert sum(data["alignment"]["profile"].values()) == 2
    assert "| dlib | raw |" in (out / "cfp_fp.md").read_text() and "# CFP-FP" in capsys.readouterr().out

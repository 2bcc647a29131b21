"""Face detection rate per detector on real photos with a clear licence, and on rendered heads.

Usage:
    python benchmarks/detect_faces.py [--photos DIR ...] [--skimage-data DIR] [--no-synthetic]
        [--out detect_faces.json]

Real photos (what pip installs; nothing is downloaded here):
* scikit-image's bundled data (``pip install "slimface[photos]"`` or any scikit-image >= 0.22):
  ``astronaut.png`` (Eileen Collins, NASA, public domain; frontal) and ``camera.png`` (the
  "cameraman", CC0 by Lav Varshney; a near-profile, ~60-70 deg, facing right). Each is also tried
  mirrored (the profile then faces left);
* any ``--photos DIR`` of your own (every .jpg/.png in it, and their mirror images).

Rendered heads (``--no-synthetic`` to skip): slimface's built-in renderer at every 15 deg from -90
to +90 (4 identities, 256 px). Not real faces, but their yaw and landmarks are known, so the table
also gives the full pipeline's (:func:`slimface.data.face_detect.find_face`) landmark error:
median distance to the true 5 points over the eye-to-mouth distance, for visible points only.

Detectors: ``hog`` and ``cnn`` (dlib, each alone), ``chain`` (slimface's fallback order), and, if
OpenCV with its bundled cascades is importable (4.x wheels; 5.x ships none), ``opencv-profile``
(the Haar profile cascade on the photo and on its mirror image), measured only.
Prints Markdown; writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from slimface.data import face_detect

SKIMAGE_PHOTOS = {
    "astronaut.png": "frontal; NASA, public domain",
    "camera.png": "near-profile facing right; CC0 (Lav Varshney)",
}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def skimage_data_dir(given: str | None) -> Path | None:
    if given:
        return Path(given)
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def real_photos(skimage_dir: Path | None, folders: list[str]) -> list[dict[str, Any]]:
    """[{name, note, rgb}] including mirror images."""
    out = []
    found = []
    if skimage_dir is not None:
        found += [(skimage_dir / n, note) for n, note in SKIMAGE_PHOTOS.items() if (skimage_dir / n).is_file()]
    for d in folders:
        found += [(p, "your photo") for p in sorted(Path(d).iterdir()) if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    for path, note in found:
        img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        out.append({"name": path.name, "note": note, "rgb": np.asarray(img)})
        mirrored = note.replace("facing right", "facing left")
        out.append({"name": path.name + " (mirrored)", "note": mirrored, "rgb": np.asarray(ImageOps.mirror(img))})
    return out


def opencv_profile() -> Any:
    """A callable rgb -> bool (profile cascade fires on the photo or its mirror), or None."""
    try:
        import cv2
    except ImportError:
        return None
    path = Path(getattr(getattr(cv2, "data", None), "haarcascades", "")) / "haarcascade_profileface.xml"
    if not path.is_file():
        return None
    cascade = cv2.CascadeClassifier(str(path))

    def fires(rgb: np.ndarray) -> bool:
        g = np.asarray(Image.fromarray(rgb).convert("L"))
        return any(len(cascade.detectMultiScale(np.ascontiguousarray(a), 1.1, 3, minSize=(24, 24)))
                   for a in (g, g[:, ::-1]))

    return fires


def run_detectors(rgb: np.ndarray, extra: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name, det in (("hog", face_detect.HogDetector()), ("cnn", face_detect.CnnDetector())):
        t = time.perf_counter()
        found = det(rgb)
        row[name] = {"found": bool(found), "faces": len(found), "seconds": round(time.perf_counter() - t, 3)}
    t = time.perf_counter()
    fit = face_detect.find_face(rgb)
    row["chain"] = {"found": fit is not None, "seconds": round(time.perf_counter() - t, 3),
                    "detector": fit.method if fit else None, "yaw": fit.yaw if fit else None,
                    "profile": fit.profile if fit else None,
                    "landmarks": fit.landmarks.round(1).tolist() if fit else None}
    for name, fn in extra.items():
        t = time.perf_counter()
        row[name] = {"found": bool(fn(rgb)), "seconds": round(time.perf_counter() - t, 3)}
    return row


def synthetic_rows(extra: dict[str, Any], identities: int = 4, size: int = 256) -> list[dict[str, Any]]:
    from slimface.data.pose import visible_points
    from slimface.data.synth import identity_params
    from slimface.data.synth_render import render_face

    rows = []
    for yaw in range(-90, 91, 15):
        for s in range(1, identities + 1):
            img, lm = render_face(identity_params(7, s), yaw, 0, 7, 128)
            rgb = np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC))
            lm = lm * size / 128
            row = run_detectors(np.ascontiguousarray(rgb), extra)
            err = None
            if row["chain"]["found"]:
                got = np.asarray(row["chain"]["landmarks"])
                scale = np.linalg.norm((lm[0] + lm[1]) / 2 - (lm[3] + lm[4]) / 2)
                keep = [0, 1, 2, 3, 4] if abs(yaw) < 60 else [visible_points(yaw)[0], 2, visible_points(yaw)[1]]
                err = float(np.median(np.linalg.norm(got[keep] - lm[keep], axis=1)) / scale)
            row.update(yaw=yaw, identity=s, landmark_error=err)
            rows.append(row)
    return rows


def rate(rows: list[dict[str, Any]], key: str) -> str:
    n = sum(r[key]["found"] for r in rows)
    return f"{n}/{len(rows)}"


def markdown(real: list[dict[str, Any]], synth: list[dict[str, Any]], dets: list[str], cpu: str) -> str:
    lines = [f"# Face detection rate per detector ({cpu})", ""]
    if real:
        lines += ["## Real photos", "", "| photo | what | " + " | ".join(dets) + " | chain used | yaw |",
                  "|---|---|" + "---|" * len(dets) + "---|---|"]
        for r in real:
            cells = [("yes" if r[d]["found"] else "no") + f" ({r[d]['seconds']:.2f} s)" for d in dets]
            c = r["chain"]
            yaw = "" if c["yaw"] is None else f"{c['yaw']:+.0f}"
            used = (c["detector"] or "-") + (" (profile)" if c["profile"] else "")
            lines.append(f"| {r['name']} | {r['note']} | " + " | ".join(cells) + f" | {used} | {yaw} |")
        lines += ["", "Detection rate: " + ", ".join(f"{d} {rate(real, d)}" for d in dets), ""]
    else:
        lines += ["No real photos found: install scikit-image (pip install \"slimface[photos]\") or pass --photos DIR.", ""]
    if synth:
        lines += ["## Rendered heads (slimface's renderer; not real faces)", "",
                  "| yaw | " + " | ".join(dets) + " | median landmark error (chain) |",
                  "|---|" + "---|" * len(dets) + "---|"]
        for yaw in sorted({r["yaw"] for r in synth}):
            rs = [r for r in synth if r["yaw"] == yaw]
            errs = [r["landmark_error"] for r in rs if r["landmark_error"] is not None]
            err = f"{np.median(errs):.3f}" if errs else "-"
            lines.append(f"| {yaw:+d} | " + " | ".join(rate(rs, d) for d in dets) + f" | {err} |")
        lines += ["", "Landmark error: distance to the true point / eye-to-mouth distance (visible points only "
                      "beyond 60 deg)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", action="append", default=[], help="a folder of your own photos (repeatable)")
    ap.add_argument("--skimage-data", help="scikit-image's data folder (default: the installed package's)")
    ap.add_argument("--no-synthetic", action="store_true")
    ap.add_argument("--out", default="detect_faces.json")
    args = ap.parse_args(argv)
    extra = {}
    cv = opencv_profile()
    if cv is not None:
        extra["opencv-profile"] = cv
    dets = ["hog", "cnn", "chain", *extra]
    real = [dict(p, **run_detectors(p.pop("rgb"), extra)) for p in real_photos(skimage_data_dir(args.skimage_data),
                                                                                 args.photos)]
    synth = [] if args.no_synthetic else synthetic_rows(extra)
    cpu = cpu_name()
    print(markdown(real, synth, dets, cpu))
    result = {"cpu": cpu, "detectors": dets, "real": real, "synthetic": synth,
              "rates": {"real": {d: rate(real, d) for d in dets} if real else {},
                        "synthetic": {d: rate(synth, d) for d in dets} if synth else {}}}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()

"""The data model every loader returns: :class:`FaceRecord` rows in a :class:`FaceIndex`.

Loaders only parse names/manifests; everything protocol-related (training pairs, subject
splits, the recognition gallery) lives here so that Multi-PIE, CAS-PEAL-R1, plain folders and
the built-in synthetic data all follow the same rules (reference.md section 4).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, overload

import numpy as np

from slimface.errors import DataError

log = logging.getLogger("slimface.data")

Policy = Literal["skip", "stop"]

#: TP-GAN canonical frontal landmarks at 128x128, (x, y): left eye, right eye, nose,
#: mouth left corner, mouth right corner ("left" = smaller x in the image).
CANONICAL_LANDMARKS_128 = np.array(
    [[44.0, 41.0], [86.0, 41.0], [64.0, 65.0], [50.0, 89.0], [80.0, 89.0]], dtype=np.float32
)
CANONICAL_LANDMARKS_128.setflags(write=False)

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


def canonical_landmarks(resolution: int) -> np.ndarray:
    """Canonical frontal landmarks scaled from 128x128 to ``resolution`` (a fresh (5,2) float32 copy)."""
    if resolution <= 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    return (CANONICAL_LANDMARKS_128 * (resolution / 128.0)).astype(np.float32)


def subject_sort_key(subject: str) -> tuple[int, int, str]:
    """Numeric ids sort by value ("2" < "10"), others alphabetically after them."""
    return (0, int(subject), subject) if subject.isdigit() else (1, 0, subject)


def identity_subset(subjects: Sequence[str], which: str) -> list[str]:
    """The identities a recognizer learns: ``all``, ``first_half`` / ``second_half`` of the sorted ids
    (the first half takes the odd one), or ``even`` / ``odd`` positions. Halves are disjoint and
    together give every identity, so a judge and the loss recognizer never share a face."""
    ordered = sorted(subjects, key=subject_sort_key)
    half = (len(ordered) + 1) // 2
    picks = {"all": ordered, "first_half": ordered[:half], "second_half": ordered[half:],
             "even": ordered[0::2], "odd": ordered[1::2]}
    if which not in picks:
        raise ValueError(f"identity subset {which!r}: use one of {', '.join(picks)}")
    return picks[which]


@dataclass
class FaceRecord:
    """One face image and what its name/manifest says about it.

    ``landmarks`` are (5,2) float32 (x, y) pixel coordinates in *this file's* pixel grid
    (``image_size`` = (width, height) when the loader read the header), or None if unknown.
    ``condition`` holds capture conditions that are not otherwise represented (CAS-PEAL-R1:
    lighting/accessory/distance/background fields) so pairing never mixes them; "" elsewhere.
    """

    path: Path
    subject: str
    yaw: int
    pitch: int = 0
    illumination: int = 0
    session: str = "01"
    recording: str = "01"
    expression: str = "N"
    landmarks: np.ndarray | None = None
    dataset: str = ""
    image_size: tuple[int, int] | None = None
    condition: str = ""

    def pair_key(self) -> tuple[str, str, str, int, str, str]:
        """What a profile and its frontal target must share."""
        return (self.subject, self.session, self.recording, self.illumination, self.expression, self.condition)


@dataclass
class LoadReport:
    """What a loader saw: files used, files skipped (by reason), files deliberately ignored."""

    root: str = ""
    kind: str = ""
    files_seen: int = 0
    loaded: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    ignored: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)

    def skip(self, reason: str, file: str | Path) -> None:
        """Count a skipped file (keeps the first 3 names per reason for the summary)."""
        self.skipped[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < 3:
            ex.append(str(file))

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def skipped_text(self) -> str:
        """e.g. '12 files skipped (10 unparseable name, 2 empty file)'."""
        if not self.skipped:
            return "0 files skipped"
        parts = ", ".join(f"{n} {r}" for r, n in self.skipped.most_common())
        return f"{self.n_skipped} files skipped ({parts})"

    def summary(self) -> str:
        """One line for the log."""
        s = f"{self.kind} dataset {self.root}: {self.loaded} images loaded, {self.skipped_text()}"
        if self.ignored:
            s += "; ignored: " + ", ".join(f"{n} {r}" for r, n in sorted(self.ignored.items()))
        if self.notes:
            s += "; notes: " + ", ".join(f"{n} {r}" for r, n in sorted(self.notes.items()))
        if self.examples:
            first = next(iter(self.examples.values()))[0]
            s += f" (e.g. {first})"
        return s


class FaceIndex(Sequence[FaceRecord]):
    """An immutable list of records plus the protocol helpers (pairs, split, gallery).

    Attributes set by the loaders: ``report`` (:class:`LoadReport`), ``kind``, ``root``,
    ``policy`` (default for pairs/gallery when a subject has no frontal image),
    ``train_subjects`` (the dataset's default split: a count or explicit subject ids) and
    ``frontal_illumination`` (7 for Multi-PIE/synth, 0 = ambient 'IEU+00' for CAS-PEAL-R1).
    """

    def __init__(
        self,
        records: Iterable[FaceRecord],
        *,
        report: LoadReport | None = None,
        kind: str = "",
        root: Path | None = None,
        policy: Policy = "skip",
        train_subjects: int | list[str] | None = None,
        frontal_illumination: int = 7,
    ) -> None:
        self._records: list[FaceRecord] = list(records)
        self.report = report if report is not None else LoadReport(kind=kind, root=str(root or ""))
        self.kind = kind
        self.root = root
        self.policy: Policy = policy
        self.train_subjects = train_subjects
        self.frontal_illumination = frontal_illumination

    # -- sequence protocol -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._records)

    @overload
    def __getitem__(self, i: int) -> FaceRecord: ...

    @overload
    def __getitem__(self, i: slice) -> FaceIndex: ...

    def __getitem__(self, i: int | slice) -> FaceRecord | FaceIndex:
        if isinstance(i, slice):
            return self._derive(self._records[i])
        return self._records[i]

    def __iter__(self) -> Iterator[FaceRecord]:
        return iter(self._records)

    def __repr__(self) -> str:
        return f"FaceIndex(kind={self.kind!r}, records={len(self)}, subjects={len(self.subjects())})"

    def _derive(self, records: Iterable[FaceRecord]) -> FaceIndex:
        """A sub-index sharing this one's metadata (report, defaults)."""
        return FaceIndex(
            records,
            report=self.report,
            kind=self.kind,
            root=self.root,
            policy=self.policy,
            train_subjects=self.train_subjects,
            frontal_illumination=self.frontal_illumination,
        )

    # -- queries -----------------------------------------------------------------------
    def subjects(self) -> list[str]:
        """Distinct subject ids, numeric-aware sorted."""
        return sorted({r.subject for r in self._records}, key=subject_sort_key)

    def yaw_groups(self) -> list[int]:
        """Sorted distinct |yaw| values (the per-yaw rows of the rank-1 table)."""
        return sorted({abs(r.yaw) for r in self._records})

    def filter(
        self,
        predicate: Callable[[FaceRecord], bool] | None = None,
        *,
        subjects: Iterable[str] | None = None,
        yaws: Iterable[int] | None = None,
        abs_yaws: Iterable[int] | None = None,
        pitches: Iterable[int] | None = None,
        illuminations: Iterable[int] | None = None,
        sessions: Iterable[str] | None = None,
        recordings: Iterable[str] | None = None,
        expressions: Iterable[str] | None = None,
    ) -> FaceIndex:
        """Records matching every given criterion (None = no constraint)."""
        sets = {
            "subject": set(subjects) if subjects is not None else None,
            "yaw": set(yaws) if yaws is not None else None,
            "pitch": set(pitches) if pitches is not None else None,
            "illumination": set(illuminations) if illuminations is not None else None,
            "session": set(sessions) if sessions is not None else None,
            "recording": set(recordings) if recordings is not None else None,
            "expression": set(expressions) if expressions is not None else None,
        }
        ay = set(abs_yaws) if abs_yaws is not None else None

        def keep(r: FaceRecord) -> bool:
            for attr, allowed in sets.items():
                if allowed is not None and getattr(r, attr) not in allowed:
                    return False
            if ay is not None and abs(r.yaw) not in ay:
                return False
            return predicate(r) if predicate is not None else True

        return self._derive(r for r in self._records if keep(r))

    # -- protocol ----------------------------------------------------------------------
    def split(self, train_subjects: int | Sequence[str] | None = None) -> tuple[FaceIndex, FaceIndex]:
        """Subject-disjoint (train, test) split.

        ``int N``: the first N subjects in numeric-aware sorted order (synthetic data:
        ``dataset.json``'s ``train_subjects``). A list: exactly those subject ids train.
        None: the loader's default (Multi-PIE setting 2: ids 001-200, see
        :func:`slimface.data.multipie.setting2_train_subjects`).
        """
        if train_subjects is None:
            train_subjects = self.train_subjects
        if train_subjects is None:
            raise DataError(
                f"no default train/test split for the {self.kind or 'this'} dataset at {self.root}; "
                "pass train_subjects (a count or a list of subject ids)"
            )
        subjects = self.subjects()
        if isinstance(train_subjects, int):
            if not 0 < train_subjects <= len(subjects):
                raise DataError(
                    f"train_subjects={train_subjects} but the dataset at {self.root} has "
                    f"{len(subjects)} subjects; use a value between 1 and {len(subjects)}"
                )
            train = set(subjects[:train_subjects])
        else:
            train = set(train_subjects)
            unknown = train - set(subjects)
            if unknown:
                log.warning("split: %d train subject(s) not in the dataset, e.g. %s", len(unknown), sorted(unknown)[0])
        tr = self._derive(r for r in self._records if r.subject in train)
        te = self._derive(r for r in self._records if r.subject not in train)
        return tr, te

    def split_by_id(self, max_id: int) -> tuple[FaceIndex, FaceIndex]:
        """(train, test) with train = subjects whose numeric id <= ``max_id`` (Multi-PIE setting 2: 200)."""
        train = [s for s in self.subjects() if s.isdigit() and int(s) <= max_id]
        return self.split(train)

    def _frontals(self, target_yaw: int) -> dict[tuple, FaceRecord]:
        out: dict[tuple, FaceRecord] = {}
        for r in sorted(self._records, key=lambda r: str(r.path)):
            if r.yaw == target_yaw and r.pitch == 0:
                out.setdefault(r.pair_key(), r)
        return out

    def pairs(
        self,
        target_yaw: int = 0,
        *,
        include_frontal: bool = True,
        policy: Policy | None = None,
    ) -> list[tuple[FaceRecord, FaceRecord]]:
        """(profile, frontal) training pairs.

        The frontal is the record at ``target_yaw`` and pitch 0 with the same subject,
        session, recording, illumination, expression and ``condition`` (CAS-PEAL-R1: the
        PM+00 image of the same shot conditions; pitched PU/PD images pair with it too).
        Profiles are all records (every yaw/pitch); ``include_frontal`` keeps the frontal
        paired with itself (useful for training, identity mapping). A profile without such a
        frontal is reported: ``policy="stop"`` raises DataError naming the subject and file;
        ``"skip"`` drops it, counts it in ``report.notes`` and logs one warning line.
        If several frontal files share a key, the first by path is used.
        """
        policy = policy or self.policy
        frontals = self._frontals(target_yaw)
        out: list[tuple[FaceRecord, FaceRecord]] = []
        missing: Counter = Counter()
        for r in self._records:
            is_target = r.yaw == target_yaw and r.pitch == 0
            if is_target and not include_frontal:
                continue
            f = frontals.get(r.pair_key())
            if f is None:
                if policy == "stop":
                    raise DataError(
                        f"subject {r.subject} has no frontal image (yaw {target_yaw}, pitch 0, session {r.session}, "
                        f"recording {r.recording}, illumination {r.illumination}) to pair with {r.path}; "
                        "add it or use policy='skip'"
                    )
                missing[r.subject] += 1
                continue
            out.append((r, f))
        if missing:
            n = sum(missing.values())
            self.report.notes["profiles without a frontal target"] = n
            log.warning(
                "pairs: %d profile image(s) of %d subject(s) have no frontal target and were skipped (e.g. subject %s)",
                n, len(missing), sorted(missing, key=subject_sort_key)[0],
            )
        return out

    def gallery(self, frontal_illumination: int | None = None, *, policy: Policy | None = None) -> list[FaceRecord]:
        """One frontal (yaw 0, pitch 0), frontal-illumination image per subject, in subject order.

        Preference: illumination == ``frontal_illumination`` (default: the dataset's, 7 for
        Multi-PIE), then neutral expression, then the lowest session/recording/condition/path.
        Fallback when a subject has no frontal image at that illumination: its best other
        frontal image (logged). A subject with no frontal image at all is skipped (logged,
        counted in ``report.notes``) or, with ``policy="stop"``, raises DataError.
        """
        fi = self.frontal_illumination if frontal_illumination is None else frontal_illumination
        policy = policy or self.policy
        by_subject: dict[str, list[FaceRecord]] = {}
        for r in self._records:
            by_subject.setdefault(r.subject, [])
            if r.yaw == 0 and r.pitch == 0:
                by_subject[r.subject].append(r)
        out: list[FaceRecord] = []
        fallback: list[str] = []
        missing: list[str] = []
        for s in sorted(by_subject, key=subject_sort_key):
            cands = by_subject[s]
            if not cands:
                if policy == "stop":
                    raise DataError(
                        f"subject {s} has no frontal (yaw 0, pitch 0) image for the gallery in {self.root}; "
                        "add one or use policy='skip'"
                    )
                missing.append(s)
                continue
            best = min(
                cands,
                key=lambda r: (r.illumination != fi, r.expression != "N", r.session, r.recording, r.condition, str(r.path)),
            )
            if best.illumination != fi:
                fallback.append(s)
            out.append(best)
        if fallback:
            log.warning("gallery: %d subject(s) have no frontal image with illumination %d; used another frontal image (e.g. %s)", len(fallback), fi, fallback[0])
            self.report.notes["gallery fallbacks (other illumination)"] = len(fallback)
        if missing:
            log.warning("gallery: %d subject(s) have no frontal image and are left out (e.g. %s)", len(missing), missing[0])
            self.report.notes["subjects without a frontal image (gallery)"] = len(missing)
        return out

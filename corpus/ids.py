"""Deterministic identifiers and fake demographics, MIMIC-CXR shaped.

subject_id: 8 digits 10000000-19999999 spread over the ten pNN shards; study_id: 8 digits
starting with 5; dicom_id: five dash-joined groups of 8 hex digits. Dates are MIMIC-like
shifted years (21xx) drawn from the seed, never from the clock.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.uid import generate_uid

_LAST = ("SMITH", "JOHNSON", "WILLIAMS", "BROWN", "JONES", "GARCIA", "MILLER", "DAVIS", "RODRIGUEZ",
         "MARTINEZ", "HERNANDEZ", "LOPEZ", "WILSON", "ANDERSON", "THOMAS", "TAYLOR", "MOORE", "JACKSON",
         "MARTIN", "LEE", "PEREZ", "THOMPSON", "WHITE", "HARRIS", "CLARK", "LEWIS", "NGUYEN", "KIM")
_FIRST = {"M": ("JAMES", "JOHN", "ROBERT", "MICHAEL", "DAVID", "WILLIAM", "JOSEPH", "CARLOS", "WEI", "OMAR"),
          "F": ("MARY", "PATRICIA", "JENNIFER", "LINDA", "ELIZABETH", "SUSAN", "MARIA", "AIKO", "FATIMA", "ANNA")}
# How many studies a subject has: mostly one, some two or three.
_STUDIES_PER_SUBJECT = (1, 2, 3)
_STUDIES_PER_SUBJECT_P = (0.72, 0.2, 0.08)


@dataclass(frozen=True)
class Patient:
    subject_id: int
    name: str  # DICOM "LAST^FIRST"
    mrn: str  # fake hospital MRN, deliberately unrelated to subject_id
    sex: str
    birth_date: str
    age: int


@dataclass(frozen=True)
class StudyPlan:
    index: int  # position in the archive; keys the study's random stream
    patient: Patient
    study_id: int
    study_date: str
    study_time: str


def plan_archive(studies: int, seed: int) -> list[StudyPlan]:
    """Assign studies to subjects and dates; cheap, done once before any rendering."""
    rng = np.random.default_rng([seed, 0xA5C1])
    counts: list[int] = []
    while sum(counts) < studies:
        counts.append(int(rng.choice(_STUDIES_PER_SUBJECT, p=_STUDIES_PER_SUBJECT_P)))
    counts[-1] -= sum(counts) - studies
    subject_ids = unique_subject_ids(len(counts), rng)
    study_ids = 50_000_000 + rng.choice(10_000_000, size=studies, replace=False)
    plans = []
    for subject_id, count in zip(subject_ids, counts):
        year, day = int(rng.integers(2110, 2195)), int(rng.integers(0, 300))
        patient = make_patient(int(subject_id), rng, year)
        for _ in range(count):
            index = len(plans)
            date = np.datetime64(f"{year}-01-01") + np.timedelta64(day, "D")
            plans.append(StudyPlan(index, patient, int(study_ids[index]), str(date).replace("-", ""),
                                   _time(rng)))
            day += int(rng.integers(1, 60))
    return plans


def unique_subject_ids(count: int, rng: np.random.Generator) -> list[int]:
    """Distinct 8-digit ids, round-robin over the shards p10..p19."""
    per_shard = -(-count // 10)
    tails = [rng.choice(1_000_000, size=per_shard, replace=False) for _ in range(10)]
    return [(10 + i % 10) * 1_000_000 + int(tails[i % 10][i // 10]) for i in range(count)]


def make_patient(subject_id: int, rng: np.random.Generator, study_year: int = 2150) -> Patient:
    sex = "M" if rng.random() < 0.52 else "F"
    age = int(rng.integers(21, 92))
    birth_year = study_year - age
    return Patient(
        subject_id=subject_id,
        name=f"{rng.choice(_LAST)}^{rng.choice(_FIRST[sex])}",
        mrn=f"{int(rng.integers(1_000_000, 9_999_999))}",
        sex=sex,
        birth_date=f"{birth_year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        age=age,
    )


def dicom_id(rng: np.random.Generator) -> str:
    digits = rng.bytes(20).hex()
    return "-".join(digits[i : i + 8] for i in range(0, 40, 8))


def uid(*parts: object, prefix: str | None = "1.2.826.0.1.3680043.8.498.") -> str:
    """A DICOM UID that is a pure function of `parts` (no clock, no process id)."""
    return str(generate_uid(prefix=prefix, entropy_srcs=[str(p) for p in parts]))


def _time(rng: np.random.Generator) -> str:
    seconds = int(rng.integers(0, 86400))
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}.{int(rng.integers(0, 1000)):03d}"

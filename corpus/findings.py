"""What a study shows: the finding vocabulary and how findings are drawn per study.

Category names are the canonical names the extraction vocabulary uses; the renderer and the
report writer both read a study's findings from here, so pixels and text can never disagree.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CATEGORIES: tuple[str, ...] = (
    "effusion",
    "cardiomegaly",
    "pneumothorax",
    "nodule",
    "consolidation",
    "atelectasis",
    "edema",
    "pacemaker",
    "endotracheal tube",
)
# Named only in reports ("concerning for pneumonia"), drawn as the consolidation it comes with.
PNEUMONIA = "pneumonia"
DEVICES: frozenset[str] = frozenset({"pacemaker", "endotracheal tube"})

SEVERITIES: dict[str, tuple[str, ...]] = {
    "effusion": ("small", "moderate", "large"),
    "cardiomegaly": ("mild", "moderate", "severe"),
    "pneumothorax": ("small", "moderate", "large"),
    "nodule": ("small", "large", "na"),
    "consolidation": ("mild", "moderate", "severe"),
    "atelectasis": ("minimal", "mild", "moderate"),
    "edema": ("mild", "moderate", "severe"),
    "pacemaker": ("na",),
    "endotracheal tube": ("na",),
}
LOBES: tuple[str, ...] = (
    "right upper lobe",
    "right middle lobe",
    "right lower lobe",
    "left upper lobe",
    "left lower lobe",
)
LOCATIONS: dict[str, tuple[str, ...]] = {
    "effusion": ("left", "right", "bilateral"),
    "cardiomegaly": ("na",),
    "pneumothorax": ("left", "right"),
    "nodule": LOBES,
    "consolidation": LOBES,
    "atelectasis": ("left base", "right base", "bibasilar"),
    "edema": ("na", "bilateral"),
    "pacemaker": ("left chest", "right chest"),
    "endotracheal tube": ("na",),
}
# Independent prevalences chosen so that about a quarter of studies are normal.
PREVALENCE: dict[str, float] = {
    "effusion": 0.20,
    "cardiomegaly": 0.18,
    "pneumothorax": 0.10,
    "nodule": 0.12,
    "consolidation": 0.18,
    "atelectasis": 0.18,
    "edema": 0.12,
    "pacemaker": 0.10,
    "endotracheal tube": 0.10,
}
_MILD = frozenset({"small", "mild", "minimal"})
_UNCERTAIN_WHEN_MILD = 0.35
_PNEUMONIA_GIVEN_CONSOLIDATION = 0.4


@dataclass(frozen=True)
class Finding:
    category: str
    severity: str
    location: str
    uncertain: bool = False  # the report hedges ("possible ...") although it is drawn
    pneumonia: bool = False  # consolidation the report calls "concerning for pneumonia"

    @property
    def side(self) -> str:
        """'left', 'right' or 'both' for where the finding sits (patient's sides)."""
        if self.location.startswith("left"):
            return "left"
        if self.location.startswith("right"):
            return "right"
        return "both"


def sample_findings(
    rng: np.random.Generator, prevalence: dict[str, float] | None = None
) -> list[Finding]:
    """Draw a study's findings in CATEGORIES order; `prevalence` overrides per category."""
    rates = {**PREVALENCE, **(prevalence or {})}
    findings = []
    for category in CATEGORIES:
        if rng.random() >= rates[category]:
            continue
        severity = str(rng.choice(SEVERITIES[category]))
        location = str(rng.choice(LOCATIONS[category]))
        uncertain = severity in _MILD and category not in DEVICES and rng.random() < _UNCERTAIN_WHEN_MILD
        pneumonia = category == "consolidation" and rng.random() < _PNEUMONIA_GIVEN_CONSOLIDATION
        findings.append(Finding(category, severity, location, uncertain, pneumonia))
    return findings


def ground_truth_rows(findings: list[Finding]) -> list[dict[str, object]]:
    """findings.csv rows: one per drawn finding, plus the pneumonia the report names (hedged)."""
    rows = []
    for finding in findings:
        rows.append(
            {
                "category": finding.category,
                "severity": finding.severity,
                "location": finding.location,
                "uncertain_in_report": finding.uncertain,
            }
        )
        if finding.pneumonia:
            rows.append(
                {
                    "category": PNEUMONIA,
                    "severity": finding.severity,
                    "location": finding.location,
                    "uncertain_in_report": True,
                }
            )
    return rows

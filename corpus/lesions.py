"""Findings drawn into a Canvas. Each draw edits the canvas layers and returns a boolean mask
of where the finding is, the ground truth for segmentation and box labels.

Severity and location change the drawing (fluid level, heart width, band depth, patch extent),
so the text's words are recoverable from the pixels.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from corpus.anatomy import FRONTAL, Canvas, Geometry, ellipse, enlarge_heart, lateral_lung_centre, soft_inside
from corpus.findings import Finding

HEART_ENLARGEMENT = {"mild": 1.22, "moderate": 1.33, "severe": 1.45}
EFFUSION_FILL = {"small": 0.13, "moderate": 0.3, "large": 0.55}  # fraction of lung height
PNEUMOTHORAX_DEPTH = {"small": 0.14, "moderate": 0.26, "large": 0.4}  # fraction of lung collapse
NODULE_RADIUS = {"small": (0.01, 0.016), "large": (0.026, 0.04), "na": (0.014, 0.024)}
CONSOLIDATION_EXTENT = {"mild": (0.045, 4), "moderate": (0.075, 7), "severe": (0.11, 11)}
ATELECTASIS_THICKNESS = {"minimal": 0.006, "mild": 0.01, "moderate": 0.015}
EDEMA_SPREAD = {"mild": (0.07, 0.09), "moderate": (0.1, 0.14), "severe": (0.13, 0.2)}


def adjust_geometry(geometry: Geometry, findings: list[Finding]) -> Geometry:
    """Findings that change anatomy itself (an enlarged heart) act before anatomy is drawn."""
    for finding in findings:
        if finding.category == "cardiomegaly":
            geometry = enlarge_heart(geometry, HEART_ENLARGEMENT[finding.severity])
    return geometry


def draw_finding(canvas: Canvas, finding: Finding, rng: np.random.Generator) -> np.ndarray:
    """Draw one finding on an anatomy-complete canvas; returns its boolean mask."""
    draw = _DRAWERS[finding.category]
    return draw(canvas, finding, rng)


# --- helpers ------------------------------------------------------------------------------


def _sides(finding: Finding, canvas: Canvas) -> list[str]:
    if canvas.view != FRONTAL:
        return ["both"]
    return ["right", "left"] if finding.side == "both" else [finding.side]


def _lobe_point(canvas: Canvas, lobe: str, rng: np.random.Generator) -> tuple[str, float, float]:
    """A point inside the named lobe (frontal projection approximations)."""
    g = canvas.geometry
    side = "right" if lobe.startswith("right") else "left"
    level = {"upper": 0.32, "middle": 0.62, "lower": 0.8}[lobe.split()[1]]
    if canvas.view != FRONTAL:
        lcu, _ = lateral_lung_centre(g)
        du = {"upper": 0.0, "middle": -0.1, "lower": 0.1}[lobe.split()[1]]
        return "both", lcu + du + rng.uniform(-0.04, 0.04), 0.2 + 0.5 * level
    sign = -1.0 if side == "right" else 1.0
    width = g.thorax_half_width - g.mediastinum_half_width
    reach = 0.35 if "middle" in lobe else rng.uniform(0.45, 0.65)
    if level > 0.5 and side == "left":
        reach = max(reach, 0.62)  # keep clear of the heart
    u = g.cx + sign * (g.mediastinum_half_width + reach * width * np.sqrt(level) ** 0.7)
    v = g.lung_top + level * (g.dome(side) - g.lung_top) - 0.02 + rng.uniform(-0.02, 0.02)
    return side, float(u), float(v)


def _stamp_path(canvas: Canvas, points_u: np.ndarray, points_v: np.ndarray, radius_px: float) -> np.ndarray:
    """Rasterise a thin path given by dense points into a boolean mask."""
    mask = np.zeros(canvas.shape, bool)
    rows, cols = canvas.to_pixels(points_u, points_v)
    r = max(1, int(round(radius_px)))
    offsets = np.arange(-r, r + 1)
    dr, dc = np.meshgrid(offsets, offsets, indexing="ij")
    keep = dr * dr + dc * dc <= r * r + 0.5
    rr = (np.round(rows)[:, None] + dr[keep][None, :]).astype(int).ravel()
    cc = (np.round(cols)[:, None] + dc[keep][None, :]).astype(int).ravel()
    ok = (rr >= 0) & (rr < canvas.shape[0]) & (cc >= 0) & (cc < canvas.shape[1])
    mask[rr[ok], cc[ok]] = True
    return mask


def _bezier(p0, p1, p2, n: int = 800) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0, 1, n)[:, None]
    pts = (1 - t) ** 2 * np.array(p0) + 2 * (1 - t) * t * np.array(p1) + t * t * np.array(p2)
    return pts[:, 0], pts[:, 1]


def _lung_of(canvas: Canvas, side: str) -> np.ndarray:
    return canvas.lungs[side]


# --- drawers ------------------------------------------------------------------------------


def _effusion(canvas: Canvas, finding: Finding, rng: np.random.Generator) -> np.ndarray:
    g, u, v = canvas.geometry, canvas.u, canvas.v
    fill = EFFUSION_FILL[finding.severity] * rng.uniform(0.9, 1.1)
    mask = np.zeros(canvas.shape, bool)
    for side in _sides(finding, canvas):
        lung = _lung_of(canvas, side)
        if side == "both":  # lateral: fluid gathers in the posterior costophrenic sulcus
            lcu, _ = lateral_lung_centre(g)
            posterior = np.clip((u - lcu) / 0.27, 0, 1)
            line = g.diaphragm - 0.03 - fill * 0.45 * (0.3 + posterior * posterior)
        else:
            sign = -1.0 if side == "right" else 1.0
            width = g.thorax_half_width - g.mediastinum_half_width
            lateral = np.clip(sign * (u - g.cx) - g.mediastinum_half_width, 0, None) / width
            level = g.dome(side) - fill * (g.dome(side) - g.lung_top)
            line = level - 0.05 * lateral * lateral  # meniscus climbs the lateral wall
        fluid = soft_inside(v - line, 0.025) * lung
        canvas.opacity += 0.3 * fluid
        mask |= fluid > 0.5
    return mask


def _cardiomegaly(canvas: Canvas, finding: Finding, rng: np.random.Generator) -> np.ndarray:
    return canvas.heart > 0.5  # the heart was drawn enlarged (adjust_geometry)


def _pneumothorax(canvas: Canvas, finding: Finding, rng: np.random.Generator) -> np.ndarray:
    if canvas.view != FRONTAL:
        return np.zeros(canvas.shape, bool)  # rarely seen on the lateral view
    g, u, v = canvas.geometry, canvas.u, canvas.v
    side = finding.side
    depth = PNEUMOTHORAX_DEPTH[finding.severity] * rng.uniform(0.9, 1.1)
    sign = -1.0 if side == "right" else 1.0
    width = g.thorax_half_width - g.mediastinum_half_width
    height = g.dome(side) - g.lung_top
    # The collapsed lung: an ellipse pulled toward the hilum and the base.
    cu = g.cx + sign * (g.mediastinum_half_width + 0.45 * width * (1 - 0.6 * depth))
    cv = g.lung_top + 0.58 * height + 0.3 * depth * height
    au = 0.62 * width * (1 - depth)
    av = 0.62 * height * (1 - 0.8 * depth)
    rim = ellipse(u, v, cu, cv, au, av)
    collapsed = soft_inside(rim, 0.06)
    lung = _lung_of(canvas, side)
    band = lung * (1 - collapsed)
    canvas.air += 0.1 * band
    canvas.vessel_gain = canvas.vessel_gain * (1 - band)
    pleural_line = soft_inside(0.04 - np.abs(rim), 0.03) * lung
    canvas.opacity += 0.07 * pleural_line
    return band > 0.5


def _nodule(canvas: Canvas, finding: Finding, rng: np.random.Generator) -> np.ndarray:
    side, cu, cv = _lobe_point(canvas, finding.location, rng)
    radius = rng.uniform(*NODULE_RADIUS[finding.severity])
    blob = soft_inside(ellipse(canvas.u, canvas.v, cu, cv, radius, radius * rng.uniform(0.9, 1.1)), 0.5)
    density = 0.22 if canvas.view == FRONTAL else 0.1
    canvas.opacity += density * blob
    return blob > 0.5


def _consolidation(canvas: Canvas, finding: Finding, rng: np.random.Generator) -> np.ndarray:
    side, cu, cv = _lobe_point(canvas, finding.location, rng)
    extent, blobs = CONSOLIDATION_EXTENT[finding.severity]
    u, v = canvas.u, canvas.v
    patch = np.zeros(canvas.shape, np.float32)
    for _ in range(blobs):
        bu = cu + rng.uniform(-extent, extent)
        bv = cv + rng.uniform(-0.8 * extent, 0.8 * extent)
        size = extent * rng.uniform(0.3, 0.6)
        patch = np.maximum(patch, soft_inside(ellipse(u, v, bu, bv, size, size * rng.uniform(0.7, 1.3)), 0.9))
    patch *= _lung_of(canvas, side)
    density = 0.24 if canvas.view == FRONTAL else 0.12
    canvas.opacity += density * patch
    canvas.vessel_gain = canvas.vessel_gain * (1 - 0.7 * patch)
    return patch > 0.5


def _atelectasis(canvas: Canvas, finding: Finding, rng: np.random.Generator) -> np.ndarray:
    g, u, v = canvas.geometry, canvas.u, canvas.v
    thickness = ATELECTASIS_THICKNESS[finding.severity]
    plates = 2 if finding.severity == "moderate" else 1
    mask = np.zeros(canvas.shape, bool)
    for side in _sides(finding, canvas):
        lung = _lung_of(canvas, side)
        dome = g.dome(side) if side != "both" else g.diaphragm - g.dome_height
        for plate in range(plates):
            height = dome - rng.uniform(0.07, 0.11) - 0.045 * plate
            tilt = rng.uniform(-0.12, 0.12)
            pivot = g.lung_centre(side) if side != "both" else lateral_lung_centre(g)[0]
            line = height + tilt * (u - pivot)
            band = soft_inside(thickness - np.abs(v - line), 0.006) * soft_inside(0.12 - np.abs(u - pivot), 0.03)
            band *= lung
            canvas.opacity += (0.22 if canvas.view == FRONTAL else 0.1) * band
            mask |= band > 0.5
    return mask


def _edema(canvas: Canvas, finding: Finding, rng: np.random.Generator) -> np.ndarray:
    g, u, v = canvas.geometry, canvas.u, canvas.v
    spread, density = EDEMA_SPREAD[finding.severity]
    lungs = np.clip(sum(canvas.lungs.values()), 0, 1)
    hila = [g.hilum("right"), g.hilum("left")] if canvas.view == FRONTAL else [(lateral_lung_centre(g)[0], 0.45)]
    haze = np.zeros(canvas.shape, np.float32)
    for hu, hv in hila:
        du, dv = (u - hu) / (1.5 * spread), (v - hv) / spread  # bat-wing: wider than tall
        haze = np.maximum(haze, np.exp(-0.5 * (du * du + dv * dv)))
    haze *= lungs
    canvas.opacity += density * haze
    canvas.vessel_gain = canvas.vessel_gain * (1 + 4 * density * haze)  # vascular prominence
    return haze > 0.5


def _pacemaker(canvas: Canvas, finding: Finding, rng: np.random.Generator) -> np.ndarray:
    g = canvas.geometry
    if canvas.view == FRONTAL:
        sign = -1.0 if finding.side == "right" else 1.0
        box_u, box_v = g.cx + sign * rng.uniform(0.22, 0.27), g.lung_top + rng.uniform(0.09, 0.12)
        bend = (g.cx + sign * 0.03, g.carina + 0.02)
        tip = (g.heart_cx + rng.uniform(-0.03, 0.02), g.heart_cy + 0.5 * g.heart_half_height)
    else:
        lcu, _ = lateral_lung_centre(g)
        box_u, box_v = lcu - 0.26, 0.25
        bend = (lcu - 0.05, g.carina)
        tip = (g.cx - 0.18, g.heart_cy + 0.05)
    box = soft_inside(
        np.minimum(0.032 - np.abs(canvas.u - box_u), 0.022 - np.abs(canvas.v - box_v)), 0.006
    )
    lead_u, lead_v = _bezier((box_u, box_v), bend, tip)
    lead = _stamp_path(canvas, lead_u, lead_v, canvas.pixels(0.0025))
    canvas.metal += 0.9 * box + 0.5 * lead
    return (box > 0.5) | lead


def _endotracheal_tube(canvas: Canvas, finding: Finding, rng: np.random.Generator) -> np.ndarray:
    g = canvas.geometry
    tip_v = g.carina - rng.uniform(0.035, 0.07)
    if canvas.view == FRONTAL:
        path = _bezier((g.cx + 0.01, -0.05), (g.cx - 0.005, 0.15), (g.cx, tip_v))
    else:
        lcu, _ = lateral_lung_centre(g)
        path = _bezier((lcu - 0.16, -0.05), (lcu - 0.06, 0.12), (lcu - 0.02, tip_v))
    tube = _stamp_path(canvas, *path, canvas.pixels(0.008))
    stripe = _stamp_path(canvas, *path, canvas.pixels(0.002))
    canvas.metal += 0.05 * tube + 0.35 * stripe
    return tube


_DRAWERS: dict[str, Callable[[Canvas, Finding, np.random.Generator], np.ndarray]] = {
    "effusion": _effusion,
    "cardiomegaly": _cardiomegaly,
    "pneumothorax": _pneumothorax,
    "nodule": _nodule,
    "consolidation": _consolidation,
    "atelectasis": _atelectasis,
    "edema": _edema,
    "pacemaker": _pacemaker,
    "endotracheal tube": _endotracheal_tube,
}

"""Parametric chest anatomy: per-study geometry and the layers a radiograph is composed of.

Coordinates are normalised: u runs left->right across the image, v top->bottom, both about
[0, 1]. Frontal views follow the radiological convention: the patient's right lung is on the
image's LEFT, the heart bulges to the image's RIGHT. Attenuation is a float where higher means
denser (brighter on a MONOCHROME2 display).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

FRONTAL = "frontal"
LATERAL = "lateral"


@dataclass(frozen=True)
class Geometry:
    """Per-study anatomy; the same numbers drive the frontal and the lateral render."""

    cx: float  # midline
    thorax_half_width: float
    lung_top: float
    diaphragm: float  # lowest point of the left dome, at the costophrenic angle
    dome_height: float
    mediastinum_half_width: float
    heart_cx: float
    heart_cy: float
    heart_half_width: float
    heart_half_height: float
    carina: float
    rotation: float  # radians, patient slightly rotated on the detector
    scale: float  # patient size relative to the field of view
    shift: tuple[float, float]
    vessel_phase: tuple[float, float, float]
    rib_phase: float

    def lung_centre(self, side: str) -> float:
        """u of a lung's centre; side is the patient's side."""
        offset = 0.5 * (self.thorax_half_width + self.mediastinum_half_width)
        return self.cx - offset if side == "right" else self.cx + offset

    def dome(self, side: str) -> float:
        """Lowest v of a hemidiaphragm; the right one sits a little higher."""
        return self.diaphragm - (0.025 if side == "right" else 0.0)

    def hilum(self, side: str) -> tuple[float, float]:
        du = 0.09 if side == "right" else 0.1
        return (self.cx - du if side == "right" else self.cx + du, self.carina + 0.08)

    def ctr(self) -> float:
        """Cardiothoracic ratio: heart width over inner thoracic width."""
        return self.heart_half_width / self.thorax_half_width


def sample_geometry(rng: np.random.Generator) -> Geometry:
    thorax = rng.uniform(0.36, 0.41)
    return Geometry(
        cx=0.5 + rng.uniform(-0.02, 0.02),
        thorax_half_width=thorax,
        lung_top=rng.uniform(0.1, 0.14),
        diaphragm=rng.uniform(0.72, 0.78),
        dome_height=rng.uniform(0.05, 0.08),
        mediastinum_half_width=rng.uniform(0.05, 0.06),
        heart_cx=0.5 + rng.uniform(0.05, 0.07),
        heart_cy=rng.uniform(0.63, 0.66),
        heart_half_width=thorax * rng.uniform(0.39, 0.45),
        heart_half_height=rng.uniform(0.1, 0.12),
        carina=rng.uniform(0.32, 0.36),
        rotation=rng.uniform(-0.04, 0.04),
        scale=rng.uniform(0.94, 1.04),
        shift=(rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02)),
        vessel_phase=tuple(rng.uniform(0, 2 * np.pi, size=3)),
        rib_phase=rng.uniform(0, 1),
    )


def enlarge_heart(geometry: Geometry, factor: float) -> Geometry:
    return replace(
        geometry,
        heart_half_width=geometry.heart_half_width * factor,
        heart_half_height=geometry.heart_half_height * (1 + 0.4 * (factor - 1)),
        heart_cx=geometry.heart_cx + 0.25 * (factor - 1) * geometry.heart_half_width,
    )


@dataclass
class Canvas:
    """Coordinate grids plus the layers findings edit before they are composed."""

    u: np.ndarray
    v: np.ndarray
    view: str
    geometry: Geometry
    lungs: dict[str, np.ndarray] = field(default_factory=dict)  # soft 0..1 per side
    heart: np.ndarray | None = None
    tissue: np.ndarray | None = None  # body, mediastinum, bones
    vessels: np.ndarray | None = None
    opacity: np.ndarray | None = None  # added density from findings (fluid, airspace ...)
    air: np.ndarray | None = None  # removed density (pneumothorax)
    vessel_gain: np.ndarray | float = 1.0
    metal: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.u.shape

    def pixels(self, du: float) -> float:
        """A normalised length in pixels (approximately: scale and rotation are small)."""
        return du * max(self.shape) * self.geometry.scale

    def to_pixels(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of make_canvas's mapping: normalised points -> (row, col) floats."""
        g = self.geometry
        height, width = self.shape
        side = max(height, width)
        cos, sin = np.cos(g.rotation), np.sin(g.rotation)
        x = cos * (u - 0.5) + sin * (v - 0.5)
        y = -sin * (u - 0.5) + cos * (v - 0.5)
        cols = (x + g.shift[0]) * g.scale * side + width / 2
        rows = (y + g.shift[1]) * g.scale * side + height / 2
        return rows, cols

    def region(self, u0: float, u1: float, v0: float, v1: float) -> tuple[slice, slice]:
        """Pixel slices covering a normalised box, so small shapes are computed only there."""
        rows, cols = self.to_pixels(np.array([u0, u1, u0, u1]), np.array([v0, v0, v1, v1]))
        height, width = self.shape
        r0, r1 = int(np.clip(np.floor(rows.min()), 0, height)), int(np.clip(np.ceil(rows.max()) + 1, 0, height))
        c0, c1 = int(np.clip(np.floor(cols.min()), 0, width)), int(np.clip(np.ceil(cols.max()) + 1, 0, width))
        return slice(r0, r1), slice(c0, c1)


def make_canvas(height: int, width: int, geometry: Geometry, view: str) -> Canvas:
    """Grids in patient-normalised coordinates: rotation, size and position jitter applied here."""
    side = max(height, width)
    rows = (np.arange(height, dtype=np.float32) - height / 2) / side
    cols = (np.arange(width, dtype=np.float32) - width / 2) / side
    cos, sin = np.cos(geometry.rotation), np.sin(geometry.rotation)
    x = cols[None, :] / geometry.scale - geometry.shift[0]
    y = rows[:, None] / geometry.scale - geometry.shift[1]
    u = (cos * x - sin * y + 0.5).astype(np.float32)
    v = (sin * x + cos * y + 0.5).astype(np.float32)
    zeros = np.zeros((height, width), np.float32)
    return Canvas(u=u, v=v, view=view, geometry=geometry, opacity=zeros, air=zeros.copy(),
                  metal=zeros.copy())


def draw_anatomy(canvas: Canvas) -> None:
    if canvas.view == FRONTAL:
        _draw_frontal(canvas)
    else:
        _draw_lateral(canvas)


def compose(canvas: Canvas) -> np.ndarray:
    """Attenuation map from the layers; findings have already edited them."""
    lungs = np.clip(sum(canvas.lungs.values()), 0, 1)
    out = canvas.tissue - 0.34 * lungs
    out += 0.1 * canvas.vessels * canvas.vessel_gain * lungs
    out += 0.12 * canvas.heart
    out -= canvas.air
    out += canvas.opacity + canvas.metal
    return out


def soft_inside(distance: np.ndarray, edge: float) -> np.ndarray:
    """0 outside, 1 inside, a linear ramp `edge` wide; `distance` is positive inside."""
    return np.clip(distance / edge + 0.5, 0, 1)


def ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, au: float, av: float) -> np.ndarray:
    """Signed ellipse measure: 1 at the centre, 0 on the rim, negative outside."""
    return 1 - ((u - cu) / au) ** 2 - ((v - cv) / av) ** 2


# --- frontal ------------------------------------------------------------------------------


def _draw_frontal(canvas: Canvas) -> None:
    g, u, v = canvas.geometry, canvas.u, canvas.v
    body = soft_inside(ellipse(u, v, g.cx, 0.62, 0.48, 0.68), 0.08)
    tissue = 0.42 * body
    for side in ("right", "left"):
        canvas.lungs[side] = _frontal_lung(canvas, side)
    thorax = np.clip(canvas.lungs["right"] + canvas.lungs["left"], 0, 1)
    abdomen = soft_inside(v - _dome_curve(canvas, "right"), 0.03) * (u < g.cx) + soft_inside(
        v - _dome_curve(canvas, "left"), 0.03
    ) * (u >= g.cx)
    tissue += 0.08 * abdomen * body
    tissue += _mediastinum(canvas)
    tissue += _spine(u, v, g.cx, 0.034, 0.1)
    tissue += 0.1 * _ribs(canvas) * soft_inside(ellipse(u, v, g.cx, 0.45, g.thorax_half_width + 0.03, 0.4), 0.04)
    tissue += 0.24 * _clavicles(canvas)
    heart = soft_inside(ellipse(u, v, g.heart_cx, g.heart_cy, g.heart_half_width, g.heart_half_height), 0.12)
    canvas.heart = heart
    for side in ("right", "left"):
        canvas.lungs[side] = canvas.lungs[side] * (1 - heart)
    canvas.tissue = tissue
    canvas.vessels = _vessels(canvas) * thorax


def _dome_curve(canvas: Canvas, side: str) -> np.ndarray:
    """v of the hemidiaphragm under each u: a parabola peaking mid-lung."""
    g = canvas.geometry
    centre = g.lung_centre(side)
    half = 0.5 * (g.thorax_half_width - g.mediastinum_half_width)
    t = (canvas.u - centre) / (half * 1.05)
    return g.dome(side) - g.dome_height * (1 - t * t)


def _frontal_lung(canvas: Canvas, side: str) -> np.ndarray:
    """Soft lung mask: narrow at the apex, widest at the base, cut by the dome."""
    g, u, v = canvas.geometry, canvas.u, canvas.v
    sign = -1.0 if side == "right" else 1.0  # image direction of the patient's side
    medial = g.cx + sign * g.mediastinum_half_width
    width = g.thorax_half_width - g.mediastinum_half_width
    t = np.clip((v - g.lung_top) / (g.dome(side) - g.lung_top), 0, 1)
    lateral_reach = width * np.sqrt(t) ** 0.7
    into = sign * (u - medial)  # distance into the hemithorax from the mediastinum
    inside = np.minimum(into, lateral_reach - into)
    inside = np.minimum(inside, v - g.lung_top)
    inside = np.minimum(inside, _dome_curve(canvas, side) - v)
    return soft_inside(inside, 0.012)


def _mediastinum(canvas: Canvas) -> np.ndarray:
    g, u, v = canvas.geometry, canvas.u, canvas.v
    band = soft_inside(g.mediastinum_half_width - np.abs(u - g.cx), 0.02) * soft_inside(g.diaphragm - v, 0.05)
    knob = soft_inside(ellipse(u, v, g.cx + 0.055, g.carina - 0.04, 0.035, 0.03), 0.2)
    trachea = soft_inside(0.014 - np.abs(u - g.cx), 0.008) * soft_inside(g.carina - v, 0.01)
    return 0.13 * np.maximum(band, knob) - 0.08 * trachea


def _spine(u: np.ndarray, v: np.ndarray, centre: float, half: float, density: float) -> np.ndarray:
    """Vertebral column with faint end plates every few centimetres."""
    column = soft_inside(half - np.abs(u - centre), 0.01)
    plates = 0.85 + 0.15 * np.cos(2 * np.pi * v / 0.05)
    return density * column * plates


def _ribs(canvas: Canvas) -> np.ndarray:
    """Posterior ribs as periodic arcs in a warped coordinate, one family per side."""
    g, u, v = canvas.geometry, canvas.u, canvas.v
    d = np.abs(u - g.cx)
    warped = v + 1.1 * d * d - 0.1 * d
    phase = 2 * np.pi * (warped / 0.062 + g.rib_phase)
    ribs = np.clip(np.cos(phase), 0, None)
    ribs **= 3
    return ribs * soft_inside(d - 0.03, 0.03) * soft_inside(0.8 - v, 0.08)


def _clavicles(canvas: Canvas) -> np.ndarray:
    g, u, v = canvas.geometry, canvas.u, canvas.v
    d = np.abs(u - g.cx) - 0.035
    span = 0.27
    s = d / span
    curve = g.lung_top + 0.07 - 0.05 * s + 0.015 * np.sin(np.pi * s)
    bone = soft_inside(0.012 - np.abs(v - curve), 0.006)
    return bone * soft_inside(np.minimum(s, 1 - s), 0.05)


def _vessels(canvas: Canvas) -> np.ndarray:
    """Branching-looking markings radiating from each hilum, fading toward the periphery."""
    g = canvas.geometry
    out = np.zeros(canvas.shape, np.float32)
    for side, phase in (("right", g.vessel_phase[0]), ("left", g.vessel_phase[1])):
        hu, hv = g.hilum(side)
        if side == "right":
            box = canvas.region(g.cx - g.thorax_half_width - 0.05, g.cx, g.lung_top - 0.03, g.diaphragm + 0.02)
        else:
            box = canvas.region(g.cx, g.cx + g.thorax_half_width + 0.05, g.lung_top - 0.03, g.diaphragm + 0.02)
        du, dv = canvas.u[box] - hu, canvas.v[box] - hv
        r = np.sqrt(du * du + dv * dv) + 1e-3
        wiggle = np.arctan2(dv, du) * 9 + phase + 2.5 * np.sin(17 * r + g.vessel_phase[2])
        lines = np.clip(1 - np.abs(np.sin(wiggle)) / 0.25, 0, None)
        lines *= np.exp(-r / 0.2)
        same_side = (canvas.u[box] < g.cx) if side == "right" else (canvas.u[box] >= g.cx)
        out[box] += lines * same_side
    return out


# --- lateral ------------------------------------------------------------------------------
# Anterior is the image's left: heart in front, spine behind, one lung field.


def lateral_lung_centre(g: Geometry) -> tuple[float, float]:
    return (g.cx + 0.02, 0.45)


def _draw_lateral(canvas: Canvas) -> None:
    g, u, v = canvas.geometry, canvas.u, canvas.v
    body = soft_inside(ellipse(u, v, g.cx, 0.6, 0.38, 0.7), 0.08)
    tissue = 0.5 * body
    lcu, lcv = lateral_lung_centre(g)
    field_ = ellipse(u, v, lcu, lcv, 0.27, 0.36)
    dome = g.diaphragm - g.dome_height * 1.4 * (1 - ((u - lcu) / 0.3) ** 2)
    inside = np.minimum(field_ * 0.1, dome - v)
    lung = soft_inside(inside, 0.015)
    tissue += _spine(u, v, g.cx + 0.27, 0.05, 0.3)
    tissue += 0.15 * soft_inside(0.012 - np.abs(u - (g.cx - 0.3)), 0.006) * soft_inside(0.7 - v, 0.05)
    w = g.heart_half_width / 0.16  # frontal heart width drives the lateral heart size
    heart = soft_inside(ellipse(u, v, g.cx - 0.12 * w, g.heart_cy, 0.15 * w, g.heart_half_height * 1.1), 0.12)
    canvas.heart = heart
    canvas.lungs = {"both": lung * (1 - heart)}
    canvas.tissue = tissue
    canvas.vessels = 0.5 * _vessels(canvas) * lung

"""Render one radiograph: anatomy, findings, exposure and noise -> intensity in [0, 1] plus masks.

Every random draw comes from a generator keyed by (study entropy, view, purpose), so dropping
one finding leaves the anatomy, the other findings and the noise of a render unchanged: tests
and the lead's debugging can diff a render with and without a finding.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from corpus.anatomy import FRONTAL, LATERAL, Geometry, compose, draw_anatomy, make_canvas
from corpus.findings import CATEGORIES, Finding
from corpus.lesions import adjust_geometry, draw_finding

_VIEW_CODE = {FRONTAL: 1, LATERAL: 2}
_NOISE_KEY = 1000
_HALF_RESOLUTION_FROM = 256


@dataclass
class Rendered:
    image: np.ndarray  # float32 (rows, cols), 0..1, brighter = denser (MONOCHROME2 look)
    masks: dict[str, np.ndarray]  # category -> bool mask, one per drawn finding


def render_view(
    geometry: Geometry,
    view: str,
    findings: list[Finding],
    height: int,
    width: int,
    entropy: tuple[int, ...],
    exposure: float = 1.0,
) -> Rendered:
    """Draw `findings` on the study's anatomy seen from `view`."""
    # Anatomy and findings are smooth: draw them at reduced resolution and upsample; only the
    # quantum noise needs every pixel. This keeps 200 studies at 512 px well under 20 s.
    factor = 2 if min(height, width) >= _HALF_RESOLUTION_FROM else 1
    work_h, work_w = -(-height // factor), -(-width // factor)
    canvas = make_canvas(work_h, work_w, adjust_geometry(geometry, findings), view)
    draw_anatomy(canvas)
    masks = {}
    for finding in findings:
        key = (*entropy, _VIEW_CODE[view], CATEGORIES.index(finding.category))
        masks[finding.category] = draw_finding(canvas, finding, np.random.default_rng(key))
    attenuation = _resize(compose(canvas), height, width)
    masks = {category: _resize(mask.astype(np.float32), height, width) > 0.5 for category, mask in masks.items()}
    noise_rng = np.random.default_rng((*entropy, _VIEW_CODE[view], _NOISE_KEY))
    return Rendered(image=_expose(attenuation, exposure, noise_rng), masks=masks)


def _resize(layer: np.ndarray, height: int, width: int) -> np.ndarray:
    if layer.shape == (height, width):
        return layer
    resized = Image.fromarray(layer.astype(np.float32, copy=False)).resize((width, height), Image.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def _expose(attenuation: np.ndarray, exposure: float, rng: np.random.Generator) -> np.ndarray:
    """Detector response: a film-like curve, a slight heel-effect gradient and quantum noise."""
    height, width = attenuation.shape
    heel = np.linspace(-0.03, 0.03, height, dtype=np.float32)[:, None] * rng.choice([-1.0, 1.0])
    signal = attenuation * exposure + heel
    image = 1.1 * np.tanh(1.6 * signal) - 0.02
    image += rng.standard_normal(attenuation.shape, dtype=np.float32) * rng.uniform(0.006, 0.014)
    return np.clip(image, 0, 1).astype(np.float32, copy=False)

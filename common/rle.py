"""SIIM-ACR pneumothorax run-length encoding.

The mask is read column by column (the transpose, flattened row-major); the string is pairs
"start length" where each start counts the background pixels since the end of the previous run.
"""
from __future__ import annotations

import numpy as np

EMPTY = "-1"


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D boolean mask; an empty mask gives '-1'."""
    flat = np.asarray(mask, dtype=bool).T.ravel()
    padded = np.concatenate([[False], flat, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[0::2], edges[1::2]
    if starts.size == 0:
        return EMPTY
    previous_ends = np.concatenate([[0], ends[:-1]])
    pairs = np.stack([starts - previous_ends, ends - starts], axis=1).ravel()
    return " ".join(str(int(n)) for n in pairs)


def rle_decode(rle: str, height: int, width: int) -> np.ndarray:
    """Decode to a (height, width) boolean mask; '-1' or blank gives an empty mask."""
    mask = np.zeros(height * width, dtype=bool)
    text = rle.strip()
    if not text or text == EMPTY:
        return mask.reshape(height, width)
    numbers = np.array(text.split(), dtype=np.int64)
    if numbers.size % 2:
        raise ValueError(f"RLE has an odd count of numbers ({numbers.size}): {text[:60]!r}")
    gaps, lengths = numbers[0::2], numbers[1::2]
    starts = np.cumsum(gaps + np.concatenate([[0], lengths[:-1]]))
    if starts.size and starts[-1] + lengths[-1] > mask.size:
        raise ValueError(f"RLE runs past the end of a {height}x{width} mask")
    for start, length in zip(starts, lengths):
        mask[start : start + length] = True
    return mask.reshape(width, height).T

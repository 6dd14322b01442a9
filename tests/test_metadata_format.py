"""What the Dagster UI shows: floats rounded to what a reader uses, intervals as "0.892–0.923"."""

import math

from assets.metadata import format_interval, rounded
from pipeline.demo import format_ci


def test_floats_keep_four_significant_digits_and_small_values_their_size():
    shown = rounded({"auc": 0.891734562, "seconds": 123.456789, "error": 3.21987e-05, "rows": 7, "name": "x"})
    assert shown == {"auc": 0.8917, "seconds": 123.5, "error": 3.22e-05, "rows": 7, "name": "x"}


def test_intervals_read_as_a_range():
    assert format_interval((0.89171, 0.92349)) == "0.892–0.923"
    assert format_interval((math.nan, math.nan)) == "n/a" and format_interval(None) == "n/a"
    assert format_ci("(0.6846, 0.7314)") == "0.685–0.731" and format_ci("0.892–0.923") == "0.892–0.923"

"""What the Dagster UI shows: floats rounded to what a reader uses, intervals as "0.892–0.923"."""

import math

from assets.metadata import format_interval, rounded
from pipeline.demo import demo_figures, format_ci


def test_floats_keep_four_significant_digits_and_small_values_their_size():
    shown = rounded({"auc": 0.891734562, "seconds": 123.456789, "error": 3.21987e-05, "rows": 7, "name": "x"})
    assert shown == {"auc": 0.8917, "seconds": 123.5, "error": 3.22e-05, "rows": 7, "name": "x"}


def test_intervals_read_as_a_range():
    assert format_interval((0.89171, 0.92349)) == "0.892–0.923"
    assert format_interval((math.nan, math.nan)) == "n/a" and format_interval(None) == "n/a"
    assert format_ci("(0.6846, 0.7314)") == "0.685–0.731" and format_ci("0.892–0.923") == "0.892–0.923"


def test_demo_figures_are_flat_numbers_with_intervals_split():
    """What benchmarks/demo.py records: seconds, rows, numeric metadata of the model and the
    evaluations, and an interval string as its two bounds; text and other assets left out."""
    summaries = [{"rows": {"dicom_index": 10}, "assets": {"dicom_index": {"quarantined": 2}}},
                 {"rows": {"ssm": 4}, "assets": {
                     "zero_shot_eval": {"mean_auc": 0.9, "mean_auc_ci": "0.888–0.916", "unseen_categories": "edema"},
                     "segmentation_eval": {"diff_dice_vs_random": -0.2, "verdict_dice_vs_random": "worse"}}}]
    assert demo_figures(summaries, {"total": 12.34}) == {
        "seconds.total": 12.3, "rows.dicom_index": 10, "rows.ssm": 4, "zero_shot_eval.mean_auc": 0.9,
        "zero_shot_eval.mean_auc_ci_low": 0.888, "zero_shot_eval.mean_auc_ci_high": 0.916,
        "segmentation_eval.diff_dice_vs_random": -0.2}

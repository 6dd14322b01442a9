"""Results as one JSON-able dict, a markdown table and ROC curve PNGs (matplotlib, Agg)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from common import tables
from common.storage import atomic_path, write_bytes
from common.plots import pyplot


def results_table(results: Mapping[str, Any]) -> list[dict[str, str]]:
    """Rows {"task", "setting", "metric", "value"} from the dict run by benchmarks/evaluate.py:
    keys "zero_shot" / "unseen" (per dataset), "retrieval", "finetune", "segmentation"."""
    rows: list[dict[str, str]] = []
    for name, report in results.get("zero_shot", {}).items():
        rows.append(_row("zero-shot", name, "mean AUC (test)", report["mean_auc"], report.get("mean_auc_ci")))
        rows.append(_row("zero-shot", name, "mean F1 @val threshold", report["mean_f1"], report.get("mean_f1_ci")))
        rows.append(_row("zero-shot", name, "mean ACC @val threshold", report["mean_acc"], report.get("mean_acc_ci")))
        for group in ("seen", "unseen"):
            summary = report.get(group, {})
            if summary.get("evaluable"):
                label = f"{name} {group} ({', '.join(summary['evaluable'])})"
                rows.append(_row("zero-shot", label, "mean AUC (test)", summary["mean_auc"], summary["mean_auc_ci"]))
        paper = report.get("paper_protocol")
        if paper:
            rows.append(_row("zero-shot", name, f"mean F1, {paper['protocol']}", paper["mean_f1"]))
    for name, report in results.get("retrieval", {}).items():
        for direction in ("image_to_text", "text_to_image"):
            for key, value in report[direction].items():
                if "@" in key:
                    rows.append(_row("retrieval", f"{name} {direction.replace('_', ' ')}", key, value))
    for name, report in results.get("finetune", {}).items():
        seeds = len(report["seeds"])
        for arm in report["arms"]:
            setting = f"{name} {arm['mode']} {arm['init']} {arm['fraction']:.0%}"
            rows.append(_spread_row("fine-tune", setting, f"mean AUC (test), {seeds} seeds", arm["mean_auc"],
                                    arm["mean_auc_sd"]))
        for comparison in report["comparisons"]:
            setting = f"{name} {comparison['mode']} {comparison['fraction']:.0%}"
            rows.append(_comparison_row("fine-tune", setting, comparison))
    for name, report in results.get("segmentation", {}).items():
        seeds = len(report["seeds"])
        for arm in report["arms"]:
            for metric, label in (("mean_dice", "Dice"), ("mean_iou", "IoU")):
                rows.append(_spread_row("segmentation", f"{name} {arm['init']}", f"mean {label} (test), {seeds} seeds",
                                        arm[metric], arm[f"{metric}_sd"]))
        for comparison in report["comparisons"]:
            rows.append(_comparison_row("segmentation", name, comparison))
    return rows


def markdown_table(results: Mapping[str, Any]) -> str:
    rows = [{**r, "value (95% CI)": r["value"]} for r in results_table(results)]
    return tables.markdown_table(rows, ["task", "setting", "metric", "value (95% CI)"]) + "\n"


def plot_roc(curves: Mapping[str, Mapping[str, list[float]]], path: str | Path, title: str = "ROC (test)") -> Path:
    """One line per category from metrics.roc_points / the zero-shot report's "roc"; atomic PNG."""
    plt = pyplot()

    figure, axes = plt.subplots(figsize=(5, 5))
    for category, curve in curves.items():
        axes.plot(curve["fpr"], curve["tpr"], label=category, linewidth=1.2)
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
    axes.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    if curves:
        axes.legend(fontsize=7, loc="lower right")
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path


def plot_examples(data: Any, path: str | Path, count: int = 8, size: int = 128) -> Path:
    """A few evaluation images with their labels (and mask outlines when the set has masks); atomic PNG."""
    plt = pyplot()

    count = min(count, len(data))
    figure, axes = plt.subplots(1, count, figsize=(2 * count, 2.4))
    for i, axis in enumerate(axes if count > 1 else [axes]):
        axis.imshow(data.image(i, size), cmap="gray")
        if getattr(data, "mask_rles", None):
            axis.contour(data.mask(i, size), levels=[0.5], colors="red", linewidths=0.8)
        labels = [c for c, v in zip(data.categories, data.labels[i]) if v]
        axis.set_title(", ".join(labels) or "no finding", fontsize=7)
        axis.axis("off")
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=80, bbox_inches="tight")
    plt.close(figure)
    return path


def write_json(results: Mapping[str, Any], path: str | Path) -> Path:
    path = Path(path)
    text = json.dumps(_jsonable(results), indent=2, sort_keys=True)
    write_bytes(path, (text + "\n").encode("utf-8"))
    return path


def _row(task: str, setting: str, metric: str, value: float, ci: Any = None) -> dict[str, str]:
    text = "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
    if ci is not None and text != "n/a" and not any(math.isnan(v) for v in ci[:2]):
        text += f" ({ci[0]:.3f}–{ci[1]:.3f})"
    return {"task": task, "setting": setting, "metric": metric, "value": text}


def _spread_row(task: str, setting: str, metric: str, mean: float, sd: float) -> dict[str, str]:
    text = "n/a" if math.isnan(mean) else f"{mean:.3f}" + ("" if math.isnan(sd) else f" ± {sd:.3f} (sd)")
    return {"task": task, "setting": setting, "metric": metric, "value": text}


def _comparison_row(task: str, setting: str, comparison: Mapping[str, Any]) -> dict[str, str]:
    """"pretrained - random: Δ mean AUC (test)" | "+0.112 (+0.080 to +0.140): better"."""
    difference, (low, high) = comparison["difference"], comparison["difference"]["ci"]
    text = "n/a" if math.isnan(low) else f"{difference['mean']:+.3f} ({low:+.3f} to {high:+.3f})"
    return {"task": task, "setting": f"{setting}: {comparison['candidate_init']} - {comparison['baseline_init']}",
            "metric": f"difference of {comparison['metric']}, paired", "value": f"{text}: {comparison['verdict']}"}


def _jsonable(value: Any) -> Any:
    """NaN becomes null (JSON has no NaN); numpy scalars and tuples become plain values."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value



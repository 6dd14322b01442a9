"""Break each evaluation metric on purpose, once, and show that tests/test_known_answers.py fails.

Each mutation (a swapped class, an inverted score, an off-by-one) is applied to a copy of the
working tree in a temporary folder, never to the tree itself; the known-answer tests run there.
A mutation that no test catches exits 1.

    python tests/break_metrics.py            # every mutation (about 20 s each on 2 cores)
    python tests/break_metrics.py 3 8        # mutations 3 and 8
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (what breaks, file, the exact text, its broken replacement)
MUTATIONS = [
    ("per_class_auc inverted score", "medfilip_model/zero_shot.py", "roc_auc_score(labels[:, j], scores[:, j])", "roc_auc_score(labels[:, j], -scores[:, j])"),
    ("rank_auc off-by-one (U statistic)", "evaluation/metrics.py", "positives * (positives + 1) / 2", "positives * (positives - 1) / 2"),
    ("zero-shot score inverted", "evaluation/zero_shot.py", "return (image_features @ text_features.T).numpy()", "return (-(image_features @ text_features.T)).numpy()"),
    ("zero-shot prompts of classes 0/1 swapped", "evaluation/zero_shot.py", "text_features = embed_texts(model, tokenizer, list(prompts.values()), device=device)", "v = list(prompts.values()); text_features = embed_texts(model, tokenizer, [v[1], v[0], *v[2:]], device=device)"),
    ("zero-shot test scores one row off", "evaluation/zero_shot.py", "data.labels[test], scores[test], categories,\n", "data.labels[test], scores[(test + 1) % len(scores)], categories,\n"),
    ("F1: > instead of >= at the threshold", "evaluation/metrics.py", "predicted = scores >= np.asarray(thresholds)[None, :]", "predicted = scores > np.asarray(thresholds)[None, :]"),
    ("best-F1 cut: count off by one", "evaluation/metrics.py", "predicted = np.arange(1, len(s) + 1)[last_of_value]", "predicted = np.arange(2, len(s) + 2)[last_of_value]"),
    ("training labels: negation ignored", "medfilip_model/zero_shot.py", "if j is not None and not self.negated[text_id]:", "if j is not None:"),
    ("retrieval top-k off by one", "evaluation/retrieval.py", "found = ranked_relevance[:, :k].sum(axis=1)[answerable]", "found = ranked_relevance[:, :k + 1].sum(axis=1)[answerable]"),
    ("retrieval ranking inverted", "evaluation/retrieval.py", "order = np.argsort(-similarity, axis=1, kind=\"stable\")", "order = np.argsort(similarity, axis=1, kind=\"stable\")"),
    ("retrieval precision denominator off by one", "evaluation/retrieval.py", "found / min(k, similarity.shape[1])", "found / min(k + 1, similarity.shape[1])"),
    ("fine-tune probe trained on rolled (swapped) class columns", "evaluation/finetune.py", "_train_probe(head, features[train_rows], targets[train_rows].to(device), seeded)", "_train_probe(head, features[train_rows], targets[train_rows].roll(1, dims=1).to(device), seeded)"),
    ("fine-tune linear score inverted", "evaluation/finetune.py", "scores = torch.sigmoid(probe_head(features)).cpu().numpy()", "scores = torch.sigmoid(-probe_head(features)).cpu().numpy()"),
    ("fine-tune test rows off by one", "evaluation/finetune.py", "return scores[split[\"val\"]], scores[split[\"test\"]]", "return scores[split[\"val\"]], scores[(split[\"test\"] + 1) % len(scores)]"),
    ("predicted probabilities inverted (full fine-tune, segmentation)", "evaluation/encode.py", "out = [torch.sigmoid(net(", "out = [torch.sigmoid(-net("),
    ("Dice off by one", "evaluation/segmentation.py", "dice = np.where(total > 0, 2 * inter / total, 1.0)", "dice = np.where(total > 0, 2 * inter / (total + 1), 1.0)"),
    ("Dice subsets: with / without a mask swapped", "evaluation/segmentation.py", "out.update(mean_dice_with_mask=mean(dice[with_mask]), empty_predicted_without_mask=mean(dice[~with_mask]),", "out.update(mean_dice_with_mask=mean(dice[~with_mask]), empty_predicted_without_mask=mean(dice[with_mask]),"),
    ("IoU off by one", "evaluation/segmentation.py", "iou = np.where(union > 0, inter / union, 1.0)", "iou = np.where(union > 0, inter / (union + 1), 1.0)"),
]


def run(mutation: tuple[str, str, str, str], workdir: Path) -> list[str]:
    """The known-answer tests that fail with `mutation` applied in `workdir`."""
    _, path, old, new = mutation
    target = workdir / path
    source = (ROOT / path).read_text()
    if source.count(old) != 1:
        raise SystemExit(f"{path}: the text to break is not there exactly once; update MUTATIONS")
    target.write_text(source.replace(old, new))
    try:
        env = {**os.environ, "PYTHONPATH": str(workdir)}
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                 "tests/test_known_answers.py"], cwd=workdir, env=env, capture_output=True, text=True)
        return sorted(set(re.findall(r"FAILED tests/test_known_answers.py::(\S+)", result.stdout)))
    finally:
        target.write_text(source)


def main(selected: list[str]) -> int:
    uncaught = []
    with tempfile.TemporaryDirectory(prefix="break-metrics-") as tmp:
        workdir = Path(tmp) / "tree"
        shutil.copytree(ROOT, workdir, ignore=shutil.ignore_patterns(".git", ".venv", ".medfilip", "__pycache__"))
        for i, mutation in enumerate(MUTATIONS):
            if selected and str(i) not in selected:
                continue
            failed = run(mutation, workdir)
            print(f"[{i}] {mutation[0]}: {len(failed)} known-answer tests fail", flush=True)
            for name in failed:
                print(f"      {name}", flush=True)
            if not failed:
                uncaught.append(mutation[0])
    if uncaught:
        print(f"not caught: {', '.join(uncaught)}", file=sys.stderr)
    return 1 if uncaught else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

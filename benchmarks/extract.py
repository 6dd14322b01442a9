"""Extraction benchmark (run by hand): python benchmarks/extract.py [--reports 10000] [--quality]

Default: rules backend reports/s (cold, real IU reports cycled); openai backend against a
local stub endpoint with a fixed injected latency, concurrency 1 vs N; and the time of a
no-change re-run over N reports (must make zero calls).

--quality: labelling quality on the IU gold standard (testkit/data/iu_gold_labels.csv, labelled
by reading, see docs/labelling_guideline.md; the vocabulary and rules are tuned on its dev half
only, test is held out). For each split and both uncertainty policies it prints per-class
precision / recall / F1 of ChestX-ray14's 14 findings, micro and macro F1, for
- rules: the real extraction path, make_backend -> complete -> parse -> to_triplets, then
  knowledge/label_maps.yaml (chestxray14) maps categories to labels. A label is present when a
  non-negated triplet of a mapped category exists; hedged when all such triplets are uncertain;
- keyword: a baseline in this file, one keyword list per class and a negation window of six
  words before the keyword (and hedge words, for the uncertain value), sentence by sentence.
Scoring (tests/iu_gold.py): under "uncertain as positive" gold 1 and -1 are positive and so are
predicted 1 and -1; under "uncertain as negative" only 1 is, on both sides. Gold 0 and empty
(not mentioned) are negative. Macro F1 averages the classes that have a gold positive in the
split under that policy. It also prints the rules backend's reports/s on one core (one thread,
complete() only, over every IU report; per CPU second, and per wall second).

--tokens: prompt + completion tokens per report on the LLM path (stub server's usage counts,
which count words), one report per request against K in (4, 8, 16) reports per request
(`reports_per_request`), over the first --llm-reports IU reports, with the parsed answers compared
to the one-per-request run; and how much of each request is the stable prefix (the system prompt)
that providers' prompt caching serves.

Every run writes its figures to benchmarks/results/extract_speed.json, extract_quality.json or
extract_tokens.json (testkit/results.py), from which the README copies them.

medspaCy was evaluated as the engine instead of our triggers and not adopted (2026-12-03); that
comparison ran by hand, from no committed script, so its figures are not quoted here.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.tables import markdown_table  # noqa: E402
from extraction.backends import make_backend  # noqa: E402
from extraction.extract import extract_reports  # noqa: E402
from testkit.iu_gold import (  # noqa: E402
    CLASSES,
    POLICIES,
    load_gold,
    load_iu_texts,
    rules_labels,
    score,
)
from testkit.openai_stub import StubServer  # noqa: E402
from testkit.results import run_start, write_result  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reports", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--llm-reports", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--quality", action="store_true", help="F1 on the IU gold standard")
    parser.add_argument("--tokens", action="store_true", help="tokens per report, K reports per request")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    started = run_start()
    if args.quality:
        write_result("extract_quality", args, quality(), started=started)
        return
    if args.tokens:
        write_result("extract_tokens", args, tokens(args.llm_reports), started=started)
        return
    figures: dict[str, float] = {}
    iu = load_iu_reports()
    texts = [f"{iu[i % len(iu)]} [copy {i}]" for i in range(args.reports)]
    table = reports_table(texts)

    with tempfile.TemporaryDirectory() as tmp:
        rules = make_backend({"kind": "rules"})
        cold = extract_reports(table, rules, Path(tmp) / "rules.duckdb")
        warm = extract_reports(table, rules, Path(tmp) / "rules.duckdb")
        pure = time.perf_counter()
        for text in texts[:2000]:
            rules.complete(text)
        pure = time.perf_counter() - pure
        print(f"rules: {args.reports} reports cold run {cold.stats.wall_s:.2f} s "
              f"({args.reports / cold.stats.wall_s:,.0f} reports/s incl. cache writes); "
              f"extractor alone {2000 / pure:,.0f} reports/s")
        print(f"no-change re-run ({args.reports} reports): {warm.stats.wall_s:.2f} s, "
              f"calls={warm.stats.calls}, cache hits={warm.stats.cache_hits}")
        figures.update(rules_cold_reports_per_s=args.reports / cold.stats.wall_s,
                       rules_extractor_reports_per_s=2000 / pure, rerun_s=warm.stats.wall_s,
                       rerun_calls=warm.stats.calls, rerun_cache_hits=warm.stats.cache_hits)

        os.environ["MEDFILIP_BENCH_KEY"] = "bench"
        llm_table = reports_table(texts[:args.llm_reports])
        timings = {}
        with StubServer(default="slow", delay_s=args.latency_ms / 1000) as server:
            for concurrency in (1, args.concurrency):
                backend = make_backend({"kind": "openai", "base_url": server.base_url, "model": "stub",
                                        "api_key_env": "MEDFILIP_BENCH_KEY", "concurrency": concurrency})
                result = extract_reports(llm_table, backend, Path(tmp) / f"llm{concurrency}.duckdb")
                timings[concurrency] = result.stats.wall_s
                print(f"openai (stub, {args.latency_ms:.0f} ms latency) concurrency {concurrency}: "
                      f"{args.llm_reports} reports in {result.stats.wall_s:.2f} s "
                      f"({args.llm_reports / result.stats.wall_s:.1f} reports/s), calls={result.stats.calls}")
                figures[f"openai_stub_concurrency_{concurrency}_reports_per_s"] = args.llm_reports / result.stats.wall_s
            rerun = extract_reports(llm_table, backend, Path(tmp) / f"llm{args.concurrency}.duckdb")
        print(f"speed-up concurrency {args.concurrency} vs 1: {timings[1] / timings[args.concurrency]:.1f}x; "
              f"openai re-run calls={rerun.stats.calls}")
        figures.update(openai_speedup=timings[1] / timings[args.concurrency], openai_rerun_calls=rerun.stats.calls)
    write_result("extract_speed", args, figures, started=started)


def tokens(n_reports: int) -> dict[str, float]:
    from extraction.parse import parse_answer
    from extraction.prompts import default_prompt_dir, load_prompt

    texts = load_iu_reports()[:n_reports]
    table = reports_table(texts)
    os.environ["MEDFILIP_BENCH_KEY"] = "bench"
    prefix_words = len(load_prompt(default_prompt_dir()).system.split())
    rows, baseline, base_answers = [], None, None
    figures: dict[str, float] = {"system_prompt_words": prefix_words}
    with tempfile.TemporaryDirectory() as tmp, StubServer() as server:
        for k in (1, 4, 8, 16):
            before = len(server.requests)
            backend = make_backend({"kind": "openai", "base_url": server.base_url, "model": "stub",
                                    "api_key_env": "MEDFILIP_BENCH_KEY", "concurrency": 4, "reports_per_request": k})
            result = extract_reports(table, backend, Path(tmp) / f"k{k}.duckdb")
            answers = [[(f.severity, f.location, f.category, f.uncertain) for f in parse_answer(a).findings]
                       for a in result.table.column("answer").to_pylist()]
            requests = len(server.requests) - before
            per_report = (result.stats.prompt_tokens + result.stats.completion_tokens) / len(texts)
            baseline = baseline or per_report
            base_answers = base_answers or answers
            figures.update({f"k{k}_tokens_per_report": per_report, f"k{k}_vs_one_per_request": per_report / baseline,
                            f"k{k}_answers_equal": int(answers == base_answers)})
            rows.append({"reports per request": k, "requests": requests,
                         "prompt tokens / report": f"{result.stats.prompt_tokens / len(texts):.0f}",
                         "completion tokens / report": f"{result.stats.completion_tokens / len(texts):.0f}",
                         "total / report": f"{per_report:.0f}", "vs one per request": f"{per_report / baseline:.2f}x",
                         "stable prefix share": f"{prefix_words * requests / max(1, result.stats.prompt_tokens):.0%}",
                         "answers equal": "yes" if answers == base_answers else "NO"})
    print(f"{len(texts)} IU reports, stub usage counts (words); stable prefix = system prompt, {prefix_words} words")
    print(markdown_table(rows, list(rows[0])))
    return figures


def load_iu_reports() -> list[str]:
    return list(load_iu_texts().values())


def quality() -> dict[str, float]:
    gold = load_gold()
    texts = load_iu_texts(set(gold))
    rules = make_backend({"kind": "rules"})
    labellers = {"rules": rules_labels(rules, texts), "keyword": keyword_labels(texts)}
    figures: dict[str, float] = {}
    for split in ("dev", "test"):
        part = load_gold(split)
        for policy in POLICIES:
            scores = {name: score(part, predicted, policy) for name, predicted in labellers.items()}
            key = f"{split}_{policy.replace(' ', '_')}"
            for name, result in scores.items():
                figures[f"{key}_{name}_micro_f1"] = result.micro[2]
                figures[f"{key}_{name}_macro_f1"] = result.macro_f1
                figures.update({f"{key}_{name}_f1_{label}": result.prf(label)[2] for label in CLASSES})
            print(f"\n## {split} ({len(part)} reports), {policy}\n")
            columns = ["class", "gold +"] + [f"{n} {m}" for n in scores for m in ("P", "R", "F1")]
            rows = []
            for label in CLASSES:
                tp, _, fn = scores["rules"].counts[label]
                rows.append([label, tp + fn] + [f"{v:.2f}" for s in scores.values() for v in s.prf(label)])
            rows.append(["micro", ""] + [f"{v:.2f}" for s in scores.values() for v in s.micro])
            rows.append(["macro F1", ""] + [c for s in scores.values() for c in ("", "", f"{s.macro_f1:.2f}")])
            print(markdown_table([dict(zip(columns, row)) for row in rows], columns))
    all_texts = list(load_iu_texts().values())
    wall, cpu = time.perf_counter(), time.process_time()
    for text in all_texts:
        rules.complete(text)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    # CPU time of this one thread is the one-core figure; wall time also counts waiting
    # for the core when other work shares the machine.
    print(f"\nrules backend, complete() only, one thread: {len(all_texts)} IU reports, "
          f"{len(all_texts) / cpu:,.0f} reports per CPU second ({len(all_texts) / wall:,.0f} per wall second)")
    figures.update(rules_reports=len(all_texts), rules_reports_per_cpu_s=len(all_texts) / cpu,
                   rules_reports_per_wall_s=len(all_texts) / wall)
    return figures


# The baseline: a finding is named by one of a few words; "no"-type words up to six words
# before it negate it, hedge words there make it uncertain.
KEYWORDS = {
    "Atelectasis": ["atelecta", "collapse"],
    "Cardiomegaly": ["cardiomegaly", "heart is enlarged", "enlarged heart", "heart size is enlarged"],
    "Effusion": ["effusion"],
    "Infiltration": ["infiltrat", "airspace disease", "airspace opacit", "air space disease"],
    "Mass": [" mass"],
    "Nodule": ["nodule", "nodular"],
    "Pneumonia": ["pneumonia"],
    "Pneumothorax": ["pneumothora"],
    "Consolidation": ["consolidat"],
    "Edema": ["edema"],
    "Emphysema": ["emphysema", "copd"],
    "Fibrosis": ["fibros", "fibrotic"],
    "Pleural_Thickening": ["pleural thickening"],
    "Hernia": ["hernia"],
}
NEGATIONS = {"no", "not", "without", "negative", "free", "clear", "resolved"}
HEDGES = {"possible", "possibly", "may", "might", "could", "likely", "probable", "suspicious",
          "versus", "questionable", "suggest", "suggestive", "concerning"}


def keyword_labels(texts: dict[str, str]) -> dict[str, dict[str, int | None]]:
    predicted = {}
    for rid, text in texts.items():
        labels: dict[str, int | None] = {label: None for label in CLASSES}
        for sentence in re.split(r"(?<=\.)\s+|\n", text.lower()):
            for label, words in KEYWORDS.items():
                for word in words:
                    at = sentence.find(word)
                    if at < 0:
                        continue
                    window = set(re.findall(r"[a-z]+", sentence[:at])[-6:])
                    value = 0 if window & NEGATIONS else -1 if window & HEDGES else 1
                    labels[label] = max(labels[label], value, key=lambda v: (None, 0, -1, 1).index(v))
        predicted[rid] = labels
    return predicted


def reports_table(texts: list[str]) -> pa.Table:
    return pa.table({"study_id": [f"b{i}" for i in range(len(texts))], "text": texts,
                     "text_sha256": [hashlib.sha256(t.encode()).hexdigest() for t in texts]})


if __name__ == "__main__":
    main()

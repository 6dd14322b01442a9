"""Extraction benchmark (run by hand): python benchmarks/extract.py [--reports 10000] [--quality] [--tokens]
[--llm-server --llm-reports 50]

Default: rules backend reports/s (cold, real IU reports cycled); openai backend against a
local stub endpoint with a fixed injected latency, concurrency 1 vs N; and the time of a
no-change re-run over N reports (must make zero calls).

--quality: labelling quality on the IU gold sets (testkit/data/, labelled by reading under the
written conventions of docs/labelling_guideline.md): for each convention (`chestxray14`, scored
on its 14 findings against iu_*_chestxray14.csv; `chexpert`, its 14 observations with No Finding
against iu_*_chexpert.csv), each set (dev: 600 reports the vocabulary and rules are tuned on;
heldout: 300 reports nobody tunes on, `--sets dev` leaves them out) and both uncertainty
policies, it prints per-class precision / recall / F1, micro and macro F1, for
- rules: the real extraction path, make_backend -> complete -> parse -> to_triplets -> labels_table
  with that convention's map of knowledge/label_maps.yaml;
- keyword: a baseline in this file, one keyword list per class of the convention and a negation
  window of six words before the keyword (and hedge words, for the uncertain value);
- medspacy and negspacy: the comparators of benchmarks/comparators/ (their own venv, same phrases
  per convention), read from benchmarks/out/comparators/*.json once run.sh has written them.
Scoring (testkit/iu_gold.py): under "uncertain as positive" gold 1 and -1 are positive and so are
predicted 1 and -1; under "uncertain as negative" only 1 is, on both sides. Gold 0 and empty
(not mentioned) are negative. Macro F1 averages the classes that have a gold positive in the
set under that policy. On the held-out set, under the binary rule `chestxray14` states
(uncertain as negative), it checks issue 21's targets (micro >= 0.90, macro >= 0.85, above the
keyword baseline on every class with >= 20 positives). Last, the rules backend's reports/s on one
core (one thread, complete() only, over every IU report; per CPU second and per wall second, and
as a ratio to the keyword baseline timed in the same process) and the comparators' reports per
CPU second. Writes benchmarks/results/extract_quality.json (every F1 it prints, the rules'
precision and recall, the speeds), which README.md ("Report labelling quality") quotes.

--tokens: prompt + completion tokens per report on the LLM path (stub server's usage counts,
which count words), one report per request against K in (4, 8, 16) reports per request
(`reports_per_request`), over the first --llm-reports IU reports, with the parsed answers compared
to the one-per-request run; and how much of each request is the stable prefix (the system prompt)
that providers' prompt caching serves.

--llm-server: a real model behind a real server: llama.cpp's server over SmolLM2-135M-Instruct
(the `test` extra; testkit/llama_server.py), started on 127.0.0.1, over the first --llm-reports
IU reports (sorted by id): answers unreadable before and after the repair request, without the
schema (text, prompts/gpt_ie, max_tokens 256) and with it (llamacpp_schema, prompts/gpt_ie_json,
maxItems --max-findings); the share of parsed findings the vocabulary rejects; prompt and
completion tokens per report as the server counts them at K = 1 and K = 8 (with the schema);
seconds per report. Prints a table and writes
benchmarks/results/extract_llm_server.json (command, commit, date, cpu, args, figures).
"""

from __future__ import annotations

import argparse
import hashlib
import json
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
    CONVENTIONS,
    POLICIES,
    SPLITS,
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
    parser.add_argument("--sets", nargs="+", choices=SPLITS, default=list(SPLITS),
                        help="with --quality: which IU gold sets (tune on dev; held-out is only measured)")
    parser.add_argument("--tokens", action="store_true", help="tokens per report, K reports per request")
    parser.add_argument("--llm-server", action="store_true", help="a real model behind llama.cpp's server")
    parser.add_argument("--max-findings", type=int, default=4, help="the schema's maxItems (--llm-server)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    started = run_start()
    if args.llm_server:
        llm_server(args, started)
        return
    if args.quality:
        write_result("extract_quality", args, quality(args.sets), started=started)
        return
    if args.tokens:
        tokens(args.llm_reports)
        return
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
        figures = dict(rules_cold_reports_per_s=args.reports / cold.stats.wall_s,
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
            rerun = extract_reports(llm_table, backend, Path(tmp) / f"llm{args.concurrency}.duckdb")
        print(f"speed-up concurrency {args.concurrency} vs 1: {timings[1] / timings[args.concurrency]:.1f}x; "
              f"openai re-run calls={rerun.stats.calls}")
        figures.update(openai_speedup=timings[1] / timings[args.concurrency], openai_rerun_calls=rerun.stats.calls)
    write_result("extract_speed", args, figures, started=started)


def tokens(n_reports: int) -> None:
    from extraction.parse import parse_answer
    from extraction.prompts import default_prompt_dir, load_prompt

    texts = load_iu_reports()[:n_reports]
    table = reports_table(texts)
    os.environ["MEDFILIP_BENCH_KEY"] = "bench"
    prefix_words = len(load_prompt(default_prompt_dir()).system.split())
    rows, baseline, base_answers = [], None, None
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
            rows.append({"reports per request": k, "requests": requests,
                         "prompt tokens / report": f"{result.stats.prompt_tokens / len(texts):.0f}",
                         "completion tokens / report": f"{result.stats.completion_tokens / len(texts):.0f}",
                         "total / report": f"{per_report:.0f}", "vs one per request": f"{per_report / baseline:.2f}x",
                         "stable prefix share": f"{prefix_words * requests / max(1, result.stats.prompt_tokens):.0%}",
                         "answers equal": "yes" if answers == base_answers else "NO"})
    print(f"{len(texts)} IU reports, stub usage counts (words); stable prefix = system prompt, {prefix_words} words")
    print(markdown_table(rows, list(rows[0])))


def llm_server(args: argparse.Namespace, started) -> None:
    from extraction.to_triplets import to_triplets
    from extraction.vocabulary import load_vocabulary
    from testkit import llama_server as kit

    iu = load_iu_texts()
    texts = [iu[key] for key in sorted(iu)[:args.llm_reports]]
    os.environ["MEDFILIP_BENCH_KEY"] = "local"
    runs = {"text, K=1": {"reports_per_request": 1},
            "schema, K=1": {"structured_output": "llamacpp_schema", "max_findings": args.max_findings},
            "schema, K=8": {"structured_output": "llamacpp_schema", "max_findings": args.max_findings,
                            "reports_per_request": 8}}
    figures, rows = {}, []
    vocab = load_vocabulary()
    with tempfile.TemporaryDirectory() as tmp, kit.llama_server(Path(tmp) / "server.log", n_ctx=8192) as url:
        for name, overrides in runs.items():
            backend = make_backend({"kind": "openai", "base_url": url, "model": kit.MODEL_ALIAS,
                                    "api_key_env": "MEDFILIP_BENCH_KEY", "concurrency": 1, "timeout_s": 300,
                                    "max_tokens": 256 if "structured_output" not in overrides else None,
                                    **overrides})
            result = extract_reports(reports_table(texts), backend, Path(tmp) / f"{len(figures)}.duckdb")
            stats, n = result.stats, len(texts)
            _, rejects = to_triplets(result.table, vocab)
            # rejects also hold one row per unparsed answer; the vocabulary's own are the rest
            outside = sum(1 for r in rejects.column("reason").to_pylist() if not r.startswith("parse error"))
            findings = sum(result.table.column("n_findings").to_pylist())
            figures[name] = {
                "reports": n, "requests_first_answers_unreadable": stats.repairs,
                "unreadable_first_rate": round(stats.repairs / n, 3),
                "unreadable_after_repair_rate": round(stats.unreadable / n, 3),
                "backend_errors": stats.errors - stats.unreadable,
                "findings": findings, "rejected_by_vocabulary": outside,
                "reject_rate": round(outside / max(1, findings), 3),
                "prompt_tokens_per_report": round(stats.prompt_tokens / n, 1),
                "completion_tokens_per_report": round(stats.completion_tokens / n, 1),
                "seconds_per_report": round(stats.wall_s / n, 2),
                "schema_violations": stats.schema_violations, "context_tokens": backend.context_tokens}
            rows.append({"run": name, **{k: figures[name][k] for k in (
                "unreadable_first_rate", "unreadable_after_repair_rate", "reject_rate", "prompt_tokens_per_report",
                "completion_tokens_per_report", "seconds_per_report")}})
            print(f"{name}: done in {stats.wall_s:.0f} s", flush=True)
    print(f"{len(texts)} IU reports, SmolLM2-135M-Instruct (Q4_1 GGUF) behind llama.cpp's server, one thread; "
          f"tokens as the server counts them; shared CPU: seconds are indicative")
    print(markdown_table(rows, list(rows[0])))
    # The 2-core machine may be shared (the record's load average): seconds are indicative.
    out = write_result("extract_llm_server", args, figures, started=started)
    print(f"wrote {out}")


def load_iu_reports() -> list[str]:
    return list(load_iu_texts().values())


COMPARATORS_OUT = Path(__file__).resolve().parent / "out" / "comparators"
COMPARATORS = ("medspacy", "negspacy")
# The binary rule each convention states for hedged findings (docs/labelling_guideline.md).
BINARY_RULE = {"chestxray14": "uncertain as negative", "chexpert": None}


def quality(sets: list[str]) -> dict[str, float]:
    rules = make_backend({"kind": "rules"})
    golds = {(c, s): load_gold(c, s) for c in CONVENTIONS for s in SPLITS if s in sets}
    texts = load_iu_texts({rid for gold in golds.values() for rid in gold})
    comparators, speeds, rates = load_comparators()
    summary, figures = [], {f"{name}_reports_per_cpu_s": rate for name, rate in rates.items()}
    for (convention, split), gold in golds.items():
        classes = CONVENTIONS[convention]
        part = {rid: texts[rid] for rid in gold}
        labellers = {"rules": rules_labels(rules, part, convention),
                     "keyword": keyword_labels(part, convention),
                     **{name: found[convention] for name, found in comparators.items()}}
        for policy in POLICIES:
            scores = {name: score(gold, predicted, policy, classes) for name, predicted in labellers.items()}
            rule = " (the convention's binary rule)" if BINARY_RULE[convention] == policy else ""
            print(f"\n## {convention}, {split} ({len(gold)} reports), {policy}{rule}\n")
            print(class_table(scores, classes))
            summary.append({"convention": convention, "set": split, "policy": policy + rule,
                            **{name: f"{s.micro[2]:.3f} / {s.macro_f1:.3f}" for name, s in scores.items()}})
            key = f"{convention}_{split}_uncertain_{policy.split()[-1]}"
            for name, s in scores.items():
                figures.update({f"{key}_{name}_micro_f1": s.micro[2], f"{key}_{name}_macro_f1": s.macro_f1})
                figures.update({f"{key}_{name}_{label}_f1": s.prf(label)[2] for label in classes})
            # The rules' precision and recall too: the README explains the held-out errors with them.
            rules_scores = scores["rules"]
            figures.update({f"{key}_rules_micro_precision": rules_scores.micro[0],
                            f"{key}_rules_micro_recall": rules_scores.micro[1],
                            **{f"{key}_rules_{label}_precision": rules_scores.prf(label)[0] for label in classes},
                            **{f"{key}_rules_{label}_recall": rules_scores.prf(label)[1] for label in classes}})
            if rule and split == "heldout":
                print(target_check(scores))
    print("\n## Summary: micro-F1 / macro-F1\n")
    print(markdown_table(summary))
    for name in COMPARATORS:
        if name not in comparators:
            print(f"\n{name}: no results in {COMPARATORS_OUT}; run benchmarks/comparators/run.sh "
                  f"(benchmarks/comparators/README.md)")
    print("\n" + speed_line(rules, list(load_iu_texts().values()), speeds, figures))
    return figures


def class_table(scores: dict, classes: tuple[str, ...]) -> str:
    names = list(scores)
    columns = ["class", "gold +", "rules P", "rules R", "rules F1"] + [f"{n} F1" for n in names[1:]]
    rows = [[label, scores["rules"].positives(label), *(f"{v:.2f}" for v in scores["rules"].prf(label)),
             *(f"{scores[n].prf(label)[2]:.2f}" for n in names[1:])] for label in classes]
    rows.append(["micro", "", *(f"{v:.3f}" for v in scores["rules"].micro),
                 *(f"{scores[n].micro[2]:.3f}" for n in names[1:])])
    rows.append(["macro F1", "", "", "", *(f"{scores[n].macro_f1:.3f}" for n in names)])
    return markdown_table([dict(zip(columns, row)) for row in rows], columns)


def target_check(scores: dict) -> str:
    """Issue 21's targets on the held-out set: micro >= 0.90, macro >= 0.85, and the rules above
    the keyword baseline on every class with >= 20 gold positives."""
    ours, base = scores["rules"], scores["keyword"]
    big = [c for c in ours.counts if ours.positives(c) >= 20]
    behind = [c for c in big if ours.prf(c)[2] <= base.prf(c)[2]]
    return (f"\ntargets: micro {ours.micro[2]:.3f} (>= 0.90: {'yes' if ours.micro[2] >= 0.90 else 'NO'}), "
            f"macro {ours.macro_f1:.3f} (>= 0.85: {'yes' if ours.macro_f1 >= 0.85 else 'NO'}), "
            f"above the keyword baseline on every class with >= 20 positives ({', '.join(big) or 'none'}): "
            f"{'yes' if not behind else 'NO, not on ' + ', '.join(behind)}")


def load_comparators() -> tuple[dict[str, dict], dict[str, str], dict[str, float]]:
    """Labels and speed (a line, and reports per CPU second for the results file) of each
    comparator run by benchmarks/comparators/run.sh, where present."""
    found, speeds, rates = {}, {}, {}
    for name in COMPARATORS:
        path = COMPARATORS_OUT / f"{name}.json"
        if path.exists():
            result = json.loads(path.read_text())
            found[name] = result["labels"]
            versions = ", ".join(f"{p} {v}" for p, v in result["versions"].items())
            speeds[name] = f"{name} ({versions}) {result['reports_per_cpu_s']:,.0f}"
            rates[name] = result["reports_per_cpu_s"]
    return found, speeds, rates


def speed_line(rules, texts: list[str], speeds: dict[str, str], figures: dict[str, float]) -> str:
    # CPU time of this one thread is the one-core figure; wall time also counts waiting for the
    # core when other work shares the machine. The keyword baseline, timed in the same process,
    # gives a ratio that does not depend on how loaded the machine is.
    wall, cpu = time.perf_counter(), time.process_time()
    for text in texts:
        rules.complete(text)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    keyword_cpu = time.process_time()
    keyword_labels(dict(enumerate(texts)), "chestxray14")
    keyword_cpu = time.process_time() - keyword_cpu
    figures.update(rules_reports_per_cpu_s=len(texts) / cpu, rules_reports_per_wall_s=len(texts) / wall,
                   keyword_reports_per_cpu_s=len(texts) / keyword_cpu)
    others = "; ".join(speeds.values())
    return (f"rules backend, complete() only, one thread: {len(texts)} IU reports, "
            f"{len(texts) / cpu:,.0f} reports per CPU second ({len(texts) / wall:,.0f} per wall second); "
            f"keyword baseline {len(texts) / keyword_cpu:,.0f} per CPU second (rules at "
            f"{keyword_cpu / cpu:.2f}x its speed)" + (f"; reports per CPU second of {others}" if others else ""))


# The baseline: a finding is named by one of a few words, listed for each convention; "no"-type
# words up to six words before it negate it, hedge words there make it uncertain. A derived
# No Finding is 1 when no other label but Support Devices is 1 or -1.
KEYWORDS = {
    "chestxray14": {
        "Atelectasis": ["atelecta", "collapse"],
        "Cardiomegaly": ["cardiomegaly", "heart is enlarged", "enlarged heart", "heart size is enlarged"],
        "Effusion": ["effusion"],
        "Infiltration": ["infiltrat"],
        "Mass": [" mass"],
        "Nodule": ["nodule", "nodular"],
        "Pneumonia": ["pneumonia"],
        "Pneumothorax": ["pneumothora"],
        "Consolidation": ["consolidat"],
        "Edema": ["edema"],
        "Emphysema": ["emphysema"],
        "Fibrosis": ["fibros", "fibrotic"],
        "Pleural_Thickening": ["pleural thickening"],
        "Hernia": ["hernia"],
    },
    "chexpert": {
        "Enlarged Cardiomediastinum": ["widened mediastinum", "mediastinal widening", "enlarged cardiomediastinal"],
        "Cardiomegaly": ["cardiomegaly", "heart is enlarged", "enlarged heart", "heart size is enlarged"],
        "Lung Lesion": ["nodule", "nodular", " mass", "tumor", "neoplasm"],
        "Lung Opacity": ["opacit", "infiltrat", "airspace disease", "air space disease", "interstitial marking",
                         "scar"],
        "Edema": ["edema", "heart failure", "chf", "vascular congestion"],
        "Consolidation": ["consolidat"],
        "Pneumonia": ["pneumonia", "infection"],
        "Atelectasis": ["atelecta", "collapse"],
        "Pneumothorax": ["pneumothora"],
        "Pleural Effusion": ["effusion"],
        "Pleural Other": ["pleural thickening", "fibros", "pleural scar"],
        "Fracture": ["fracture"],
        "Support Devices": ["pacemaker", "pacer", "tube", "catheter", "picc", "central line", "device"],
    },
}
NEGATIONS = {"no", "not", "without", "negative", "free", "clear", "resolved"}
HEDGES = {"possible", "possibly", "may", "might", "could", "likely", "probable", "suspicious",
          "versus", "questionable", "suggest", "suggestive", "concerning"}
_ORDER = (None, 0, -1, 1)


def keyword_labels(texts: dict, convention: str) -> dict:
    keywords = KEYWORDS[convention]
    predicted = {}
    for rid, text in texts.items():
        labels: dict[str, int | None] = {label: None for label in keywords}
        for sentence in re.split(r"(?<=\.)\s+|\n", text.lower()):
            for label, words in keywords.items():
                for word in words:
                    at = sentence.find(word)
                    if at < 0:
                        continue
                    window = set(re.findall(r"[a-z]+", sentence[:at])[-6:])
                    value = 0 if window & NEGATIONS else -1 if window & HEDGES else 1
                    labels[label] = max(labels[label], value, key=_ORDER.index)
        if convention == "chexpert":
            found = any(v in (1, -1) for label, v in labels.items() if label != "Support Devices")
            labels["No Finding"] = None if found else 1
        predicted[rid] = labels
    return predicted


def reports_table(texts: list[str]) -> pa.Table:
    return pa.table({"study_id": [f"b{i}" for i in range(len(texts))], "text": texts,
                     "text_sha256": [hashlib.sha256(t.encode()).hexdigest() for t in texts]})


if __name__ == "__main__":
    main()

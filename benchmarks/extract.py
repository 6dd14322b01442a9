"""Extraction benchmark (run by hand): python benchmarks/extract.py [--reports 10000]

Prints: rules backend reports/s (cold, real IU reports cycled); openai backend against a
local stub endpoint with a fixed injected latency, concurrency 1 vs N; and the time of a
no-change re-run over N reports (must make zero calls).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extraction.backends import make_backend  # noqa: E402
from extraction.extract import extract_reports  # noqa: E402
from tests.openai_stub_server import StubServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reports", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--llm-reports", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
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


def load_iu_reports() -> list[str]:
    import torchxrayvision

    archive = Path(torchxrayvision.__file__).parent / "data" / "NLMCXR_reports.tgz"
    reports = []
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.name.endswith(".xml"):
                root = ET.fromstring(tar.extractfile(member).read())
                text = " ".join(n.text for n in root.iter("AbstractText")
                                if n.get("Label") in ("FINDINGS", "IMPRESSION") and n.text)
                if text.strip():
                    reports.append(text)
    return reports


def reports_table(texts: list[str]) -> pa.Table:
    return pa.table({"study_id": [f"b{i}" for i in range(len(texts))], "text": texts,
                     "text_sha256": [hashlib.sha256(t.encode()).hexdigest() for t in texts]})


if __name__ == "__main__":
    main()

"""Fault injection, as an operator meets faults: a broken archive, a faulty or dead endpoint,
bad inputs, two runs at once and kill -9 of a real run process group. Each case asserts what
the run says (one line), its counts, and the state of the Dagster run, the files and MLflow."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from assets.extraction import llm_extractions, triplets
from assets.ingestion import cxr_images, dicom_index, reports
from assets.partitions import register_shards
from common.paths import REPO_ROOT
from common.storage import write_table
from extraction.backends import make_backend
from extraction.cache import AnswerCache, CacheBusy
from extraction.extract import UNREADABLE_ANSWER_ERROR, UNUSABLE_REPORT_ERROR, extract_reports, extract_shards
from extraction.interface import EndpointUnavailable
from ingestion.reports import REPORT_SCHEMA, report_row
from ingestion.shards import index_shard
from assets.resources import ArchiveResource, ExtractorResource, StorageResource
from pipeline.run_health import HOST_TAG, PID_TAG, sweep_dead_runs
from tests.archive_factory import build_archive
from tests.dicom_factory import mimic_path, write_dicom
from testkit.openai_stub import StubServer
from tracking.store import resolve_tracking_uri

KEY_ENV = "MEDFILIP_TEST_LLM_KEY"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    for name in ("MEDFILIP_EXTRACTOR", "MEDFILIP_LLM_BASE_URL", "MEDFILIP_LLM_MODEL"):
        monkeypatch.delenv(name, raising=False)


def llm(base_url: str, **overrides) -> dict:
    return {"kind": "openai", "base_url": base_url, "model": "stub-llm", "api_key_env": KEY_ENV, "timeout_s": 5,
            "max_attempts": 3, "backoff_base_s": 0.01, "backoff_max_s": 0.05, "concurrency": 4, **overrides}


def reports_table(texts: list[str], usable: list[bool] | None = None) -> pa.Table:
    columns = {"study_id": [f"s{i}" for i in range(len(texts))], "text": texts,
               "text_sha256": [hashlib.sha256(t.encode()).hexdigest() for t in texts]}
    if usable is not None:
        columns["usable"] = usable
    return pa.table(columns)


def closed_port_url() -> str:
    with socket.socket() as sock:  # bound then closed: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def write_reports_shard(home: Path, shard: str, texts: list[str]) -> None:
    rows = [{"study_id": f"{shard}{i:04d}", "shard": shard, "patient_key": "k", "source_path": f"{shard}/{i}.txt",
             "text": t, "findings": t, "impression": "", "extraction_text": t, "sections": ["findings"],
             "usable": True, "flag": None, "text_sha256": hashlib.sha256(t.encode()).hexdigest()} for i, t in enumerate(texts)]
    write_table(pa.Table.from_pylist(rows, schema=REPORT_SCHEMA), home / "data" / "reports" / f"{shard}.parquet")


# --- configuration is checked before work starts ---------------------------------------------

def test_a_missing_archive_root_fails_the_run_in_one_line(home, tmp_path):
    from pipeline.runner import materialise
    from pipeline.settings import prepare_home

    prepare_home()
    with dg.instance_for_test() as instance:
        summary = materialise("dicom_index", partitions=["p10"], instance=instance)
    assert summary["failed"] == 1 and summary["succeeded"] == 0
    error = summary["failures"][0]["error"]
    assert "\n" not in error
    assert error.startswith(f"archive root {home / 'corpus'} does not exist: set resources.archive.config.root")


def test_warn_and_failed_checks_are_in_the_run_summary(home):
    from pipeline.runner import materialise
    from pipeline.settings import prepare_home

    prepare_home()
    build_archive(home / "corpus")  # the default archive root: the generated corpus's place
    (home / "corpus" / "files" / "p10" / "p10000002" / "s50000002.txt").unlink()
    with dg.instance_for_test() as instance:
        summary = materialise("ingestion", partitions=["p10"], instance=instance,
                              ops_config={"dicom_index": {"config": {"max_quarantine_rate": 0.7}},
                                          "cxr_images": {"config": {"image_size": 64, "workers": 1}}})
    assert summary["failed"] == 0
    assert [(c["asset"], c["check"], c["partition"]) for c in summary["failed_checks"]] == [
        ("reports", "every_imaged_study_has_a_report", "p10")]


def test_an_archive_without_pnn_folders_fails_and_a_missing_shard_is_only_empty(home, tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "image.dcm").write_bytes(b"")
    resources = {"storage": StorageResource(home=str(home))}
    with dg.instance_for_test() as instance:
        register_shards(instance, ["p10", "p15"])
        flat = dg.materialize([dicom_index], partition_key="p10", instance=instance, raise_on_error=False,
                              resources={**resources, "archive": ArchiveResource(root=str(tmp_path / "flat"))})
        assert not flat.success
        failure = next(e for e in flat.all_events if e.event_type_value == "STEP_FAILURE")
        assert "has no pNN folders" in failure.event_specific_data.error.message

        build_archive(tmp_path / "archive")  # holds p10 and p11 only
        other = dg.materialize([dicom_index], partition_key="p15", instance=instance,
                               resources={**resources, "archive": ArchiveResource(root=str(tmp_path / "archive"))})
        assert other.success
        assert other.asset_materializations_for_node("dicom_index")[0].metadata["dagster/row_count"].value == 0


def test_an_llm_run_config_merges_onto_the_environment_never_falls_back_to_rules(home, tmp_path, monkeypatch):
    from pipeline.definitions import build_definitions
    from pipeline.settings import load_settings

    write_reports_shard(home, "p10", ["Mild cardiomegaly.", "No effusion."])
    with StubServer() as server, dg.instance_for_test() as instance:
        monkeypatch.setenv("MEDFILIP_EXTRACTOR", "openai")
        monkeypatch.setenv("MEDFILIP_LLM_BASE_URL", server.base_url)
        monkeypatch.setenv("MEDFILIP_LLM_MODEL", "stub-llm")
        monkeypatch.setenv("MEDFILIP_LLM_API_KEY_ENV", KEY_ENV)
        resources = build_definitions(load_settings()).resources
        result = dg.materialize([llm_extractions], instance=instance, selection=["llm_extractions"],
                                resources={"storage": resources["storage"], "extractor": resources["extractor"]},
                                run_config={"resources": {"extractor": {"config": {"timeout_s": 3.0}}}})
        assert result.success and len(server.requests) == 2
    table = pq.read_table(home / "data" / "llm_extractions" / "llm_extractions.parquet")
    assert set(table.column("backend").to_pylist()) == {"openai"}


# --- a dead or failing endpoint ----------------------------------------------------------------

def test_a_dead_endpoint_opens_the_circuit_breaker_instead_of_retrying_every_report(tmp_path):
    backend = make_backend(llm(closed_port_url(), circuit_breaker_failures=4, max_attempts=5))
    texts = [f"Report {i}: mild cardiomegaly." for i in range(200)]
    with pytest.raises(EndpointUnavailable, match=r"requests in a row to http://127\.0\.0\.1:\d+/v1 failed.*APIConnectionError"):
        extract_reports(reports_table(texts), backend, tmp_path / "c.duckdb")
    with AnswerCache(tmp_path / "c.duckdb") as cache:
        assert cache.count() == 0 and cache.failure_count() < 20  # not 200 reports x 5 attempts


def test_extraction_against_a_dead_endpoint_fails_the_asset_in_one_line(home, tmp_path):
    write_reports_shard(home, "p10", [f"Report {i}: small effusion." for i in range(30)])
    extractor = ExtractorResource(**{k: v for k, v in llm(closed_port_url()).items() if k != "kind"}, backend="openai")
    with dg.instance_for_test() as instance:
        result = dg.materialize([llm_extractions], instance=instance, selection=["llm_extractions"], raise_on_error=False,
                                resources={"storage": StorageResource(home=str(home)), "extractor": extractor})
    assert not result.success
    error = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE").event_specific_data.error
    assert "LLM endpoint unavailable: 8 requests in a row" in error.message
    assert not (home / "data" / "llm_extractions" / "llm_extractions.parquet").exists()


def test_too_many_failed_reports_fail_the_run_and_keep_the_previous_table(home):
    texts = [f"Report {i}: mild cardiomegaly." for i in range(20)]
    write_reports_shard(home, "p10", texts)
    out = home / "data" / "llm_extractions" / "llm_extractions.parquet"
    with StubServer() as server, dg.instance_for_test() as instance:
        extractor = ExtractorResource(**{k: v for k, v in llm(server.base_url, concurrency=1).items() if k != "kind"},
                                      backend="openai")
        resources = {"storage": StorageResource(home=str(home)), "extractor": extractor}
        assert dg.materialize([llm_extractions], instance=instance, selection=["llm_extractions"], resources=resources).success
        before = out.read_bytes()
        # Now 9 of 20 changed reports meet 400s (not retried, the endpoint stays up): 45% > 20%.
        write_reports_shard(home, "p10", [t + " Again." for t in texts])
        server.plan.extend((["400"] + ["ok"]) * 9)
        server.default = "ok"
        result = dg.materialize([llm_extractions], instance=instance, selection=["llm_extractions"],
                                resources=resources, raise_on_error=False)
    assert not result.success
    error = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE").event_specific_data.error.message
    assert "9 of 20 reports got no usable answer (45% > max_error_rate 0.2)" in error
    assert out.read_bytes() == before


def test_an_unreadable_answer_gets_one_repair_request_and_is_never_cached(tmp_path):
    cache = tmp_path / "c.duckdb"
    with StubServer(plan=["nonsense", "ok"]) as server:
        repaired = extract_reports(reports_table(["Mild cardiomegaly."]), make_backend(llm(server.base_url)), cache)
    row = repaired.table.to_pylist()[0]
    assert row["error"] is None and row["parse_error"] is None and row["n_findings"] == 2
    assert repaired.stats.repairs == 1 and len(server.requests) == 2
    assert "could not be read (no triplets found)" in server.requests[1]["messages"][-1]["content"]

    with StubServer(default="nonsense") as server:
        backend = make_backend(llm(server.base_url))
        first = extract_reports(reports_table(["Small effusion."]), backend, cache)
        second = extract_reports(reports_table(["Small effusion."]), backend, cache)
    row = first.table.to_pylist()[0]
    assert row["error"].startswith(UNREADABLE_ANSWER_ERROR) and row["parse_error"] == "no triplets found"
    assert row["answer"].startswith("I'm sorry")  # the answer is kept for reading, not cached
    assert len(server.requests) == 4 and second.stats.cache_hits == 0  # asked again on the next run
    assert first.stats.unreadable == 1 and first.stats.answered() == 1


# --- bounded and classified inputs ----------------------------------------------------------

def test_a_huge_report_is_cut_to_the_configured_size_and_the_cut_is_recorded(tmp_path):
    huge = "Mild cardiomegaly. " * 110_000  # ~2 MB
    with StubServer() as server:
        result = extract_reports(reports_table([huge]), make_backend(llm(server.base_url, max_report_chars=5000)),
                                 tmp_path / "c.duckdb")
    sent = server.requests[0]["messages"][-1]["content"]
    assert len(sent) <= 5000 + 200  # the report plus the prompt template's own words around it
    assert result.table.column("truncated_chars").to_pylist() == [len(huge) - 5000]
    assert result.stats.truncated_reports == 1


def test_binary_reports_are_flagged_unusable_and_never_sent(tmp_path):
    path = tmp_path / "files" / "p10" / "p10000001" / "s50000001.txt"
    path.parent.mkdir(parents=True)
    path.write_bytes(os.urandom(3000))
    row = report_row(path, tmp_path, "p10", b"salt")
    assert not row["usable"] and row["flag"].startswith("not text:") and row["text"] == ""
    with StubServer() as server:
        table = reports_table(["", "Mild cardiomegaly."], usable=[False, True])
        result = extract_reports(table, make_backend(llm(server.base_url)), tmp_path / "c.duckdb")
    assert len(server.requests) == 1
    assert result.table.column("error").to_pylist() == [UNUSABLE_REPORT_ERROR, None]


def test_preamble_less_dicom_is_read_and_duplicates_are_quarantined_with_the_file_they_repeat(tmp_path):
    good = write_dicom(mimic_path(tmp_path, 10000001, 50000001, "a0001"), view="PA")
    ds = pydicom.dcmread(good)
    bare = DicomBytesIO()
    bare.is_little_endian, bare.is_implicit_VR = True, False
    write_dataset(bare, ds)  # no preamble, no 'DICM', no file meta: a valid dataset all the same
    ds_copy = pydicom.dcmread(io.BytesIO(good.read_bytes()))
    ds_copy.SOPInstanceUID = pydicom.uid.generate_uid()
    ds_copy.PixelData = bytes(reversed(ds_copy.PixelData))
    ds_copy.save_as(mimic_path(tmp_path, 10000001, 50000001, "a0002"))  # new pixels, new UID: distinct
    mimic_path(tmp_path, 10000001, 50000001, "a0003").write_bytes(bare.getvalue())  # same UID as a0001
    ds_pixels = pydicom.dcmread(io.BytesIO(good.read_bytes()))
    ds_pixels.SOPInstanceUID = pydicom.uid.generate_uid()
    other_study = mimic_path(tmp_path, 10000002, 50000002, "b0001")
    other_study.parent.mkdir(parents=True)
    ds_pixels.save_as(other_study)  # a0001's pixels under a new UID

    result = index_shard(tmp_path, "p10", b"salt", tmp_path / "i.parquet", tmp_path / "q.parquet")
    kept = {r["dicom_id"] for r in result.index.to_pylist()}
    reasons = {Path(r["source_path"]).stem: r["reason"] for r in result.quarantine.to_pylist()}
    assert kept == {"a0001", "a0002"}
    assert reasons["a0003"] == "duplicate SOPInstanceUID of files/p10/p10000001/s50000001/a0001.dcm"
    assert reasons["b0001"] == "duplicate pixel data (sha256) of files/p10/p10000001/s50000001/a0001.dcm"

    alone = tmp_path / "alone" / "files" / "p10" / "p1" / "s1" / "x.dcm"
    alone.parent.mkdir(parents=True)
    alone.write_bytes(bare.getvalue())
    only = index_shard(tmp_path / "alone", "p10", b"salt", tmp_path / "i2.parquet", tmp_path / "q2.parquet")
    assert only.quarantine.num_rows == 0 and only.index.column("transfer_syntax_uid").to_pylist() == ["1.2.840.10008.1.2.1"]


def test_a_mostly_broken_shard_fails_the_run_naming_the_rate_and_the_reasons(home, tmp_path):
    build_archive(tmp_path / "archive")  # p10: 5 broken files of 8
    with dg.instance_for_test() as instance:
        register_shards(instance, ["p10"])
        # 8 files are under the default count floor (20), where only a shard with no usable file fails.
        result = dg.materialize([dicom_index, cxr_images, reports], partition_key="p10", instance=instance,
                                raise_on_error=False,
                                resources={"storage": StorageResource(home=str(home)),
                                           "archive": ArchiveResource(root=str(tmp_path / "archive"),
                                                                      quarantine_rate_min_files=8)})
    assert not result.success
    check = next(c for c in result.get_asset_check_evaluations() if c.check_name == "quarantine_rate")
    assert not check.passed
    assert check.description.startswith("shard p10: 5 of 8 files quarantined (62% > max_quarantine_rate 0.05); "
                                        "first reasons: ")
    assert not (home / "data" / "cxr_images" / "p10.parquet").exists()  # the blocking check stopped decoding


# --- two runs at once, slow reports ---------------------------------------------------------

def test_a_second_extraction_waits_for_the_cache_lock_instead_of_dying(tmp_path):
    cache = tmp_path / "c.duckdb"
    AnswerCache(cache).close()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import duckdb, sys, time
        db = duckdb.connect({str(cache)!r})
        print("locked", flush=True)
        time.sleep(float(sys.argv[1]))
        """), "3"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        waits: list[str] = []
        result = extract_reports(reports_table(["Mild cardiomegaly."]), make_backend(), cache, on_cache_wait=waits.append)
        assert result.table.column("n_findings").to_pylist() == [1]
        assert len(waits) == 1 and "is in use by" in waits[0]
    finally:
        holder.wait(timeout=30)

    holder = subprocess.Popen([sys.executable, "-c", f"import duckdb, time; db = duckdb.connect({str(cache)!r}); "
                               "print('locked', flush=True); time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CacheBusy, match="stayed locked by .* wait for the other extraction run"):
            AnswerCache(cache, lock_timeout_s=1.0)
    finally:
        holder.kill()
        holder.wait()


def test_shards_share_one_window_so_a_hanging_report_holds_one_slot_not_its_shard(home, tmp_path):
    write_reports_shard(home, "p10", [f"Shard ten report {i}: mild cardiomegaly." for i in range(4)])
    write_reports_shard(home, "p11", [f"Shard eleven report {i}: small effusion." for i in range(4)])
    paths = [home / "data" / "reports" / f"{s}.parquet" for s in ("p10", "p11")]
    with StubServer() as server:  # the first report of p10 hangs until its timeout, whenever it arrives
        server.hang_once.add("Shard ten report 0:")
        result = extract_shards(paths, make_backend(llm(server.base_url, timeout_s=2, concurrency=3)),
                                tmp_path / "c.duckdb")
    assert result.table.num_rows == 8 and result.stats.errors == 0
    hung = "Shard ten report 0"
    order = [next(i for i, text in enumerate(server.answered) if prefix in text)
             for prefix in (hung, "Shard eleven report 3")]
    assert order[1] < order[0]  # p11 went on while p10's report hung


# --- kill -9 of a real run ------------------------------------------------------------------

def test_a_killed_cli_run_is_marked_failed_frees_its_pool_slot_and_ends_its_mlflow_run(home, tmp_path):
    import mlflow

    from pipeline.settings import prepare_home

    lay = prepare_home()
    write_reports_shard(home, "p10", [f"Report {i}: mild cardiomegaly." for i in range(40)])
    with StubServer(default="slow", delay_s=0.5) as server:
        env = dict(os.environ, MEDFILIP_EXTRACTOR="openai", MEDFILIP_LLM_BASE_URL=server.base_url,
                   MEDFILIP_LLM_MODEL="stub-llm", MEDFILIP_LLM_API_KEY_ENV=KEY_ENV, MEDFILIP_LLM_CONCURRENCY="1",
                   DAGSTER_HOME=str(lay.dagster_home))
        medfilip = str(Path(sys.executable).with_name("medfilip"))
        child = subprocess.Popen([medfilip, "run", "llm_extractions"], cwd=REPO_ROOT,
                                 env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        instance = dg.DagsterInstance.from_config(str(lay.dagster_home))
        try:
            run = None
            for _ in range(600):  # until the run is extracting (a few answers in)
                runs = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
                if runs and len(server.answered) >= 3:
                    run = runs[0]
                    break
                time.sleep(0.1)
            assert run is not None and run.tags[PID_TAG] == str(child.pid) and run.tags[HOST_TAG] == socket.gethostname()
            assert instance.event_log_storage.get_concurrency_info("extraction_cache").claimed_slots
            mlflow.set_tracking_uri(resolve_tracking_uri(None, lay.home))
            with mlflow.start_run(tags={"dagster.run_id": run.run_id}) as tracked:  # as the training asset tags its runs
                pass
            mlflow.tracking.MlflowClient().update_run(tracked.info.run_id, status="RUNNING")
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()

            assert sweep_dead_runs(instance, resolve_tracking_uri(None, lay.home)) == [run.run_id]
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
            assert not instance.event_log_storage.get_concurrency_info("extraction_cache").claimed_slots
            assert mlflow.get_run(tracked.info.run_id).info.status == "KILLED"
            assert sweep_dead_runs(instance, resolve_tracking_uri(None, lay.home)) == []

            # The re-run starts at once and asks only what the killed run had not committed.
            answered_before = len(server.answered)
            server.default = "ok"
            done = subprocess.run([medfilip, "run", "llm_extractions", "--json"], cwd=REPO_ROOT,
                                  env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-2000:]
            summary = json.loads(done.stdout)
            assert summary["assets"]["llm_extractions"]["cache_hits"] >= answered_before - 1
            assert summary["assets"]["llm_extractions"]["calls"] == 40 - summary["assets"]["llm_extractions"]["cache_hits"]
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
            instance.dispose()


def test_zero_triplets_fail_before_anything_is_written(home):
    rows = [{"study_id": "s1", "text_sha256": "x", "cache_key": "k", "prompt_version": "v", "backend": "rules",
             "model": "", "answer": "none", "parse_error": None, "n_findings": 0, "prompt_tokens": 0,
             "completion_tokens": 0, "latency_s": 0.0, "attempts": 1, "error": None, "cached": False,
             "truncated_chars": 0}]
    from extraction.extract import LLM_EXTRACTIONS_SCHEMA

    write_table(pa.Table.from_pylist(rows, schema=LLM_EXTRACTIONS_SCHEMA),
                home / "data" / "llm_extractions" / "llm_extractions.parquet")
    with dg.instance_for_test() as instance:
        result = dg.materialize([triplets], instance=instance, raise_on_error=False,
                                resources={"storage": StorageResource(home=str(home))})
    assert not result.success
    error = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE").event_specific_data.error.message
    assert "no triplet from 1 extraction rows" in error
    assert not (home / "data" / "triplets").exists()


def test_duckdb_is_what_serialises_writers(tmp_path):
    """The premise of the waiting cache: a second writer process is refused, not merged."""
    path = tmp_path / "x.duckdb"
    duckdb.connect(str(path)).close()
    holder = subprocess.Popen([sys.executable, "-c", f"import duckdb, time; db = duckdb.connect({str(path)!r}); "
                               "print('locked', flush=True); time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(duckdb.IOException, match="lock"):
            duckdb.connect(str(path))
    finally:
        holder.kill()
        holder.wait()

"""Prompt change end to end through the real daemon: with `dagster dev` running and the
prompt-change sensor on, editing a prompt file launches a new extraction run that re-asks
the LLM endpoint for every report, and nothing else."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

from common.paths import PROMPTS_DIR, REPO_ROOT
from testkit.openai_stub import StubServer
from tests.servers import free_port, http_ok, start_server, stop_server, wait_until
from tests.test_ui import ASSET_NODES, LAUNCH_RUN, finished_status, graphql

pytestmark = pytest.mark.slow  # > 30 s: see pyproject's markers

START_SENSOR = """mutation Start($selector: SensorSelector!) { startSensor(sensorSelector: $selector) {
  __typename ... on Sensor { sensorState { status } } ... on PythonError { message } } }"""
RUNS = """query Runs { runsOrError(filter: {pipelineName: "extraction_job"}) { ... on Runs { results {
  runId status tags { key value } } } } }"""
SENSOR_TICKS = """query Ticks($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) {
  ... on Sensor { sensorState { ticks(limit: 5) { status } } } } }"""


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    from corpus.generate import generate_corpus

    root = tmp_path_factory.mktemp("automation")
    home, prompt_dir = root / "home", root / "prompt"
    shutil.copytree(PROMPTS_DIR / "gpt_ie", prompt_dir)
    generate_corpus(home / "corpus", studies=8, seed=2, image_size=64, eval_images=0)
    ingest_reports_in_process(home)
    port = free_port()
    with StubServer() as llm:
        env = dict(os.environ, MEDFILIP_HOME=str(home), MEDFILIP_PATIENT_SALT="automation-salt",
                   DAGSTER_DISABLE_TELEMETRY="1", MEDFILIP_EXTRACTOR="openai", MEDFILIP_LLM_BASE_URL=llm.base_url,
                   MEDFILIP_LLM_MODEL="stub-llm", MEDFILIP_LLM_API_KEY_ENV="STUB_KEY", STUB_KEY="sk-test",
                   MEDFILIP_PROMPT_DIR=str(prompt_dir))
        env.pop("DAGSTER_HOME", None)
        command = [str(Path(sys.executable).with_name("medfilip")), "ui", "--port", str(port)]
        server = start_server(command, root / "dev.log", env=env, cwd=REPO_ROOT, url=f"http://127.0.0.1:{port}")
        try:
            wait_until(lambda: http_ok(f"{server.url}/server_info"), timeout_s=120, what="webserver", server=server)
            wait_until(lambda: graphql(server, ASSET_NODES)["data"]["assetNodes"], timeout_s=120,
                       what="code location", server=server)
            yield server, llm, prompt_dir
        finally:
            stop_server(server, first_signal=signal.SIGINT, grace_s=15)


def ingest_reports_in_process(home: Path) -> None:
    """The reports of every shard, materialised into the same instance before the UI starts
    (ten runs through the daemon would take minutes)."""
    import dagster as dg

    from pipeline.runner import materialise
    from pipeline.settings import prepare_home

    saved = {k: os.environ.get(k) for k in ("MEDFILIP_HOME", "DAGSTER_HOME", "MEDFILIP_PATIENT_SALT")}
    os.environ.update(MEDFILIP_HOME=str(home), MEDFILIP_PATIENT_SALT="automation-salt")
    try:
        lay = prepare_home()
        with dg.DagsterInstance.from_config(str(lay.dagster_home)) as instance:
            assert materialise("reports", instance=instance)["failed"] == 0
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def launch(server, repository: dict, job: str, assets: list[str], partition: str | None = None) -> str:
    params = {"selector": {"repositoryLocationName": repository["location"]["name"],
                           "repositoryName": repository["name"], "jobName": job,
                           "assetSelection": [{"path": [a]} for a in assets]},
              "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}] if partition else []}}
    launched = graphql(server, LAUNCH_RUN, {"params": params})["data"]["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    status = wait_until(lambda: finished_status(server, run_id), timeout_s=180, interval_s=1,
                        what=f"run {run_id}", server=server)
    assert status == "SUCCESS", server.log_tail()
    return run_id


def test_editing_a_prompt_launches_an_extraction_run_through_the_daemon(dev):
    server, llm, prompt_dir = dev
    nodes = graphql(server, ASSET_NODES)["data"]["assetNodes"]
    repository = nodes[0]["repository"]
    launch(server, repository, "extraction_job", ["prompts", "llm_extractions", "triplets"])
    asked_first = len(llm.answered)
    assert asked_first > 0

    selector = {"repositoryLocationName": repository["location"]["name"], "repositoryName": repository["name"],
                "sensorName": "prompt_change_sensor"}
    started = graphql(server, START_SENSOR, {"selector": selector})["data"]["startSensor"]
    assert started["__typename"] == "Sensor" and started["sensorState"]["status"] == "RUNNING"
    # First tick: same prompt version as the last extraction, so it records it and launches nothing.
    wait_until(lambda: graphql(server, SENSOR_TICKS, {"selector": selector})["data"]["sensorOrError"]
               ["sensorState"]["ticks"] or None, timeout_s=90, what="first sensor tick", server=server)
    runs_before = graphql(server, RUNS)["data"]["runsOrError"]["results"]

    (prompt_dir / "system.md").write_text((prompt_dir / "system.md").read_text() + "\nAnswer tersely.\n")

    def new_run():
        runs = graphql(server, RUNS)["data"]["runsOrError"]["results"]
        fresh = [r for r in runs if r["runId"] not in {b["runId"] for b in runs_before}]
        return fresh[0] if fresh and fresh[0]["status"] in ("SUCCESS", "FAILURE", "CANCELED") else None

    run = wait_until(new_run, timeout_s=150, interval_s=2, what="sensor-launched extraction run", server=server)
    assert run["status"] == "SUCCESS", server.log_tail()
    assert any(tag["key"] == "medfilip/prompt_version" for tag in run["tags"])
    assert len(llm.answered) == 2 * asked_first  # every report re-asked once, no more

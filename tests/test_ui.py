"""The real Dagster UI (`medfilip ui`, i.e. `dagster dev`) over a tiny generated corpus.

Through the webserver's GraphQL API a user's click is replayed: load the asset graph,
materialise `reports` for one shard, wait for the run. Then headless Chromium renders the
asset graph page; the screenshot is kept (printed path, and $MEDFILIP_UI_SCREENSHOT_DIR).
`dagster dev` is used rather than the webserver alone because the instance's default run
coordinator queues runs, and only the daemon that `dev` starts dequeues them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from common.paths import REPO_ROOT
from tests.servers import (Server, free_port, http_ok, require_services, run_in_own_group, start_server, stop_server,
                           wait_until)

pytestmark = pytest.mark.slow  # > 30 s: see pyproject's markers

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()
SCREENSHOT_ENV = "MEDFILIP_UI_SCREENSHOT_DIR"
UI_START_TIMEOUT_S = 120
RUN_TIMEOUT_S = 180

ASSET_NODES = """{ assetNodes { assetKey { path } groupName isPartitioned
                   repository { name location { name } } } }"""
LAUNCH_RUN = """mutation Launch($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename
  ... on LaunchRunSuccess { run { runId } }
  ... on PythonError { message }
  ... on RunConfigValidationInvalid { errors { message } }
  ... on InvalidSubsetError { message } } }"""
RUN_STATUS = """query Status($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }"""
# The UI's "Add partition" button: shards are dynamic partitions (assets/ingestion.py).
ADD_PARTITION = """mutation Add($repo: RepositorySelector!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: $repo, partitionsDefName: $name, partitionKey: $key) {
    __typename ... on AddDynamicPartitionSuccess { partitionKey } ... on PythonError { message } } }"""
MATERIALISATIONS = """query Mats($path: [String!]!) { assetOrError(assetKey: {path: $path}) {
  ... on Asset { assetMaterializations(limit: 10) { runId partition
    metadataEntries { label ... on PathMetadataEntry { path } } } } } }"""


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory):
    """`medfilip ui` on a free port over a fresh MEDFILIP_HOME; the whole process group is
    stopped afterwards, whatever the tests did."""
    from corpus.generate import generate_corpus

    root = tmp_path_factory.mktemp("ui")
    home = root / "home"
    generate_corpus(home / "corpus", studies=12, seed=1, image_size=128)
    port = free_port()
    env = dict(os.environ, MEDFILIP_HOME=str(home), MEDFILIP_PATIENT_SALT="ui-test-salt",
               DAGSTER_DISABLE_TELEMETRY="1", HF_HUB_OFFLINE="1")
    env.pop("DAGSTER_HOME", None)  # `medfilip ui` puts it inside MEDFILIP_HOME
    command = [str(Path(sys.executable).with_name("medfilip")), "ui", "--port", str(port)]
    server = start_server(command, root / "ui.log", env=env, cwd=REPO_ROOT, url=f"http://127.0.0.1:{port}")
    try:
        wait_until(lambda: http_ok(f"{server.url}/server_info"), timeout_s=UI_START_TIMEOUT_S,
                   what="Dagster webserver up", server=server)
        # The webserver answers before the code location has loaded: wait for the assets.
        wait_until(lambda: graphql(server, ASSET_NODES)["data"]["assetNodes"], timeout_s=UI_START_TIMEOUT_S,
                   what="code location loaded", server=server)
        yield server, home
    finally:
        # SIGINT is dagster dev's Ctrl-C: it stops its webserver, daemon and code servers.
        stop_server(server, first_signal=signal.SIGINT, grace_s=15)


def test_asset_launched_through_graphql_is_materialised_by_the_running_ui(ui):
    server, home = ui
    nodes = {tuple(node["assetKey"]["path"]): node for node in graphql(server, ASSET_NODES)["data"]["assetNodes"]}
    assert {("dicom_index",), ("cxr_images",), ("reports",)} <= set(nodes)
    assert nodes[("reports",)]["isPartitioned"] and nodes[("reports",)]["groupName"] == "ingestion"
    repository = nodes[("reports",)]["repository"]
    shard = first_shard(home / "corpus")
    selector = {"repositoryLocationName": repository["location"]["name"], "repositoryName": repository["name"]}
    added = graphql(server, ADD_PARTITION, {"repo": selector, "name": "archive_shards", "key": shard})
    assert added["data"]["addDynamicPartition"]["__typename"] == "AddDynamicPartitionSuccess", added

    # What the UI's "Materialize" button sends for one partition of one asset.
    params = {"selector": {"repositoryLocationName": repository["location"]["name"],
                           "repositoryName": repository["name"], "jobName": "__ASSET_JOB",
                           "assetSelection": [{"path": ["reports"]}]},
              "executionMetadata": {"tags": [{"key": "dagster/partition", "value": shard}]}}
    launched = graphql(server, LAUNCH_RUN, {"params": params})["data"]["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]

    status = wait_until(lambda: finished_status(server, run_id), timeout_s=RUN_TIMEOUT_S, interval_s=1,
                        what=f"run {run_id} finished", server=server)
    assert status == "SUCCESS", f"run {run_id} ended {status}; log tail:\n{server.log_tail()}"

    mats = graphql(server, MATERIALISATIONS, {"path": ["reports"]})["data"]["assetOrError"]["assetMaterializations"]
    ours = [mat for mat in mats if mat["runId"] == run_id]
    assert [mat["partition"] for mat in ours] == [shard]
    paths = [entry["path"] for entry in ours[0]["metadataEntries"] if entry.get("path")]
    assert paths and all(Path(path).is_file() for path in paths), paths
    assert all(Path(path).is_relative_to(home) for path in paths), "outputs must land in MEDFILIP_HOME"


def test_asset_graph_page_renders_in_headless_chromium(ui, tmp_path: Path):
    require_services([] if HAVE_CHROMIUM else ["chromium (apt-get install chromium): the asset graph's screenshot"])
    server, _ = ui
    location = graphql(server, ASSET_NODES)["data"]["assetNodes"][0]["repository"]["location"]["name"]
    url = f"{server.url}/locations/{location}/asset-groups/ingestion"

    dom = chromium(["--dump-dom", url], tmp_path).stdout
    for asset in ("dicom_index", "cxr_images", "reports"):
        assert asset in dom, f"asset graph page has no {asset} node"

    shot = screenshot(url, tmp_path / "asset_graph.png", tmp_path)
    print(f"\nasset graph screenshot: {shot}")
    if os.environ.get(SCREENSHOT_ENV):
        kept = Path(os.environ[SCREENSHOT_ENV]) / "asset_graph.png"
        kept.parent.mkdir(parents=True, exist_ok=True)
        atomic_copy(shot, kept)
        print(f"asset graph screenshot kept: {kept}")

    assert shot.stat().st_size > 20_000, "a rendered graph page is tens of kB; a blank page is a few"
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.size == (1400, 900)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "page looks blank"
    background = max(colours)[0] / (1400 * 900)
    assert background < 0.95, f"{background:.0%} of the page is one colour"


def graphql(server: Server, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(f"{server.url}/graphql", method="POST",
                                     data=json.dumps({"query": query, "variables": variables or {}}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        body = json.load(response)
    assert not body.get("errors"), body["errors"]
    return body


def finished_status(server: Server, run_id: str) -> str | None:
    status = graphql(server, RUN_STATUS, {"id": run_id})["data"]["runOrError"].get("status")
    return status if status in {"SUCCESS", "FAILURE", "CANCELED"} else None


def screenshot(url: str, out: Path, scratch: Path) -> Path:
    """Chromium writes where told; it is told a temp name beside `out`, then renamed."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.png")
    chromium([f"--screenshot={tmp}", url], scratch)
    assert tmp.is_file(), "chromium wrote no screenshot"
    os.replace(tmp, out)
    return out


def chromium(args: list[str], scratch: Path) -> subprocess.CompletedProcess:
    profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=scratch))
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--window-size=1400,900", "--virtual-time-budget=15000", *args]
    result = run_in_own_group(command, timeout_s=90)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def atomic_copy(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def first_shard(corpus: Path) -> str:
    shards = sorted(path.name for path in (corpus / "files").iterdir() if path.is_dir())
    assert shards, f"no shard folders in {corpus}"
    return shards[0]


"""Lineage records: which materialisation of each upstream asset a model was built from.

A record lists, for every ancestor (and every partition of partitioned ones), the Dagster run id,
time, recorded digests and the files the digests cover, so that months later `medfilip lineage`
can print the chain and flag inputs whose current files no longer match. The Dagster layer
collects the entries (assets/lineage.py); this module defines them and reads them back.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from common.errors import UserError
from common.storage import file_sha256, write_text
from tracking.digests import dataset_digests, entry_digest

DIGEST_KEYS = ("sha256", "digest", "texts_sha256", "image_texts_sha256", "model_digest", "prompt_version")
CONTEXT_KEYS = ("backend", "model", "model_name", "model_path", "archive_root", "image_size",
                "separate_negations", "dagster/row_count")


def lineage_entry(asset: str, partition: str | None, run_id: str, timestamp: float, metadata: dict,
                  data_version: str | None = None) -> dict:
    """One input of a record, from an asset event's metadata (plain values)."""
    entry = {
        "asset": asset,
        "partition": partition,
        "run_id": run_id,
        "time": datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(),
        "digests": {k: metadata[k] for k in DIGEST_KEYS if k in metadata},
        "context": {k: metadata[k] for k in CONTEXT_KEYS if k in metadata},
    }
    if data_version:
        entry["data_version"] = data_version
    entry["files"] = recorded_files(metadata)
    return entry


def check_lineage(entries: list[dict]) -> list[dict]:
    """Re-hash every recorded file: status `changed` or `missing` flags an input whose current
    data is no longer what was used; `ok` when all match; `unchecked` when no file was recorded."""
    checked = []
    for entry in entries:
        entry = dict(entry)
        problems = []
        for path, recorded in entry.get("files", {}).items():
            current = file_sha256(path) if Path(path).is_file() else None
            if current != recorded:
                problems.append(f"{'missing' if current is None else 'changed'}: {path}")
        entry["problems"] = problems
        entry["status"] = ("changed" if problems else "ok") if entry.get("files") else "unchecked"
        checked.append(entry)
    return checked


def write_lineage(path: Path, record: dict) -> Path:
    return write_text(path, json.dumps(record, indent=2, default=str))


def recorded_files(metadata: dict) -> dict[str, str]:
    """File -> sha256 pairs an asset recorded: `path`/`sha256` and any `X_path`/`X_sha256`."""
    files = {}
    for key, value in metadata.items():
        if key == "path" or key.endswith("_path"):
            prefix = key[: -len("path")]
            digest = metadata.get(f"{prefix}sha256")
            if isinstance(value, str) and digest and Path(value).is_file():
                files[value] = digest
    return files


def resolve_lineage(reference: str, tracking_uri: str, registered_model: str = "medfilip") -> dict:
    """The lineage record of a checkpoint path, a file of the registered model in MLflow's
    artifact store, an MLflow run id or a registered model version. A reference that is none
    of these is a UserError naming what exists."""
    path = Path(reference).expanduser()
    if path.exists():
        return _lineage_beside(path, tracking_uri)
    if _looks_like_path(reference):
        raise UserError(f"{reference} does not exist",
                        "give an existing checkpoint (or lineage.json), a model version, or an MLflow run id")
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from tracking.store import use_tracking_uri

    store = tracking_uri
    use_tracking_uri(store)
    client = MlflowClient()
    name, _, version = reference.removeprefix("models:/").rpartition("/")
    if reference.isdigit() or (name and version.isdigit()):
        name, version = (name or registered_model, version if name else reference)
        try:
            run_id = client.get_model_version(name, version).run_id
        except MlflowException as exc:
            existing = _model_versions(client, name)
            raise UserError(f"model version {version} of {name!r} does not exist in {store}",
                            f"existing versions: {', '.join(existing)}" if existing else
                            f"no version of {name!r} is registered yet: materialise pretrained_model "
                            "(`medfilip demo` or `medfilip run pretrained_model`)") from exc
        return _run_lineage(run_id, f"model version {version} of {name!r}")
    try:
        client.get_run(reference)
    except MlflowException as exc:
        existing = _model_versions(client, registered_model)
        raise UserError(f"{reference!r} is not a path, a model version or an MLflow run id in {store}",
                        "give a checkpoint path, an MLflow run id, or a model version"
                        + (f" ({', '.join(existing)})" if existing else "")) from exc
    return _run_lineage(reference, f"MLflow run {reference}")


def _looks_like_path(reference: str) -> bool:
    return "/" in reference or "\\" in reference or Path(reference).suffix in (".pt", ".json", ".pth")


def _lineage_beside(path: Path, tracking_uri: str) -> dict:
    """lineage.json next to a checkpoint (or one folder up); for a file inside MLflow's artifact
    store, the record of the run that logged the model (its MLmodel file names the run)."""
    path = path.resolve()
    candidates = [path] if path.name == "lineage.json" else [path / "lineage.json", path.parent / "lineage.json",
                                                              path.parent.parent / "lineage.json"]
    for candidate in candidates:
        if candidate.is_file():
            return json.loads(candidate.read_text())
    for folder in [path, *path.parents][:6]:
        mlmodel = folder / "MLmodel"
        if mlmodel.is_file():
            import yaml

            run_id = (yaml.safe_load(mlmodel.read_text()) or {}).get("run_id")
            if run_id:
                from tracking.store import use_tracking_uri

                use_tracking_uri(tracking_uri)
                return _run_lineage(run_id, f"the model logged by run {run_id}")
    raise UserError(f"no lineage.json beside {path}, and it is not inside a logged MLflow model",
                    "give the checkpoint that pretrained_model wrote (its metadata `path`), "
                    "or a model version / MLflow run id")


def _run_lineage(run_id: str, what: str) -> dict:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="lineage.json")
    except (MlflowException, OSError) as exc:
        raise UserError(f"{what} has no lineage.json artifact (run {run_id})",
                        "only runs of pretrained_model carry lineage: give the model's run or version") from exc
    return json.loads(Path(local).read_text())


def _model_versions(client, name: str) -> list[str]:
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return []
    return [str(v) for v in sorted(int(v.version) for v in versions)]


def format_lineage(record: dict) -> str:
    lines = [f"checkpoint  {record['checkpoint']}",
             f"  sha256    {record['checkpoint_sha256']}",
             f"  mlflow    run {record['mlflow_run_id']}   dagster run {record['dagster_run_id']}"]
    datasets = dataset_digests(record["inputs"])
    counts: dict[str, int] = {}
    for entry in record["inputs"]:
        counts[entry["asset"]] = counts.get(entry["asset"], 0) + 1
    for index, entry in enumerate(record["inputs"]):
        label = entry["asset"] + (f"[{entry['partition']}]" if entry.get("partition") else "")
        flag = {"ok": "ok", "unchecked": "-", "changed": "CHANGED"}.get(entry.get("status", "-"), entry.get("status"))
        context = ", ".join(f"{k}={v}" for k, v in entry.get("context", {}).items() if k != "dagster/row_count")
        lines.append(f"<- {label:<22} {entry_digest(entry):<16} run {entry['run_id'][:8]} {entry['time'][:19]}  {flag}"
                     + (f"  ({context})" if context else ""))
        lines.extend(f"     ! {problem}" for problem in entry.get("problems", []))
        following = record["inputs"][index + 1]["asset"] if index + 1 < len(record["inputs"]) else None
        if counts[entry["asset"]] > 1 and following != entry["asset"]:
            lines.append(f"   {entry['asset'] + ' (all ' + str(counts[entry['asset']]) + ')':<22} "
                         f"{datasets[entry['asset']]:<16} whole-dataset digest (the one MLflow inputs carry)")
    changed = sum(e.get("status") == "changed" for e in record["inputs"])
    lines.append(f"{changed} input(s) changed since training" if changed else "all recorded inputs match")
    return "\n".join(lines)

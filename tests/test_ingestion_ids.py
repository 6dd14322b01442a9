"""Image ids unique in any archive and stable as it grows: id rules, their detection, and
collisions caught at indexing."""

from pathlib import Path

import pydicom
import pytest

from ingestion.dicom_index import detect_archive_id_rule, detect_id_rule, index_ids
from ingestion.shards import index_shard
from tests.dicom_factory import chest_like, mimic_path, write_dicom

SALT = b"salt"


def _pacs_export(root: Path, studies: list[tuple[int, int]], names=("1", "2")) -> list[Path]:
    """Studies numbering their files 1.dcm, 2.dcm, as PACS exports do; distinct pixels each."""
    paths = []
    for subject, study in studies:
        for name in names:
            paths.append(write_dicom(mimic_path(root, subject, study, name), chest_like(seed=subject * 10 + int(name))))
    return paths


def _index(root: Path, out: Path, **options):
    return index_shard(root, "p10", SALT, out / "index.parquet", out / "quarantine.parquet", **options)


def test_the_rule_is_detected_from_file_names(tmp_path):
    unique = _pacs_export(tmp_path / "a", [(10000001, 50000001)])
    assert detect_id_rule(unique) == "stem"
    _pacs_export(tmp_path / "b", [(10000001, 50000001), (10000002, 50000002)])
    assert detect_archive_id_rule(tmp_path / "b") == "study_stem"
    # The same study folder name under two subjects: only the SOPInstanceUID tells them apart.
    _pacs_export(tmp_path / "c", [(10000001, 50000001), (10000002, 50000001)])
    assert detect_archive_id_rule(tmp_path / "c") == "sop_uid"


def test_a_repeated_file_name_is_quarantined_at_indexing_under_stem(tmp_path):
    root = tmp_path / "archive"
    _pacs_export(root, [(10000001, 50000001), (10000002, 50000002)])
    result = _index(root, tmp_path / "out")
    assert sorted(result.index.column("source_path").to_pylist()) == [
        "files/p10/p10000001/s50000001/1.dcm", "files/p10/p10000001/s50000001/2.dcm"]
    reasons = {r["source_path"]: r["reason"] for r in result.quarantine.to_pylist()}
    assert reasons == {f"files/p10/p10000002/s50000002/{n}.dcm":
                       f"same dicom_id as files/p10/p10000001/s50000001/{n}.dcm under the id rule 'stem': this archive "
                       f"repeats file names, so the id rule must be study_stem or sop_uid "
                       f"(see ingestion.dicom_index.detect_id_rule)" for n in ("1", "2")}


@pytest.mark.parametrize("rule", ["study_stem", "sop_uid"])
def test_the_detected_rule_gives_every_file_its_own_id(tmp_path, rule):
    root = tmp_path / "archive"
    paths = _pacs_export(root, [(10000001, 50000001), (10000002, 50000002)])
    result = _index(root, tmp_path / "out", id_rule=rule)
    assert result.quarantine.num_rows == 0 and set(result.index.column("id_rule").to_pylist()) == {rule}
    ids = dict(zip(result.index.column("source_path").to_pylist(), result.index.column("dicom_id").to_pylist()))
    if rule == "study_stem":
        assert ids["files/p10/p10000002/s50000002/1.dcm"] == "50000002/1"
    else:
        assert set(ids.values()) == {str(pydicom.dcmread(p).SOPInstanceUID) for p in paths}


def test_sop_uid_rule_quarantines_a_file_without_one(tmp_path):
    root = tmp_path / "archive"
    path = write_dicom(mimic_path(root, 10000001, 50000001, "1"), chest_like(seed=1))
    ds = pydicom.dcmread(path)
    del ds.SOPInstanceUID
    ds.save_as(path)
    result = _index(root, tmp_path / "out", id_rule="sop_uid")
    assert result.quarantine.column("reason").to_pylist() == [
        "ValueError: no SOPInstanceUID, which the id rule sop_uid makes the image id"]


def test_ids_stay_with_their_files_when_a_colliding_file_arrives_later(tmp_path):
    root, out = tmp_path / "archive", tmp_path / "out"
    _pacs_export(root, [(10000002, 50000002)])
    assert detect_archive_id_rule(root) == "stem"  # recorded by the caller on first ingestion
    first = _index(root, out, id_rule="stem")
    # A study arrives whose files repeat those names and sort before the existing ones.
    _pacs_export(root, [(10000001, 50000001)], names=("1",))
    again = _index(root, out, id_rule="stem")
    assert again.index.to_pylist() == first.index.to_pylist()  # every existing row, id and all, kept
    [row] = again.quarantine.to_pylist()
    assert row["source_path"] == "files/p10/p10000001/s50000001/1.dcm"
    assert row["reason"].startswith("same dicom_id as files/p10/p10000002/s50000002/1.dcm under the id rule 'stem'")


def test_an_id_another_shard_gave_is_not_given_again(tmp_path):
    root, out = tmp_path / "archive", tmp_path / "out"
    _pacs_export(root, [(10000001, 50000001)], names=("1",))
    _pacs_export(root, [(11000001, 51000001)], names=("1", "9"))
    p10 = index_shard(root, "p10", SALT, out / "p10.parquet", out / "q10.parquet")
    p11 = index_shard(root, "p11", SALT, out / "p11.parquet", out / "q11.parquet",
                      taken_ids=index_ids([out / "p10.parquet"], "stem"))
    assert p10.index.num_rows == 1 and p11.index.column("dicom_id").to_pylist() == ["9"]
    assert p11.quarantine.column("reason").to_pylist()[0].endswith("(another shard)")


def _index_meeting_at_the_barrier(root: Path, shard: str, other: str, out: Path, barrier, reading, go) -> None:
    """One shard's run in a process of its own, as a Dagster step would be. It waits at `barrier`
    once its file is read (both runs have then read their files, and neither has written), and,
    when it reads the ids the other shard gave, says so on `reading` and waits for `go[shard]`."""
    def taken_ids():
        reading.put(shard)
        go[shard].wait(timeout=120)
        return index_ids([out / f"{other}.parquet"], "stem")

    # The timeouts only keep a dead partner from hanging the test; nothing waits on time.
    index_shard(root, shard, SALT, out / f"{shard}.parquet", out / f"q{shard}.parquet", id_rule="stem",
                progress=lambda count: barrier.wait(timeout=120), taken_ids=taken_ids)


def test_two_shards_indexed_at_the_same_moment_never_both_give_one_new_id(tmp_path):
    import multiprocessing

    import pyarrow.parquet as pq

    from ingestion.shards import ID_LOCK_NAME
    from tests.locks import held_elsewhere

    root, out = tmp_path / "archive", tmp_path / "out"
    write_dicom(mimic_path(root, 10000001, 50000001, "img0001"), chest_like(seed=1))
    write_dicom(mimic_path(root, 11000001, 51000001, "img0001"), chest_like(seed=2))
    spawn = multiprocessing.get_context("spawn")
    barrier, reading, go = spawn.Barrier(2), spawn.Queue(), {"p10": spawn.Event(), "p11": spawn.Event()}
    runs = [spawn.Process(target=_index_meeting_at_the_barrier, args=(root, shard, other, out, barrier, reading, go),
                          daemon=True)
            for shard, other in (("p10", "p11"), ("p11", "p10"))]
    for run in runs:
        run.start()
    first = reading.get(timeout=120)
    assert held_elsewhere(out / ID_LOCK_NAME)  # the ids are read under the lock ...
    go[first].set()
    second = reading.get(timeout=120)
    assert (out / f"{first}.parquet").exists()  # ... held until the index holding them is written
    go[second].set()
    for run in runs:
        run.join()
    assert [run.exitcode for run in runs] == [0, 0]
    given = {shard: pq.read_table(out / f"{shard}.parquet").column("source_path").to_pylist() for shard in go}
    [source] = given[first]  # the id is in one index only
    assert given[second] == []
    [row] = pq.read_table(out / f"q{second}.parquet").to_pylist()
    assert pq.read_table(out / f"q{first}.parquet").num_rows == 0 and row["source_path"].startswith(f"files/{second}/")
    assert row["reason"].startswith(f"same dicom_id as {source} under the id rule 'stem'")
    assert row["reason"].endswith("(another shard)")

"""MIMIC-CXR-JPG (JPEG files + metadata CSV) ingests into the same schema as DICOM."""

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from ingestion.dicom_index import INDEX_SCHEMA
from ingestion.images import build_cxr_images
from ingestion.shards import index_shard
from tests.dicom_factory import chest_like

METADATA = """dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns
jpg00001,10000001,50000001,CHEST (PA AND LAT),PA,128,112
jpg00002,10000001,50000001,CHEST (PA AND LAT),LATERAL,128,112
"""


def test_mimic_cxr_jpg_ingests_into_the_dicom_schema(tmp_path):
    study = tmp_path / "files" / "p10" / "p10000001" / "s50000001"
    study.mkdir(parents=True)
    frontal = (chest_like() * 255).astype(np.uint8)
    for name, pixels in (("jpg00001", frontal), ("jpg00002", np.fliplr(frontal))):  # identical files are duplicates
        Image.fromarray(np.ascontiguousarray(pixels)).save(study / f"{name}.jpg", quality=95)
    (study / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "mimic-cxr-2.0.0-metadata.csv").write_text(METADATA)

    result = index_shard(tmp_path, "p10", b"salt", tmp_path / "i.parquet", tmp_path / "q.parquet", source_format="jpg")
    assert result.index.schema == INDEX_SCHEMA
    rows = {r["dicom_id"]: r for r in result.index.to_pylist()}
    assert rows["jpg00001"]["view_position"] == "PA" and rows["jpg00002"]["view_position"] == "LATERAL"
    assert rows["jpg00001"]["study_id"] == "50000001" and rows["jpg00001"]["rows"] == 128
    assert [r["source_path"].endswith("broken.jpg") for r in result.quarantine.to_pylist()] == [True]

    images = build_cxr_images(result.index, tmp_path, tmp_path / "img.parquet", tmp_path / "dq.parquet", size=32)
    assert images.images == 2 and pq.read_table(tmp_path / "img.parquet").column("height").to_pylist() == [32, 32]

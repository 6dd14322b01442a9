"""One home for tracking: MLflow runs and stores, dataset digests, lineage records and tags.

Above the libraries (it logs what they produce), below the Dagster layer; it never names an asset."""

"""Ingestion: prompt files (NeMo CSV, Wen JSONL, COCO, plain CSV/Parquet) and images (folders,
webdataset/img2dataset tars, manifests) into the workspace tables.

Modules: prompts (prompt files), images (the image pipeline), sources (what a PATH holds),
decode (per-file hashing and probing, run in worker processes), manifest (file -> prompt/settings
CSV), report (what an ingest did). Nothing is imported here so `fbmem sql` stays light.
"""

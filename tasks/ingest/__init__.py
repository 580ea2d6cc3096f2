"""The ingest stage: load, validate, deduplicate, decontaminate and sample instructions."""

"""Thin Dagster wrappers around curation/ and training/: config in, pure call, metadata out."""

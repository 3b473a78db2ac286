"""The `ingest-worker` command line."""

"""The service surface of `ingest-worker run`: HTTP endpoints and metrics."""

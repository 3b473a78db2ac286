"""Consuming the input topics: judging fetched batches and settling records."""

"""Routing of rejected records to the retry and dead-letter topics, and replay."""

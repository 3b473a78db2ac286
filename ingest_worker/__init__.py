"""Exactly-once ingest of MES station events from Kafka into PostgreSQL."""

__version__ = "0.1.0"
__all__ = ["__version__"]

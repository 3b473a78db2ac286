"""The trace query: what happened to one serial number."""

"""Execution rules: run resolution, step choice, gates and data values.

Pure functions over state already loaded for a fetched batch. Nothing here
touches Kafka, the database or the clock, so a whole batch can be judged in
memory and the tests need no servers.
"""

"""The transactional outbox of normalized events and its relay."""

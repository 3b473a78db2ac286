"""PostgreSQL access: connections, migrations, master data and ingest writes."""

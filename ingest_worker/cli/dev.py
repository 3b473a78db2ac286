"""`ingest-worker dev`: the embedded broker and database until Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal

from ingest_worker.embedded import embedded_services
from ingest_worker.kafka import ensure_topics
from ingest_worker.settings import load_settings
from ingest_worker.storage.database import connect
from ingest_worker.storage.migrations import migrate


async def dev_command() -> int:
    with embedded_services(dict(os.environ)) as services:
        settings = load_settings({**os.environ, **services.environment()})
        connection = await connect(services.database_url)
        try:
            await migrate(connection)
        finally:
            await connection.close()
        await ensure_topics(settings)
        print("Embedded services are running. In another shell:")
        for name, value in services.environment().items():
            print(f"  export {name}='{value}'")
        print(
            "Then: ingest-worker seed ingest_worker/samples/factory.yaml (or "
            "your own factory file), ingest-worker run, ..."
        )
        print("Press Ctrl-C to stop them.", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    return 0

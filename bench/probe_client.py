"""Start `worker_probe.py` as a subprocess and follow its JSON lines."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import orjson

PROBE = Path(__file__).resolve().parent / "worker_probe.py"
# A phase fails when the committed count stays the same this long.
STALL_TIMEOUT_S = 180.0
_LOG_TAIL_LINES = 20
_EXIT_TIMEOUT_S = 120.0


class ProbeError(RuntimeError):
    """The worker probe failed, stalled or exited early."""


class ProbeProcess:
    """A running worker probe."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        log_path: Path,
        log_file: IO[bytes],
        progress: Callable[[str], None],
    ) -> None:
        self.process = process
        self.log_path = log_path
        self._log_file = log_file
        self._progress = progress

    @classmethod
    async def start(
        cls,
        environment: dict[str, str],
        phases: list[str],
        log_path: Path,
        timeout_s: float,
        progress: Callable[[str], None],
    ) -> ProbeProcess:
        log_file = log_path.open("wb")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(PROBE),
            *(f"--phase={phase}" for phase in phases),
            f"--timeout-s={timeout_s:.0f}",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
            env=environment,
        )
        return cls(process, log_path, log_file, progress)

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")

    def _log_tail(self) -> str:
        self._log_file.flush()
        with contextlib.suppress(OSError):
            lines = self.log_path.read_text(errors="replace").splitlines()
            return "\n".join(lines[-_LOG_TAIL_LINES:])
        return ""

    def _failure(self, message: str) -> ProbeError:
        return ProbeError(
            f"{message}; worker log {self.log_path}, last lines:\n{self._log_tail()}"
        )

    async def expect(self, kind: str, timeout_s: float, label: str) -> dict[str, Any]:
        """Return the next message of `kind` and print progress lines meanwhile.

        Raises ProbeError when the probe reports an error, exits, exceeds
        `timeout_s` or commits nothing for STALL_TIMEOUT_S.
        """
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout_s
        last_count = -1
        last_change = time.monotonic()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._failure(f"{label}: no {kind!r} within {timeout_s:.0f} s")
            try:
                line = await asyncio.wait_for(
                    self.process.stdout.readline(), min(remaining, 30.0)
                )
            except TimeoutError:
                continue
            if not line:
                code = await self.process.wait()
                raise self._failure(f"{label}: the probe exited with status {code}")
            message = orjson.loads(line)
            if message["type"] == kind:
                return message  # type: ignore[no-any-return]
            if message["type"] == "error":
                raise self._failure(f"{label}: {message['message']}")
            if message["type"] == "progress":
                self._progress(
                    f"{label}: {message['committed']:,} records committed, "
                    f"worker RSS {message['rss_kib'] / 1024:.0f} MiB"
                )
                if message["committed"] != last_count:
                    last_count = message["committed"]
                    last_change = time.monotonic()
                elif (
                    kind == "phase" and time.monotonic() - last_change > STALL_TIMEOUT_S
                ):
                    raise self._failure(
                        f"{label}: no commit for {STALL_TIMEOUT_S:.0f} s at "
                        f"{last_count:,} records"
                    )

    async def close(self) -> None:
        """Close standard input so the probe stops, then terminate it if it hangs."""
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), _EXIT_TIMEOUT_S)
        except TimeoutError:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self._log_file.close()

"""Database URLs in messages never show a password."""

from __future__ import annotations

import pytest

from ingest_worker.storage.database import redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql://mes:s3cret@db:5432/mes",
            "postgresql://mes:***@db:5432/mes",
        ),
        ("postgresql://mes@db/mes", "postgresql://mes@db/mes"),
        (
            "postgresql://mes@db/mes?password=s3cret&sslmode=require",
            "postgresql://mes@db/mes?password=***&sslmode=require",
        ),
        (
            "postgresql://mes:a@b@db/mes?sslpassword=x",
            "postgresql://mes:***@db/mes?sslpassword=***",
        ),
        (
            "postgresql://postgres:@/postgres?host=/tmp/pg",
            "postgresql://postgres:***@/postgres?host=/tmp/pg",
        ),
        ("not a url with secret", "***"),
    ],
)
def test_redact_url_hides_passwords(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert "s3cret" not in redact_url(url)

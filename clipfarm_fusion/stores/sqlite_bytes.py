"""A SQLite file that arrived as bytes (an S3 object), opened in memory: no temp file, no second copy."""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa
from sqlalchemy.pool import StaticPool

HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def connect(body: bytes) -> sqlite3.Connection:
    """An in-memory database holding `body`; sqlite3.Error when it is not a database."""
    connection = sqlite3.connect(":memory:", check_same_thread=False)
    connection.deserialize(body)
    return connection


def engine(body: bytes) -> sa.Engine:
    """A SQLAlchemy engine over `connect(body)`: one connection, shared (StaticPool)."""
    connection = connect(body)
    return sa.create_engine("sqlite://", creator=lambda: connection, poolclass=StaticPool)

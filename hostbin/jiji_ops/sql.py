"""`jiji-net db query` accepts only reading statements; writes go through the program or the
engine's hooks, never by hand. (Corrosion's query endpoint refuses writes too; this check gives
the operator a clear message first.)"""

from __future__ import annotations

import re

_READING = ("select", "with", "explain", "values")
_WRITING = re.compile(r"\b(insert|update|delete|replace|create|drop|alter|attach|detach|vacuum|reindex)\b", re.I)


def _strip(sql: str) -> str:
    sql = re.sub(r"--[^\n]*", " ", sql)
    sql = re.sub(r"/\*.*?\*/", " ", sql, flags=re.S)
    sql = re.sub(r"'(?:[^']|'')*'", "''", sql)  # string literals may contain any word
    return sql.strip().rstrip(";").strip()


def refuse_writes(sql: str) -> str | None:
    """None when `sql` is one reading statement, else why it is refused."""
    bare = _strip(sql)
    if not bare:
        return "empty statement"
    if ";" in bare:
        return "one statement at a time"
    first = bare.split(None, 1)[0].lower()
    if first == "pragma":
        return None if "=" not in bare else "PRAGMA assignments change the database; only reading PRAGMAs are allowed"
    if first not in _READING or _WRITING.search(bare):
        return f"{first.upper()} changes the registry; db query is read-only (use SELECT)"
    return None

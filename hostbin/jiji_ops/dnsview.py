"""`jiji-net dns`: every name jiji-dns serves, its answers, and the rows behind them, with the
reason each row is or is not answered. Uses the daemon's own ordering rules (jiji_common.names)."""

from __future__ import annotations

from typing import Any

from jiji_common.names import label_for, started_order

ROWS_SQL = (
    "SELECT c.id, c.project, c.service, c.server_id, c.ip, c.health_status, c.started_at, c.instance_id,"
    " (SELECT count(*) FROM services s WHERE s.project = c.project AND s.name = c.service) AS has_service"
    " FROM containers c ORDER BY c.project, c.service, c.server_id, c.id"
)


def names(rows: list[dict[str, Any]], domain: str) -> list[dict[str, Any]]:
    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        for parts in ((r["project"], r["service"]), (r["project"], r["service"], r["instance_id"])):
            if len(parts) == 3 and not parts[2]:
                continue
            label = label_for(*(str(p) for p in parts))
            name = f"{label}.{domain}" if label else "-".join(str(p) for p in parts) + f".{domain} (invalid label)"
            by_name.setdefault(name, []).append(r)
    out = []
    for name, members in sorted(by_name.items()):
        eligible = [r for r in members if r["health_status"] == "healthy" and r["has_service"] and "invalid" not in name]
        winners: dict[str, dict[str, Any]] = {}
        for r in eligible:
            best = winners.get(r["server_id"])
            if best is None or (started_order(r["started_at"]), r["id"]) > (started_order(best["started_at"]), best["id"]):
                winners[r["server_id"]] = r
        explained = []
        for r in members:
            winner = winners.get(r["server_id"])
            if "invalid" in name:
                why = "not a valid DNS label, never answered"
            elif r["health_status"] != "healthy":
                why = f"not healthy ({r['health_status']})"
            elif not r["has_service"]:
                why = f"no services row for {r['project']}/{r['service']}"
            elif winner is r:
                why = "answered"
            else:
                why = f"hidden: {winner['id'] if winner else '?'} on {r['server_id']} started later (newest wins per server)"
            explained.append({**{k: r[k] for k in ("id", "server_id", "ip", "health_status", "started_at")}, "why": why})
        answers = sorted({w["ip"] for w in winners.values()})
        project, service = str(members[0]["project"]), str(members[0]["service"])
        out.append({"name": name, "project": project, "service": service, "answers": answers, "healthy": len(eligible), "total": len(members), "rows": explained})
    return out

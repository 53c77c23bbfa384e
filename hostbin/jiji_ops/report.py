"""Status and readiness of one server from already-gathered facts (pure, unit-tested)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .drift import Survey
from .members import Member
from .wg import STALE_AFTER, Interface, Peer


@dataclass
class Facts:
    server: str
    now: float
    units: dict[str, str]  # unit -> systemctl is-active
    wireguard: Interface | str  # parsed dump, or the error
    peer_names: dict[str, str]  # public key -> server name (from the registry)
    members: list[Member] | str
    expected_members: int  # other servers in the registry
    corrosion_api: str | None  # None = answered; else the error
    dns: dict[str, Any] | str
    containers: dict[str, int] = field(default_factory=dict)  # health_status -> count on this server
    # Public keys of peers that answered no echo over jiji0 just now; None = not probed.
    unanswered: frozenset[str] | None = None
    # What changed since the last `pulumi up` (drift.py); None = not looked at.
    drift: Survey | None = None


def _silent(f: Facts, public_key: str) -> bool:
    return f.unanswered is not None and public_key in f.unanswered


def _stale(f: Facts, peer: Peer) -> bool:
    """Cut off: no handshake for 3 minutes, or no answer over the tunnel right now."""
    return peer.stale(f.now) or _silent(f, peer.public_key)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _not_active(f: Facts, unit: str, label: str | None = None) -> str | None:
    """Why `unit` fails its check ("<label> is <state>"), or None when it is active."""
    state = f.units.get(unit, "unknown")
    return None if state == "active" else f"{label or unit + '.service'} is {state}"


def checks(f: Facts) -> list[Check]:
    """What `ready` decides on (WireGuard, the container network, Corrosion, DNS); each failing
    check says what is wrong."""
    out = []
    wg_unit = f.units.get("wg-quick@jiji0", "unknown")
    if isinstance(f.wireguard, str):
        out.append(Check("wireguard", False, f"jiji0 is down ({wg_unit}): {f.wireguard}"))
    else:
        def name(p: Peer) -> str:
            return f.peer_names.get(p.public_key, p.public_key[:8])

        # A peer never handshaken with is told apart from one whose last handshake is old: right
        # after an up (or a reboot) the first is a matter of seconds, the second is a broken path.
        never = sorted(name(p) for p in f.wireguard.peers if p.latest_handshake == 0)
        old = sorted(name(p) for p in f.wireguard.peers if p.latest_handshake != 0 and p.stale(f.now))
        silent = sorted(name(p) for p in f.wireguard.peers if not p.stale(f.now) and _silent(f, p.public_key))
        problems = (
            ([f"no handshake yet with: {', '.join(never)}"] if never else [])
            + ([f"no handshake in {STALE_AFTER} s with: {', '.join(old)}"] if old else [])
            + ([f"no answer over jiji0 from: {', '.join(silent)}"] if silent else [])
        )
        if problems:
            out.append(Check("wireguard", False, "; ".join(problems)))
        else:
            answered = "" if f.unanswered is None else ", all answering"
            out.append(Check("wireguard", True, f"{len(f.wireguard.peers)} peers, all with recent handshakes{answered}"))
    if down := _not_active(f, "jiji-net-network", "jiji-net-network.service (forwarding, NAT, firewall)"):
        out.append(Check("network", False, down))
    else:
        out.append(Check("network", True, "forwarding, NAT and firewall in place"))
    if down := _not_active(f, "jiji-corrosion"):
        out.append(Check("corrosion", False, down))
    elif f.corrosion_api is not None:
        out.append(Check("corrosion", False, f"API does not answer: {f.corrosion_api}"))
    elif isinstance(f.members, str):
        out.append(Check("corrosion", False, f"cluster members unreadable: {f.members}"))
    elif len(f.members) < f.expected_members:
        out.append(Check("corrosion", False, f"sees {len(f.members)} of {f.expected_members} other members"))
    else:
        out.append(Check("corrosion", True, f"active, {len(f.members)} other members"))
    if down := _not_active(f, "jiji-dns"):
        out.append(Check("dns", False, down))
    elif isinstance(f.dns, str):
        out.append(Check("dns", False, f"counters unreadable: {f.dns}"))
    elif not f.dns.get("ready"):
        out.append(Check("dns", False, f"not ready: subscription {f.dns.get('subscription_state')}"))
    elif f.dns.get("subscription_state") != "live":
        out.append(
            Check(
                "dns",
                False,
                f"answers from its last snapshot ({f.dns.get('cache_names', 0)} names) but the subscription is"
                f" {f.dns.get('subscription_state')}: changes are not seen",
            )
        )
    else:
        out.append(Check("dns", True, f"serving {f.dns.get('cache_names', 0)} names, subscription {f.dns.get('subscription_state')}"))
    if f.drift is not None:
        out += drift_checks(f.drift)
    return out


def drift_checks(survey: Survey) -> list[Check]:
    """One failing check per thing changed since the last `pulumi up`, naming it, what is wrong
    and the remedy; one passing check when nothing is."""
    if survey.findings:
        return [Check(f"drift {d.kind} {d.name}", False, f"{d.problem}; {d.remedy}") for d in survey.findings]
    if not survey.ledgers:
        return [Check("drift", True, "nothing recorded yet: the steps record what they install on their next pulumi up")]
    c = survey.checked
    return [Check("drift", True, f"{c['file']} files, {c['unit']} units, {c['chain']} chains as the last pulumi up left them")]


def status(f: Facts) -> dict[str, Any]:
    """Everything `status` shows, as plain data (the --json form)."""
    peers = []
    if not isinstance(f.wireguard, str):
        for p in f.wireguard.peers:
            peers.append(
                {
                    "server": f.peer_names.get(p.public_key, "?"),
                    "public_key": p.public_key,
                    "endpoint": p.endpoint,
                    "allowed_ips": list(p.allowed_ips),
                    "handshake_age_s": p.handshake_age(f.now),
                    "stale": _stale(f, p),
                    "answers": None if f.unanswered is None else p.public_key not in f.unanswered,
                    "rx_bytes": p.rx_bytes,
                    "tx_bytes": p.tx_bytes,
                }
            )
    dns: dict[str, Any] = f.dns if isinstance(f.dns, dict) else {"error": f.dns}
    return {
        "server": f.server,
        "wireguard": {"unit": f.units.get("wg-quick@jiji0"), "error": f.wireguard if isinstance(f.wireguard, str) else None, "peers": peers},
        "corrosion": {
            "unit": f.units.get("jiji-corrosion"),
            "api_error": f.corrosion_api,
            "members": [] if isinstance(f.members, str) else [{"addr": m.addr, "actor_id": m.actor_id, "rtt_ms": m.rtt_ms} for m in f.members],
            "members_error": f.members if isinstance(f.members, str) else None,
            "expected_members": f.expected_members,
        },
        "dns": {
            "unit": f.units.get("jiji-dns"),
            **{k: dns.get(k) for k in ("ready", "subscription_state", "last_change_id", "cache_names", "cache_containers", "forwarded", "upstream_failures", "resyncs", "error")},
            "queries": (dns.get("queries_udp") or 0) + (dns.get("queries_tcp") or 0),
        },
        "containers": f.containers,
        "drift": None if f.drift is None else [d.__dict__ for d in f.drift.findings],
        "checks": [c.__dict__ for c in checks(f)],
    }

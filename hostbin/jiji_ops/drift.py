"""Drift: what changed on this server since the last `pulumi up` applied it, and putting it back.

Each step that sources the step library keeps a ledger, `layout.LEDGERS/<step>`, of what its last
successful apply installed (written by templates/steps/_lib.sh.j2, one line each):

    owner RESOURCE                   the step's Pulumi resource, for `pulumi up --replace`
    file PATH MODE SHA256 [SOURCE]   SOURCE: the upload it was installed from; else a kept copy
    unit NAME                        enabled and running
    chain TABLE NAME SHA256          of `iptables -w -t TABLE -S NAME`, kept like a file
    jump TABLE FROM TO

What put_file wrote, and each chain as the kernel printed it, is kept in `layout.KEPT` under its
SHA-256 (root's only), so `repair` restores it without Pulumi; binaries and zipapps are restored
from their staged upload once its SHA-256 checks.

`findings(root)` is the list of drift findings (kind "file", "unit" or "chain"), the figure a
monitor counts; `survey(root)` adds what was checked; `repair(root)` puts back what drifted.
`root` prefixes every path on the server (tests run in a temporary directory); systemctl and
iptables are those on PATH.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import stat
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

from jiji_common import layout
from jiji_common.digest import sha256_file

from .sources import parse_systemctl_show

KINDS = ("file", "unit", "chain")
# The order the steps run in on a server: repair starts units in it.
STEP_ORDER = ("network", "wireguard", "corrosion", "dns")
NETWORK_UNIT = "jiji-net-network"
# What `systemctl is-enabled` says of a unit unit_running enabled.
ENABLED = frozenset({"enabled", "enabled-runtime", "static", "alias"})
# What `systemctl is-active` says of a unit not stopped (one starting is the other checks' business).
RUNNING = frozenset({"active", "reloading", "activating"})


@dataclass(frozen=True)
class InstalledFile:
    path: str
    mode: str  # octal, as chmod takes it: "644"
    sha256: str
    source: str | None  # the staged upload it came from; None: its kept copy


@dataclass(frozen=True)
class Chain:
    table: str
    name: str
    sha256: str


@dataclass(frozen=True)
class Jump:
    table: str
    source: str
    target: str


@dataclass(frozen=True)
class Ledger:
    step: str
    owner: str
    files: tuple[InstalledFile, ...] = ()
    units: tuple[str, ...] = ()
    chains: tuple[Chain, ...] = ()
    jumps: tuple[Jump, ...] = ()


@dataclass(frozen=True)
class Finding:
    """One thing not as the last `pulumi up` left it: `name` is a path, a unit or a chain."""

    kind: str  # one of KINDS
    name: str
    problem: str
    remedy: str
    step: str


@dataclass(frozen=True)
class Survey:
    findings: list[Finding]
    checked: dict[str, int]  # kind -> how many were compared
    ledgers: int


def parse_ledger(step: str, text: str) -> Ledger:
    """A ledger's lines; ValueError names a line that is none of the known kinds."""
    owner = ""
    files: list[InstalledFile] = []
    units: list[str] = []
    chains: list[Chain] = []
    jumps: list[Jump] = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        match words:
            case ["owner", name]:
                owner = name
            case ["file", path, mode, sha, *source] if len(source) <= 1:
                # A file put twice in one run: the last wins.
                files = [f for f in files if f.path != path]
                files.append(InstalledFile(path, mode, sha, source[0] if source else None))
            case ["unit", name]:
                if name not in units:
                    units.append(name)
            case ["chain", table, name, sha]:
                chains.append(Chain(table, name, sha))
            case ["jump", table, source, target]:
                jumps.append(Jump(table, source, target))
            case _:
                raise ValueError(f"ledger of the {step} step, line {number}: cannot read {line!r}")
    return Ledger(step, owner, tuple(files), tuple(units), tuple(chains), tuple(jumps))


def _ordered(steps: list[str]) -> list[str]:
    return sorted(steps, key=lambda s: (STEP_ORDER.index(s) if s in STEP_ORDER else len(STEP_ORDER), s))


def read_ledgers(root: str = "") -> list[Ledger]:
    """Every step's ledger, in the order the steps run; ValueError for one that cannot be read."""
    directory = root + layout.LEDGERS
    try:
        names = [n for n in os.listdir(directory) if "." not in n]
    except FileNotFoundError:
        return []
    ledgers = []
    for step in _ordered(names):
        with open(os.path.join(directory, step)) as f:
            ledgers.append(parse_ledger(step, f.read()))
    return ledgers


# --- What is on the server -----------------------------------------------------------------------

# path -> (stat key, sha256): a monitor asking every few seconds hashes a big binary only after it
# changed.
_hashes: dict[str, tuple[tuple[int, ...], str]] = {}


def _sha256(path: str, st: os.stat_result) -> str:
    key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    cached = _hashes.get(path)
    if cached and cached[0] == key:
        return cached[1]
    digest = sha256_file(path)
    _hashes[path] = (key, digest)
    return digest


def file_problem(want: InstalledFile, root: str = "") -> str | None:
    """What is wrong with an installed file ("missing", "changed", a mode), or None."""
    path = root + want.path
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            return "replaced by something that is not a plain file"
        digest = _sha256(path, st)
    except FileNotFoundError:
        return "missing"
    except PermissionError:
        return "cannot be read as this user (run jiji-net as root)"
    problems = [] if digest == want.sha256 else ["changed"]
    mode = f"{stat.S_IMODE(st.st_mode):o}"
    if mode != want.mode:
        problems.append(f"mode {mode}, not {want.mode}")
    return ", ".join(problems) or None


def _run(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(argv, capture_output=True, timeout=20, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return subprocess.CompletedProcess(argv, 127, b"", f"{argv[0]}: not installed".encode())
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, b"", f"{argv[0]}: no answer in 20 s".encode())


def _said(result: subprocess.CompletedProcess[bytes]) -> str:
    return (result.stdout or result.stderr).decode(errors="replace").strip() or "unknown"


def unit_states(unit: str) -> tuple[str, str]:
    """`systemctl is-enabled` and `is-active` of `unit`."""
    return _said(_run(["systemctl", "is-enabled", unit])), _said(_run(["systemctl", "is-active", unit]))


def all_unit_states(units: list[str]) -> dict[str, tuple[str, str]]:
    """Enabled and active state of each unit from one `systemctl show` (a scrape of `jiji-net
    metrics` runs this: one process instead of two per unit). A unit systemctl does not print
    is left out; the caller asks it alone."""
    if not units:
        return {}
    result = _run(["systemctl", "show", "--property=Id,UnitFileState,ActiveState", *units])
    if result.returncode != 0:
        return {}
    shown = parse_systemctl_show(result.stdout.decode(errors="replace"))
    return {
        unit: (props.get("UnitFileState") or "not-found", props.get("ActiveState") or "unknown")
        for unit, props in shown.items()
    }


def unit_problem(enabled: str, active: str) -> str | None:
    problems = []
    if active not in RUNNING:
        problems.append(f"stopped ({active})")
    if enabled not in ENABLED:
        problems.append("disabled" if enabled == "disabled" else f"not enabled ({enabled})")
    return " and ".join(problems) or None


def chain_text(table: str, name: str) -> bytes | None:
    """The chain as `iptables -S` prints it; None when there is no such chain."""
    result = _run(["iptables", "-w", "-t", table, "-S", name])
    if result.returncode == 0:
        return result.stdout
    if result.returncode == 1 and b"by that name" in result.stderr:
        return None
    raise OSError(f"iptables -t {table} -S {name}: {_said(result)}")


def jump_present(jump: Jump) -> bool:
    return _run(["iptables", "-w", "-t", jump.table, "-C", jump.source, "-j", jump.target]).returncode == 0


def rule_changes(recorded: bytes, now: bytes) -> list[str]:
    """The rules a chain lost ("missing: RULE") and gained ("added: RULE") since it was recorded."""
    old, new = recorded.decode(errors="replace").splitlines(), now.decode(errors="replace").splitlines()
    out = []
    for line in difflib.ndiff(old, new):
        if line.startswith("- "):
            out.append(f"missing: {line[2:]}")
        elif line.startswith("+ "):
            out.append(f"added: {line[2:]}")
    return out


def _kept(root: str, sha256: str) -> str:
    return f"{root}{layout.KEPT}/{sha256}"


def _read_kept(root: str, sha256: str) -> bytes | None:
    try:
        with open(_kept(root, sha256), "rb") as f:
            return f.read()
    except OSError:
        return None


def chain_problem(chain: Chain, jumps: list[Jump], root: str = "") -> str | None:
    """What is wrong with an owned chain and the jumps into it, with the rules that differ."""
    try:
        now = chain_text(chain.table, chain.name)
    except OSError as e:
        return f"cannot be read: {e}"
    problems = []
    if now is None:
        problems.append("missing")
    elif hashlib.sha256(now).hexdigest() != chain.sha256:
        recorded = _read_kept(root, chain.sha256)
        changes = rule_changes(recorded, now) if recorded is not None else []
        problems.append("changed" + (f" ({'; '.join(changes)})" if changes else ""))
    problems += [f"jump from {j.source} missing" for j in jumps if not jump_present(j)]
    return "; ".join(problems) or None


# --- Findings ---------------------------------------------------------------------------------


def restorable_from(want: InstalledFile, root: str = "") -> str | None:
    """Where repair finds the content of `want`: its kept copy or its staged upload, checked."""
    candidates = [root + want.source] if want.source else [_kept(root, want.sha256)]
    for path in candidates:
        try:
            if sha256_file(path) == want.sha256:
                return path
        except OSError:
            continue
    return None


def _through_pulumi(owner: str) -> str:
    return f"`pulumi up --replace <URN of {owner}>` (pulumi stack --show-urns | grep '::{owner}$')"


def remedy(kind: str, owner: str, restorable: bool = True) -> str:
    pulumi = _through_pulumi(owner)
    if not restorable:
        return f"its kept copy or upload is gone, so only Pulumi puts it back: {pulumi}"
    how = {
        "file": "`jiji-net repair` here puts back the content",
        "unit": "`jiji-net repair` here enables and starts it",
        "chain": f"`jiji-net repair` here restarts {NETWORK_UNIT}, which refills every chain at once",
    }[kind]
    return f"{how}; or {pulumi}"


def ledger_findings(ledger: Ledger, root: str = "", states: dict[str, tuple[str, str]] | None = None) -> list[Finding]:
    out = []
    states = states or {}
    for want in ledger.files:
        if problem := file_problem(want, root):
            restorable = restorable_from(want, root) is not None
            out.append(Finding("file", want.path, problem, remedy("file", ledger.owner, restorable), ledger.step))
    for unit in ledger.units:
        if problem := unit_problem(*(states.get(unit) or unit_states(unit))):
            out.append(Finding("unit", unit, problem, remedy("unit", ledger.owner), ledger.step))
    for chain in ledger.chains:
        jumps = [j for j in ledger.jumps if j.target == chain.name and j.table == chain.table]
        if problem := chain_problem(chain, jumps, root):
            out.append(Finding("chain", chain.name, problem, remedy("chain", ledger.owner), ledger.step))
    return out


def survey(root: str = "") -> Survey:
    """Every ledger compared with the server."""
    try:
        ledgers = read_ledgers(root)
    except (OSError, ValueError) as e:
        unread = Finding(
            "file", root + layout.LEDGERS, f"unreadable ledger: {e}", "run pulumi up --replace on that step", "?"
        )
        return Survey([unread], dict.fromkeys(KINDS, 0), 0)
    states = all_unit_states([u for ledger in ledgers for u in ledger.units])
    found = [f for ledger in ledgers for f in ledger_findings(ledger, root, states)]
    checked = {
        "file": sum(len(ledger.files) for ledger in ledgers),
        "unit": sum(len(ledger.units) for ledger in ledgers),
        "chain": sum(len(ledger.chains) for ledger in ledgers),
    }
    return Survey(found, checked, len(ledgers))


def findings(root: str = "") -> list[Finding]:
    """What drifted on this server (root: a prefix for every path, "" on a server), each with its
    kind ("file", "unit" or "chain"), name, problem and remedy. Runs systemctl and iptables."""
    return survey(root).findings


def as_dicts(found: list[Finding]) -> list[dict[str, Any]]:
    return [asdict(f) for f in found]


# --- Repair -------------------------------------------------------------------------------------


@dataclass
class Repair:
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # each says what to do instead
    remaining: list[Finding] = field(default_factory=list)


def restore_file(want: InstalledFile, source: str, root: str = "") -> None:
    """`want` from `source`, written beside it and renamed over it (readers see old or new)."""
    path = root + want.path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    new = path + ".jiji-new"
    with open(source, "rb") as src, open(new, "wb") as dst:
        while block := src.read(1 << 20):
            dst.write(block)
        dst.flush()
        os.fsync(dst.fileno())
    os.chmod(new, int(want.mode, 8))
    os.replace(new, path)


def _systemctl(repair: Repair, *argv: str) -> bool:
    result = _run(["systemctl", *argv])
    if result.returncode != 0:
        repair.failed.append(f"systemctl {' '.join(argv)} failed: {_said(result)}")
        return False
    repair.done.append(f"systemctl {' '.join(argv)}")
    return True


def repair(root: str = "") -> Repair:
    """Puts back what drifted, and only that: files from their kept copies or checked uploads
    (then `systemctl daemon-reload` if a unit file was among them), units enabled and started, and
    for a changed chain jiji-net-network restarted (it refills every chain in one transaction).
    `remaining` is what a second look still finds; `failed` says what to do about each."""
    result = Repair()
    before = survey(root)
    ledgers = {ledger.step: ledger for ledger in read_ledgers(root)} if before.ledgers else {}
    drifted = {(f.kind, f.name) for f in before.findings}
    reload = False
    for ledger in ledgers.values():
        for want in ledger.files:
            if ("file", want.path) not in drifted:
                continue
            source = restorable_from(want, root)
            if source is None:
                result.failed.append(f"{want.path}: {remedy('file', ledger.owner, restorable=False)}")
                continue
            restore_file(want, source, root)
            result.done.append(f"restored {want.path} (from {'its upload' if want.source else 'its kept copy'})")
            reload = reload or os.path.dirname(want.path).endswith(layout.SYSTEMD_UNITS)
    if reload:
        _systemctl(result, "daemon-reload")
    started = set()
    for ledger in ledgers.values():
        for unit in ledger.units:
            if ("unit", unit) not in drifted:
                continue
            enabled, active = unit_states(unit)
            if enabled not in ENABLED:
                _systemctl(result, "enable", unit)
            if active not in RUNNING:
                _run(["systemctl", "reset-failed", unit])
                if _systemctl(result, "start", unit):
                    started.add(unit)
    if any(kind == "chain" for kind, _ in drifted) and NETWORK_UNIT not in started:
        _systemctl(result, "restart", NETWORK_UNIT)
    result.remaining = findings(root)
    for f in result.remaining:
        if not any(line.startswith(f"{f.name}:") for line in result.failed):
            result.failed.append(f"{f.kind} {f.name} still {f.problem}; {f.remedy}")
    return result

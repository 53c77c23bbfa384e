"""The WireGuard scripts the program runs, run for real on lab hosts over SSH.

Keys are generated once on each host and never printed; peers change live with `wg syncconf`
without losing the private key or existing handshakes; delete leaves no interface or file.
"""

from __future__ import annotations

from components import scripts
from components.model import CorrosionSource, MeshSettings, Server
from components.plan import peers_of, plan_addresses
from components.render import KEY_PATH, wireguard_config
from tests.conftest import Lab
from tests.harness import wait_until

SETTINGS = MeshSettings(corrosion=CorrosionSource(local_path="/x"), container_engine="none")


def servers(n: int) -> list[Server]:
    return [Server(name=f"lab{i}", host=f"198.18.0.{10 + i}", index=i, endpoint=f"198.18.0.{10 + i}") for i in range(n)]


def apply(lab: Lab, members: list[Server], keys: dict[str, str]) -> None:
    plans = plan_addresses(SETTINGS, members)
    for s in members:
        conf = wireguard_config(SETTINGS, plans[s.name], peers_of(s, members, plans, 51820), keys)
        lab.run(s.index, scripts.WG_CONF_APPLY, stdin=conf)


def test_keys_once_live_peer_changes_and_clean_delete(lab: Lab) -> None:
    members = servers(3)
    try:
        keys = {s.name: lab.run(s.index, scripts.WG_KEY_CREATE).strip() for s in members}
        assert all(len(k) == 44 for k in keys.values())
        assert lab.run(0, scripts.WG_KEY_CREATE).strip() == keys["lab0"], "the key is generated once"
        private = lab.run(0, f"cat {KEY_PATH}").strip()
        assert private not in keys.values()
        assert lab.run(0, f"stat -c %a {KEY_PATH}").strip() == "600"

        two = members[:2]
        apply(lab, two, keys)
        lab.run(0, "ping -c1 -W2 10.210.1.1")
        first = wait_until(lambda: lab.handshakes(0).get(keys["lab1"], 0), 10, "lab0-lab1 handshake")

        apply(lab, members, keys)  # lab2 joins: lab0 and lab1 change live
        # A new peer's first initiation may go out before it is up: WireGuard retries after 5 s.
        for i, j in ((0, 2), (2, 1), (1, 2)):
            wait_until(lambda i=i, j=j: lab.pings(i, f"10.210.{j}.1", wait=1), 15, f"lab{i} -> lab{j}")
        assert lab.handshakes(0).get(keys["lab1"], 0) == first, "syncconf kept the existing handshake"
        assert lab.run(0, "wg show jiji0 private-key").strip() == private, "syncconf kept the private key"

        apply(lab, two, keys)  # and leaves again
        assert keys["lab2"] not in lab.run(0, "wg show jiji0 peers")
        lab.run(0, "ping -c1 -W2 10.210.1.1")
        assert lab.handshakes(0).get(keys["lab1"], 0) >= first
    finally:
        for s in members:
            lab.run(s.index, scripts.WG_CONF_DELETE)
            lab.run(s.index, scripts.WG_KEY_DELETE)
    for s in members:
        assert lab.run(s.index, "ip link show jiji0 2>&1 || true").strip().endswith("does not exist.")
        assert lab.run(s.index, "ls /etc/wireguard").strip() == ""
        assert lab.run(s.index, "systemctl is-enabled wg-quick@jiji0 || true").strip() == "disabled"

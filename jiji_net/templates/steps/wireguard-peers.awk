# The [Peer] sections of jiji0.conf, from the mesh table (one server a line, tab-separated:
# name index subnet public_key endpoint private_network private_endpoint; "-" for none), for
# the server named `self` whose private network is `network`. A peer on the same private
# network is reached at its private address, any other at its endpoint.
BEGIN { FS = "\t" }
/^#/ || NF == 0 { next }
NF != 7 { printf "mesh table line %d has %d fields, not 7\n", NR, NF > "/dev/stderr"; bad = 1; exit 1 }
$1 == self { next }
{
    endpoint = $5
    if (network != "-" && $6 == network) endpoint = $7
    printf "\n# %s\n[Peer]\nPublicKey = %s\nAllowedIPs = %s\n", $1, $4, $3
    if (endpoint != "-") printf "Endpoint = %s\n", endpoint
    printf "PersistentKeepalive = %s\n", keepalive
}
END { if (bad) exit 1 }

# Managed by jiji-net: the registry step of jiji-registry, run as `sh -s -- apply|remove`.
set -eu
STEP=registry
# shellcheck disable=SC2034 # read by the library's main
OWNER=jiji-registry
LIB=/var/lib/jiji-net/staging/steplib.1111111111111111
if [ ! -r "$LIB" ]; then
    printf 'jiji-net: %s: %s: %s is missing; upload it again (pulumi up --replace on the staged-upload of this server, see pulumi stack --show-urns), then run pulumi up\n' "$(hostname)" "$STEP" "$LIB" >&2
    exit 1
fi
# shellcheck source=/dev/null
. "$LIB"
# shellcheck disable=SC2034 # read by the library's main
STAMP=""
apply() {
    /usr/local/bin/jiji-net register <<'__JIJI_EOF__'
{
 "access_peers": [
  {
   "address": "10.211.86.97",
   "allow": [],
   "expires_at": 1798740000,
   "name": "ana-laptop",
   "public_key": "klju8D7Qb7cyc6j9YTI/g3g1R0cW9UhuZUn7fsgXaXw="
  },
  {
   "address": "10.211.0.10",
   "allow": [],
   "expires_at": 0,
   "name": "ci-runner",
   "public_key": "mGiG6+h1d7yOB193s5I8Z8prY26VWMxf6u6Lkj71a28="
  }
 ],
 "metadata": {
  "cluster_cidr": "10.210.0.0/16",
  "domain": "jiji",
  "subnet_prefix_len": 24
 },
 "servers": [
  {
   "endpoints": [
    "198.18.0.10"
   ],
   "hostname": "198.18.0.10",
   "id": "web0",
   "subnet": "10.210.0.0/24",
   "wireguard_ip": "10.210.0.1",
   "wireguard_pubkey": "q5ZTk5ujhavzEiTJFUhKwip9ICV3x6XwXsi9dJ5KDG0="
  },
  {
   "endpoints": [
    "198.18.0.11"
   ],
   "hostname": "198.18.0.11",
   "id": "web1",
   "subnet": "10.210.1.0/24",
   "wireguard_ip": "10.210.1.1",
   "wireguard_pubkey": "7Jek7hbxtbCU60NqFBubVyAdtLIBGH+jfD1yRIHF+b4="
  },
  {
   "endpoints": [
    "198.18.0.12"
   ],
   "hostname": "198.18.0.12",
   "id": "web2",
   "subnet": "10.210.2.0/24",
   "wireguard_ip": "10.210.2.1",
   "wireguard_pubkey": "x/Pr+fKOfJb5o5YDg/LN2+X9+5VLtlf6GPAxlnFBeIQ="
  }
 ]
}
__JIJI_EOF__
}
remove() { :; }
main "$@" </dev/null

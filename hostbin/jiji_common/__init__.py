"""What the DNS daemon (jiji_dns), the host tool (jiji_ops) and the program (jiji_net) share:
where things live on a server, the rules that make a DNS label of a container, and the log line.
Both zipapps carry it, so a change to the daemon alone changes only jiji-dns.pyz (and restarts
only jiji-dns), not the host tool's registrar and rejoin watch."""

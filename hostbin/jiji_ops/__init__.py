"""jiji-net: the host tool installed on every server (operator commands, registry sync)."""

"""relaymail: a mail transfer agent with explicit, per-domain TLS policy."""

"""virtkitd: the host daemon (an inventory in SQLite, a REST API on a Unix socket and TCP)."""

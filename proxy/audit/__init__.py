"""The tamper-evident audit log: records, hash chain, segment files, verification, search."""

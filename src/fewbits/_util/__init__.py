"""Small helpers every layer may use: atomic file and directory writes, canonical JSON, hashes."""

"""Per-stage latency, memory and size benchmarks (host and on-phone), one JSON schema."""

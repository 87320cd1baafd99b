"""The guard: an OpenAI-compatible gateway with accounts, keys, quotas, a durable audit log and blocking."""

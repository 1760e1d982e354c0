"""Per-tenant state: sessions, the response cache, the Redis connection."""

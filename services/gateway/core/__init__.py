"""One chat turn without HTTP: the orchestrator, the decision policy, the knowledge base, slots, timings, the gateway's errors."""

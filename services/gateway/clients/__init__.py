"""Calls to the workers: replica pools with retries and breakers, the model client, the FAQ encoder, canary routing."""

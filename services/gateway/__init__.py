"""The public customer-service gateway (issue 5)."""

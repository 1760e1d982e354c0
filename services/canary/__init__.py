"""Canary rollouts (issue 7). `promql.py` holds the PromQL shared by the canary dashboard, alerts and gates."""

"""Grafana dashboards as code: `boards.py` defines them, `generate.py` writes the JSON, `check.py` checks it."""

"""The whole platform on one machine (`make run`): `python -m services.stack`. Not part of any service: it
starts the worker, the FAQ store (a milvus-lite server) and the gateway as child processes (`launcher.py`)
and keeps them alive (`supervisor.py`). In a cluster the Helm chart does this job."""

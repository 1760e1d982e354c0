"""Inference worker: serves a model repository over the Open Inference Protocol (KServe V2) with dynamic batching."""

"""Evaluation: retrieval metrics (pure numpy/torch), evaluation of a trained run, plots.
May import: e2i.model, e2i.store, e2i.train.checkpoint, e2i.config. Metrics import no ray.
"""

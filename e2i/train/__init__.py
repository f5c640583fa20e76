"""Training heads on a store: the per-worker loop, the Ray Train driver, checkpoints.
May import: e2i.model, e2i.store, e2i.evaluate, e2i.config, ray.
"""

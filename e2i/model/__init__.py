"""Projection heads and contrastive losses: pure torch. May import: e2i.config, e2i.errors. No ray.
"""

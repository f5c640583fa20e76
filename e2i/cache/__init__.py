"""Corpus -> store with Ray Data: the caching pipeline, shard buffering, pseudo-images and their
export. May import: e2i.corpus, e2i.encoders, e2i.store, ray.
"""

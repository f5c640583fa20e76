"""The parquet store: schema, writer, reader, verify, legacy import, splits, mirroring and the
synthetic-latent store. May import: e2i.errors, e2i.paths. No ray.
"""

"""End-to-end fine-tuning of PaSST + RoBERTa: Lightning module, data, Ray Train driver.
May import: e2i.corpus, e2i.encoders, e2i.evaluate.metrics, e2i.train.checkpoint, e2i.config, ray.
"""

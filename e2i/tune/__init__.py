"""Search: the space grammar (no ray), Optuna + ASHA search on Ray Tune, the report.
May import: e2i.train, e2i.config, e2i.store, ray, optuna.
"""

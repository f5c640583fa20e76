"""e2i: Embed2Image contrastive retrieval on Ray (cache -> store -> train -> tune -> evaluate)."""

__version__ = "0.1.0"

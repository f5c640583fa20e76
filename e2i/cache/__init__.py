"""Corpus -> store with Ray Data (`e2i cache`), and the store's embeddings as pseudo-images (`e2i images`).

Modules, in pipeline order:

- ``pipeline``: the driver, :func:`cache_corpus` (read the corpus, one phase per kind, manifest last);
- ``embed``: the Ray Data stages (preprocess CPU tasks, the ``EmbedBatch`` actor pool, its resources);
- ``shards``: shards of exactly ``--shard-size`` rows, item metadata columns, resume bookkeeping;
- ``workers``: ``--write-on workers`` (index on a worker, shards written by the actors) and the choice of path;
- ``media``: media on object storage, fetched by the decode tasks on the workers;
- ``summary``: the summary ``cache_corpus`` returns and its table;
- ``cli``: the flags of `e2i cache` (``add_arguments``/``run``, encoder options from flags);
- ``pseudo_image``: one embedding <-> one RGB PNG (the layout, numpy + PIL);
- ``images``: the pseudo-images of a whole store split, written with Ray Data;
- ``image_export``: the flags of `e2i images` (layout flags, older aliases, mirroring).

May import: e2i.corpus, e2i.encoders, e2i.store, e2i.errors; ray and torch only inside the functions that
run on Ray, so importing e2i.cache stays light. ``add_arguments``/``run`` here are `e2i cache`'s.
"""

from e2i.cache.cli import add_arguments, encoder_options_from_args, parse_encoder_options, run
from e2i.cache.embed import KEEP, EmbedBatch, embed_stream, pool_resources, preprocess_batch
from e2i.cache.images import embedding_matrix, export_pseudo_images, export_split
from e2i.cache.pipeline import DEFAULTS, LIGHT, cache_corpus, infer_corpus_kind
from e2i.cache.pseudo_image import embedding_to_image, image_to_embedding, pseudo_image_png, read_pseudo_image
from e2i.cache.summary import print_summary

__all__ = [
    "DEFAULTS", "KEEP", "LIGHT", "EmbedBatch", "add_arguments", "cache_corpus", "embed_stream",
    "embedding_matrix", "embedding_to_image", "encoder_options_from_args", "export_pseudo_images",
    "export_split", "image_to_embedding", "infer_corpus_kind", "parse_encoder_options", "pool_resources",
    "preprocess_batch", "print_summary", "pseudo_image_png", "read_pseudo_image", "run",
]

"""Raw corpora: readers per corpus kind (Clotho, COCO, JSONL, image folders), caption
curation, the built-in toy corpus, the Clotho download. May import: e2i.errors. No ray.
"""

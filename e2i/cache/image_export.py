"""`e2i images`: the flags and ``run(args)`` of the pseudo-image export (e2i/cache/images.py).

    e2i images --store stores/toy/development [--images-dir DIR] [--image-size 128 --image-mode nearest ...]

- the layout flags (:func:`add_image_options`, shared with `e2i cache --with-images`; layout in
  e2i/cache/pseudo_image.py), ``--kinds``, ``--batch-size``;
- ``--store`` a split dir, or a dataset/root dir: every split found under it is exported;
- ``--cache-dir DIR``: the older image exporter's name for the store split dir, an alias of ``--store``
  (both given with different paths is an error);
- ``--include-embeddings``: beside the PNGs of each modality, ``pseudo_images/<modality>/embeddings.parquet``
  (id, embedding: exactly the store's values, in store order; see e2i/cache/images.py);
- ``--mirror URI`` / ``--hf-dataset owner/name [--hf-prefix P] [--hf-token T]`` / ``--upload-every N``: the
  flags of `e2i cache` (:func:`e2i.store.mirror.add_mirror_arguments`, same URIs, retries and reports). What is
  mirrored is the export: each split's ``pseudo_images/`` tree (PNGs, ``embeddings.parquet``, and
  ``meta.json`` last, only in the final sync) goes to ``<uri>/<dataset>/<split>/pseudo_images/``, every N
  exported rows and at the end; the split's shards and manifest are `e2i cache --mirror`'s. The mirror
  reads the local images dir on the driver, so it needs a local ``--images-dir`` (or split dir).
  Exit code 1 when uploads failed (the local export is complete), as `e2i cache`.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import time
from typing import Any

from e2i.cache.images import KIND_ID, export_pseudo_images
from e2i.cache.pseudo_image import CHANNEL_MODES, MODES
from e2i.errors import ConfigError, StoreError


def add_image_options(parser: argparse.ArgumentParser) -> None:
    """The layout flags (shared with `e2i cache --with-images`); read back with :func:`image_options`."""
    parser.add_argument("--image-size", type=int, default=128, help="side of the square PNGs in pixels")
    parser.add_argument(
        "--image-mode",
        choices=MODES,
        default="nearest",
        help="upsampling of the embedding grid (nearest keeps it invertible)",
    )
    parser.add_argument(
        "--image-channel-mode",
        choices=CHANNEL_MODES,
        default="split",
        help="split: the embedding is spread over R, G, B; replicate: grey, same grid in all three",
    )
    parser.add_argument(
        "--clip-values",
        action="store_true",
        help="clamp to [-1, 1] and normalise with that fixed range (default: per-vector min-max)",
    )


def image_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`export_pseudo_images` from the flags of :func:`add_image_options`."""
    return {
        "image_size": args.image_size,
        "mode": args.image_mode,
        "channel_mode": args.image_channel_mode,
        "clip_values": args.clip_values,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `e2i images`."""
    from e2i.store.mirror import add_mirror_arguments

    parser.add_argument(
        "--store",
        help="a store split dir, or a dataset/root dir: every split found under it is exported (required, "
        "or --cache-dir)",
    )
    parser.add_argument(
        "--images-dir",
        default=None,
        help="where pseudo_images/ goes (default: inside each split dir; with several splits "
        "<images-dir>/<split>/pseudo_images/)",
    )
    add_image_options(parser)
    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=tuple(KIND_ID),
        default=["items", "captions"],
        help="which embeddings to export",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="rows per Ray Data batch")
    # kept from the older tools
    parser.add_argument(
        "--cache-dir", metavar="SPLIT_DIR", help="alias of --store (the older image exporter's name for it)"
    )
    parser.add_argument(
        "--include-embeddings",
        action="store_true",
        help="also write pseudo_images/<modality>/embeddings.parquet: columns id, embedding "
        "(float32, exactly the store's values), one row per PNG, in store order",
    )
    add_mirror_arguments(parser, what="each split's pseudo_images/", rows="exported")


def store_dir(args: argparse.Namespace) -> str:
    """The split (or root) dir of ``--store`` / its alias ``--cache-dir``."""
    store, alias = args.store, args.cache_dir
    if store is None and alias is None:
        raise ConfigError("--store (or --cache-dir): the store split dir to export is required")
    if store is not None and alias is not None and not _same_dir(store, alias):
        raise ConfigError(f"--cache-dir {alias} differs from --store {store}: give one of them")
    return store if store is not None else alias


def _same_dir(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


class _Upload:
    """Mirror of one split's ``pseudo_images/``: every ``every`` exported rows, and at the end."""

    def __init__(self, uri: str, split: str, local: str, token: str | None, every: int | None) -> None:
        from e2i.store.mirror import Mirror

        if "://" in local:
            raise ConfigError(f"--mirror/--hf-dataset: {local} is not local; write the images there directly")
        self.mirror = Mirror(uri, split, token=token, source=local)
        self.every, self.since, self.report = every, 0, None

    def rows(self, n: int) -> None:
        self.since += n
        if self.every and self.since >= self.every:
            self.sync(final=False)

    def sync(self, final: bool):
        from e2i.store.mirror import IMAGES_DIR, split_files

        files, _ = split_files(self.mirror.split_dir, embeddings=False, images=True)
        meta = f"{IMAGES_DIR}/meta.json"
        report = self.mirror.sync([f for f in files if f != meta], [meta] if final and meta in files else [])
        self.since = 0
        if self.report is None:
            self.report = report
        else:
            self.report.merge(report)
        return self.report


def run(args: argparse.Namespace) -> int:
    """`e2i images`: exit 0, or 1 when the export is complete but the mirror reported failed uploads."""
    import ray

    from e2i.store import find_splits
    from e2i.store.mirror import mirror_from_args

    store = store_dir(args)
    uri, token = mirror_from_args(args)
    splits = find_splits(store)
    if not splits:
        raise StoreError(f"{store}: no store split found (expected items/ and captions/ or manifest.json)")
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False)
    start, failed = time.perf_counter(), False
    total: dict[str, int] = {}
    for split in splits:
        out = args.images_dir
        if out is not None and len(splits) > 1:
            out = out.rstrip("/") + "/" + posixpath.basename(split.rstrip("/"))
        upload = _Upload(uri, split, out or split, token, args.upload_every) if uri else None
        counts = export_pseudo_images(
            split, out, args.kinds, batch_size=args.batch_size, include_embeddings=args.include_embeddings,
            on_rows=upload.rows if upload else None, **image_options(args),
        )
        shown = ", ".join(f"{n} {m}" for m, n in counts.items())
        print(f"{split}: {shown} -> {(out or split).rstrip('/')}/pseudo_images/")
        if upload is not None:
            report = upload.sync(final=True)
            print(f"{report.summary()} ({report.syncs} sync(s))")
            failed = failed or not report.ok
        for m, n in counts.items():
            total[m] = total.get(m, 0) + n
    n = sum(total.values())
    print(f"pseudo-images: {n} PNGs from {len(splits)} split(s) in {time.perf_counter() - start:.1f} s")
    return 1 if failed else 0

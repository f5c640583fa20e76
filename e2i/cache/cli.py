"""The flags of `e2i cache` and its ``run(args)``: arguments -> :func:`e2i.cache.pipeline.cache_corpus`.

Encoder options come from ``--encoder-option [modality.]key=value`` (repeatable) and a few named flags
(``FLAG_OPTIONS``: ``--audio-arch``, ``--max-audio-seconds``, ``--text-model``, ``--image-model``); an
option no chosen encoder has is an error that names the encoders.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping

from e2i.cache.embed import CPUS_PER_GPU
from e2i.cache.image_export import add_image_options, image_options
from e2i.cache.pipeline import DEFAULTS, LIGHT, cache_corpus
from e2i.errors import ConfigError

# flag -> (modality, encoder option it sets); applied only when the flag is given.
FLAG_OPTIONS = {"audio_arch": ("audio", "arch"), "max_audio_seconds": ("audio", "max_audio_seconds"),
                "text_model": ("text", "model"), "image_model": ("image", "model")}


def parse_encoder_options(pairs: list[str], names: Mapping[str, str]) -> dict[str, dict]:
    """``[modality.]key=value`` strings -> {modality: {key: value}}. Values are JSON when they parse
    (``64``, ``0.5``, ``false``, ``null``), else strings. A key without a modality goes to every encoder
    in ``names`` (modality -> encoder name) that has that option."""
    out: dict[str, dict] = {m: {} for m in names}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--encoder-option {pair!r}: expected [modality.]key=value")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        modality, _, opt = key.rpartition(".")
        targets = [modality] if modality else [m for m, n in names.items() if opt in option_names(n)]
        if modality and modality not in names:
            raise ConfigError(f"--encoder-option {pair!r}: unknown modality {modality!r} (valid: {', '.join(names)})")
        if not targets:
            raise ConfigError(f"--encoder-option {pair!r}: no encoder has option {opt!r} "
                              f"({', '.join(f'{m}={n}' for m, n in names.items())})")
        for m in targets:
            out[m][opt] = value
    return out


def option_names(encoder: str) -> set[str]:
    """The options an encoder accepts (fields of its ``Options`` dataclass)."""
    from e2i.encoders import ENCODERS

    if encoder not in ENCODERS:
        raise ConfigError(f"unknown encoder '{encoder}' (valid: {', '.join(ENCODERS)})")
    return {f.name for f in dataclasses.fields(ENCODERS[encoder].Options)}


def encoder_options_from_args(args: argparse.Namespace) -> dict[str, dict]:
    names = {"audio": args.audio_encoder, "image": args.image_encoder, "text": args.text_encoder}
    opts = parse_encoder_options(args.encoder_option or [], names)
    for flag, (modality, opt) in FLAG_OPTIONS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if opt not in option_names(names[modality]):
            raise ConfigError(f"--{flag.replace('_', '-')}: encoder '{names[modality]}' has no option {opt!r}")
        opts[modality].setdefault(opt, value)
    return opts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `e2i cache` (the image layout flags are `e2i images`'s, see e2i.cache.image_export)."""
    from e2i.store.mirror import add_mirror_arguments

    a = parser.add_argument
    a("--metadata", required=True, help="corpus: Clotho dir or captions CSV, COCO root, JSON/JSONL file or a glob of "
                                        "them ('meta/train-*.jsonl': with --write-on workers, one read task per "
                                        "file), image folder; local or s3://... (AWS_ENDPOINT_URL) or any pyarrow "
                                        "filesystem URI")
    a("--corpus", choices=("clotho", "coco", "jsonl", "imagefolder"), help="corpus kind (default: inferred)")
    a("--split", help="corpus split, e.g. development / val2017 (default: the reader's)")
    a("--cache-dir", default="stores",
      help="store root, local or s3://...; writes <cache-dir>/<dataset>/<split>/ (default: stores)")
    a("--dataset", help="dataset name in the store (default: the corpus name, e.g. clotho, toy)")
    a("--batch-size", type=int, default=None,
      help="rows per encoder call (default: per encoder: 2048 for ngram-hash, 64 for logmel-stats/image-stats, "
           "32 for model encoders)")
    a("--audio-encoder", default=DEFAULTS["audio"], help=f"audio encoder (default: passt; light: {LIGHT['audio']})")
    a("--audio-arch", help="PaSST architecture (passt option arch; default: passt_s_swa_p16_128_ap476)")
    a("--max-audio-seconds", type=float, help="crop audio to the first N seconds (default: whole clip)")
    a("--text-encoder", default=DEFAULTS["text"], help=f"text encoder (default: hf-text; light: {LIGHT['text']})")
    a("--text-model", help="transformers text model id or local dir for hf-text (default: roberta-base)")
    a("--image-encoder", default=DEFAULTS["image"], help=f"image encoder (default: hf-image; light: {LIGHT['image']})")
    a("--image-model", help="transformers vision model id or local dir for hf-image")
    a("--encoder-option", action="append", metavar="[MODALITY.]KEY=VALUE",
      help="extra encoder option, repeatable (e.g. text.max_length=64, audio.pretrained=false)")
    a("--curate-captions", action="store_true", help="fix common caption typos/spacing before embedding")
    a("--num-actors", type=int, help="embedding actors (default: one per GPU, else half the CPUs)")
    a("--use-gpu", action="store_true",
      help="always request 1 GPU per actor, even before GPU nodes are up (autoscaling clusters)")
    a("--cpu-only", action="store_true", help="embed on CPU actors even if the cluster has GPUs (light encoders)")
    a("--cpus-per-gpu", type=float, default=None,
      help="with GPU actors: CPUs the run may use per actor, decoding included; Ray Data asks the autoscaler "
           f"for no more (default: {CPUS_PER_GPU:g}, a g5.xlarge)")
    a("--shard-size", type=int, default=10_000,
      help="rows per store shard with driver writes, the unit of resume (default: 10000)")
    a("--write-on", choices=("auto", "driver", "workers"), default="auto",
      help="who writes the shards: the driver (rows come back to it), or the embedding actors straight to the "
           "store (one shard per embedding block; the store must be object storage or a path every node shares); "
           "auto: workers when the store is s3://... and the cluster has several nodes (default: auto)")
    a("--with-images", action="store_true",
      help="also write pseudo-images of the embeddings under <split>/pseudo_images/ (e2i.cache.images)")
    add_image_options(parser)
    add_mirror_arguments(parser)
    a("--include-embeddings", action="store_true",
      help="with --with-images: mirror the embedding shards too (default: pseudo-images + manifest only)")
    a("--ray-address", help="Ray cluster to use (default: RAY_ADDRESS or a new local instance; 'local' forces one)")
    a("--num-cpus", type=int, help="CPUs of a new local Ray instance (default: all)")


def run(args: argparse.Namespace) -> int:
    """`e2i cache`: exit 0, or 1 when the store is complete but the mirror reported failed uploads."""
    from e2i.store.mirror import mirror_from_args

    mirror, hf_token = mirror_from_args(args)
    summary = cache_corpus(
        args.metadata, corpus=args.corpus, split=args.split, cache_dir=args.cache_dir, dataset=args.dataset,
        batch_size=args.batch_size, audio_encoder=args.audio_encoder, text_encoder=args.text_encoder,
        image_encoder=args.image_encoder, encoder_options=encoder_options_from_args(args),
        curate_captions=args.curate_captions, num_actors=args.num_actors, shard_size=args.shard_size,
        use_gpu=args.use_gpu, cpu_only=args.cpu_only, cpus_per_gpu=args.cpus_per_gpu, write_on=args.write_on,
        with_images=args.with_images,
        image_options=image_options(args), mirror=mirror, upload_every=args.upload_every,
        include_embeddings=args.include_embeddings, hf_token=hf_token,
        ray_init=lambda: _init_ray(args.ray_address, args.num_cpus))
    return 1 if summary["mirror"] and summary["mirror"]["failed"] else 0


def _init_ray(address: str | None, num_cpus: int | None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address and address != "local":
        ray.init(address=address)
    else:
        ray.init(address=address, num_cpus=num_cpus, include_dashboard=False)

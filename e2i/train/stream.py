"""Training from train splits larger than memory: the caption rows streamed (Ray Data, or read here).

Which path (:func:`plan_data`, on the driver, once per run, so every worker takes the same one):
``data.streaming.mode: auto`` (default) estimates the train split from its manifest (counts x dims x 4
bytes, items + captions; footers when there is no manifest) and loads it into memory as before when
the estimate fits ``data.streaming.memory_budget_gb`` (per worker: every in-memory worker holds the
whole split), else streams it; ``always`` / ``never`` force a path. Mixed stores (``data.train``) and
``data.train_subset`` are always loaded (streaming covers one train split).

What streams: the **caption rows** (item_id + embedding, the large side: ~5 captions per item, and
text embeddings are often the wider ones). The **items stay in memory** on every worker (read once,
as ``load_split`` reads them); the val split too, unless it exceeds the budget as well (then it is read
in chunks from disk every epoch: :func:`e2i.evaluate.chunked.val_split`). A caption's positive is
``item_emb[row of its item_id]`` and the ids given to the loss are those item rows, exactly as in
memory: captions of one item in a batch are positives of each other (multi-positive). If the items
alone exceed the budget they are still loaded (the plan says so; streaming items is not done).

The stream: the manifest's caption shards' row groups (~32 MiB each), in a seeded order that changes
every pass, read with the fast page copy (:class:`e2i.store.rowgroups.RowGroupReader`):
- a CPU loop in this process (1 worker, the default trainer) reads them itself, chunk by chunk
  (:class:`PassReads`): a Ray Data execution per chunk cost ~15x the read (measured, see there);
- Ray Train workers and a GPU loop in this process take the Ray Data ``Dataset`` of
  :func:`caption_dataset`: one block per row group (``randomize_block_order`` on the row-group list,
  which is tiny), read by tasks (``map_batches``, 0 CPUs reserved, at most ``READ_TASKS`` at once, so
  they never wait for CPUs that the train workers hold) -> per-worker shards (Ray Train's
  ``streaming_split(equal=True)`` through ``get_dataset_shard``; the Dataset itself for a GPU loop).
Then whole blocks go into a shuffle pool of ``data.streaming.shuffle_rows`` rows
(:meth:`CaptionStream.pass_batches`, seeded per pass) -> batches of ``batch_size / world`` rows. Each
pass gives every caption once (the shards of a pass are disjoint; ``equal=True`` drops fewer than
``world`` rows, then the incomplete last batch is dropped as in memory), and the micro-batch ``g`` of
the run is batch ``g % n`` of pass ``g // n`` with the same ``n = global_batches(...)`` as in memory, so
epochs, steps and resume line up. Row order within a pass is bit-reproducible on the chunked path only
(elsewhere blocks arrive as read tasks finish).

``read_parquet`` was measured and not used here: its ListFiles task costs ~1.5 s per pass (Ray 2.60)
and it would list the directory instead of the manifest's committed shards. No ray at import.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from e2i.config import TrainConfig
from e2i.errors import ConfigError, StoreError
from e2i.store import SplitData
from e2i.store.fs import join, open_fs, read_json, shown_path
from e2i.store.reader import _read_kind, shard_list
from e2i.store.rowgroups import RowGroupReader, quiet_ray_data_logs, row_groups, split_size
from e2i.store.schema import MANIFEST
from e2i.stream_config import choose_path

READ_TASKS = 2  # concurrent read tasks per stream (0 CPUs each: reads are I/O and a memcpy)
COLUMNS = ["item_id", "embedding"]
_GB = 1e9


@dataclass(frozen=True)
class DataPlan:
    """The data path of a run, decided once on the driver; ``record()`` goes into metrics.json."""

    path: str  # "memory" | "stream"
    reason: str
    estimate_gb: float  # train split: items + captions, counts x dims x 4 bytes
    items_gb: float
    captions_gb: float
    budget_gb: float

    @property
    def streaming(self) -> bool:
        return self.path == "stream"

    def record(self) -> dict:
        return asdict(self)

    def line(self, reader: str = "with Ray Data") -> str:
        """The console line of the run; ``reader``: how the stream is read."""
        if not self.streaming:
            return f"train split in memory ({self.reason})"
        line = (f"train captions streamed {reader}, items in memory ({self.reason}; items "
                f"{self.items_gb:.3g} GB, captions {self.captions_gb:.3g} GB)")
        if self.items_gb > self.budget_gb:
            line += "; the items alone exceed the budget and are loaded anyway (items are not streamed)"
        return line


def train_split_path(cfg: TrainConfig) -> str:
    return f"{cfg.data.store.rstrip('/')}/{cfg.data.train_split}"


def plan_data(cfg: TrainConfig) -> DataPlan:
    """Memory or stream for ``cfg``'s train split (see the module docstring); ConfigError for
    ``mode: always`` with a mix or a subset."""
    st = cfg.data.streaming
    budget = st.memory_budget_gb
    if cfg.data.train or cfg.data.train_subset is not None:
        what = "data.train (a mix of stores)" if cfg.data.train else "data.train_subset"
        if st.mode == "always":
            raise ConfigError(f"data.streaming.mode: always: {what} is loaded in memory (streaming covers one "
                              "train split); use mode: auto or never")
        return DataPlan("memory", f"{what} is always loaded", 0.0, 0.0, 0.0, budget)
    size = split_size(train_split_path(cfg))
    items, caps = size.items_bytes / _GB, size.captions_bytes / _GB
    total = items + caps
    stream, reason = choose_path(st.mode, total, budget)
    return DataPlan("stream" if stream else "memory", reason, total, items, caps, budget)


# --------------------------------------------------------------------------------------------------
# The Ray Data side


def caption_dataset(path: str, seed: int, columns: list[str] | None = None):
    """The ``ray.data.Dataset`` of a split's caption rows (``columns``, default item_id + embedding),
    row groups in a new seeded order every execution (pass). Ray Data reads ahead while the loop trains:
    the source of Ray Train workers (``streaming_split``) and of a GPU loop in this process."""
    import ray.data

    groups = caption_groups(path)
    seed_cfg = ray.data.RandomSeedConfig(seed=seed, reseed_after_execution=True)
    return _read_groups(ray.data.from_items(groups, override_num_blocks=len(groups))
                        .randomize_block_order(seed=seed_cfg), columns)


def caption_groups(path: str) -> list[dict]:
    """The split's caption row groups ([{uri, group, rows}]); StoreError when there are none."""
    groups = row_groups(path)
    if not groups:
        raise StoreError(f"{path}: no caption rows to train on")
    return groups


def _read_groups(listing, columns: list[str] | None):
    """``listing`` (a Dataset of row-group rows {uri, group, rows}) -> the row groups' tables, read by
    at most ``READ_TASKS`` tasks of 0 CPUs."""
    import ray.data

    ds = listing.map_batches(RowGroupReader(columns or COLUMNS), batch_format="pyarrow", batch_size=None,
                             num_cpus=0, compute=ray.data.TaskPoolStrategy(size=READ_TASKS))
    ds.context.enable_progress_bars = False
    ds.context.print_on_execution_start = False
    return ds


class PassReads:
    """The source of a CPU loop in this process: each pass's row groups read by this process, in chunks.

    On CPU, torch's intra-op threads use every core; a read running beside them costs about twice its
    CPU time (one thread is preempted, the other waits for it at the op's barrier), and a Ray Data
    execution costs far more than the read itself here: measured on 2 cores, one pass of 70,000 x
    512-d captions (7 row groups) took 0.58-0.84 s wall (1.2-1.7 CPU-s) as Ray Data executions of
    read tasks, 0.04 s read here with the fast page copy (:class:`RowGroupReader`). So a pass's row
    groups (in a seeded order per pass) are cut into chunks of >= ``rows`` rows and each chunk is read
    whole, in order, before the loop trains on it: nothing reads while torch computes, a pass is
    reproducible, memory is one chunk (``shuffle_rows`` + up to one row group). Ray Data is where it
    brings something: per-worker shards of Ray Train workers (``streaming_split``), and reading ahead
    on CPUs of their own while a GPU computes (:func:`caption_dataset`).
    """

    def __init__(self, path: str, seed: int, columns: list[str] | None = None) -> None:
        self.path, self.seed = path, seed
        self.groups = caption_groups(path)
        self.reader = RowGroupReader(columns or COLUMNS)

    def chunks(self, p: int, rows: int) -> list[list[dict]]:
        """Pass ``p``'s row groups, permuted (seeded by pass), in consecutive chunks of >= ``rows`` rows."""
        order = np.random.default_rng((self.seed * 104729 + p) % 2**32).permutation(len(self.groups))
        chunks, chunk, n = [], [], 0
        for i in order:
            chunk.append(self.groups[int(i)])
            n += self.groups[int(i)]["rows"]
            if n >= rows:
                chunks, chunk, n = chunks + [chunk], [], 0
        return chunks + [chunk] if chunk else chunks

    def read(self, chunk: list[dict]) -> list[pa.Table]:
        """One chunk's row groups, read whole, in chunk order."""
        return [self.reader.read(g["uri"], g["group"]) for g in chunk]


def ensure_ray() -> None:
    """A local Ray for the in-process path (reading tasks); a running one is used as it is."""
    import ray

    if not ray.is_initialized():
        ray.init(configure_logging=False, log_to_driver=False, include_dashboard=False)


# --------------------------------------------------------------------------------------------------
# The worker side


def load_items(path: str, caption_dim: int) -> SplitData:
    """The items of a split (ids, embeddings), checked as ``load_split`` checks them, with no captions."""
    fs, root = open_fs(path)
    manifest = read_json(fs, join(root, MANIFEST), shown_path(path, MANIFEST))
    shards = shard_list(fs, root, manifest, "items", path)
    if not shards:
        raise StoreError(f"{shown_path(path, 'items')}: no parquet shards")
    items = _read_kind(fs, root, path, "items", shards, ())
    return SplitData(path=path, item_ids=items.ids, item_emb=items.emb, caption_ids=np.empty(0, object),
                     caption_item=np.empty(0, np.int64), caption_emb=np.empty((0, caption_dim), np.float32),
                     manifest=manifest)


class CaptionStream:
    """This worker's micro-batches of the streamed train captions: (item rows (B,), caption embeddings
    (B, Dc)) on ``device``, pass after pass, from a Ray Data ``Dataset`` or a ``DataIterator`` shard."""

    def __init__(self, source, cfg: TrainConfig, *, world: int, device: torch.device) -> None:
        self.source, self.cfg, self.world, self.device = source, cfg, world, device
        path = train_split_path(cfg)
        size = split_size(path)
        self.num_captions = size.captions
        self.items = load_items(path, size.caption_dim)
        self.item_ids = pa.array(self.items.item_ids.tolist(), pa.string())  # item row = position
        self.passes = 0  # passes started (for tests and logs)
        quiet_ray_data_logs()

    def micro_batches(self, start: int, n_batches: int, local: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """From micro-batch ``start`` of the run on: batch ``start % n_batches`` of pass ``start // n_batches``."""
        p, skip = divmod(start, n_batches)
        while True:
            seen = 0
            for batch in self.pass_batches(p, local):
                seen += 1
                if skip < seen <= n_batches:
                    yield self.tensors(batch)
            if seen < n_batches:
                raise RuntimeError(f"pass {p} of the train captions gave {seen} batches of {local} rows on this "
                                   f"worker, {n_batches} expected (is the store changing under the run?)")
            p, skip = p + 1, 0

    def pass_batches(self, p: int, local: int) -> Iterator[dict[str, np.ndarray]]:
        """The batches of ``local`` rows of pass ``p``: {"row": item rows (B,), "embedding": (B, Dc), and the
        source's other columns (B,)}.

        A block-level shuffle pool: whole blocks (one row group each, in the pass's seeded order) come
        from Ray Data, or from :class:`PassReads` a chunk of them at a time, and each is converted once
        (:meth:`block_columns`: item-id lookup); once the pool holds ``shuffle_rows`` rows they are permuted (seeded by pass) and cut into
        batches, and the fewer than ``local`` rows left over wait for the next cut. At the end of the pass
        the pool is cut the same way and its incomplete last batch dropped, as in memory. Per batch this
        costs one fancy-index copy, as the in-memory path; Ray Data's own local shuffle buffer (a
        concatenation and an Arrow-to-numpy conversion per batch) measured ~0.2 CPU-s more per pass of
        70,000 x 512-d captions, taken from torch's threads on 2 cores (BENCHMARKS.md).
        """
        self.passes += 1
        rng = np.random.default_rng((self.cfg.seed * 7919 + p) % 2**32)
        shuffle = max(self.cfg.data.streaming.shuffle_rows, local)
        pool: list[dict[str, np.ndarray]] = []
        pooled = 0
        for tables in self._bursts(p, shuffle):
            for table in tables:
                if not len(table):
                    continue
                pool.append(self.block_columns(table))
                pooled += len(table)
                if pooled >= shuffle:
                    pool = yield from _cut(pool, local, rng)
                    pooled = sum(len(part["row"]) for part in pool)
        yield from _cut(pool, local, rng)  # the rest of the pass; fewer than `local` rows are dropped

    def _bursts(self, p: int, shuffle: int) -> Iterator[list[pa.Table]]:
        """Pass ``p``'s blocks: whole chunks of >= ``shuffle`` rows read here at once (:class:`PassReads`),
        or one block at a time as Ray Data delivers them (reading ahead)."""
        if isinstance(self.source, PassReads):
            for chunk in self.source.chunks(p, shuffle):
                yield self.source.read(chunk)
            return
        for table in self.source.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1):
            yield [table]

    def block_columns(self, table: pa.Table) -> dict[str, np.ndarray]:
        """One block as numpy columns: "row" (item rows, (n,) int64), "embedding" ((n, Dc) float32, a
        read-only view of the block) and the other columns as (n,) arrays; item ids checked once per block."""
        ids = table.column("item_id")
        found = pc.index_in(ids, value_set=self.item_ids)  # (n,) item row = positive id; null = unknown
        if found.null_count:
            bad = ids.filter(pc.is_null(found))[0].as_py()
            raise StoreError(f"{train_split_path(self.cfg)}: a caption points at missing item {bad!r}")
        # float32 and finite: RowGroupReader checked it (a bad value is a StoreError naming its caption)
        emb = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(len(table), -1)
        out = {"row": found.to_numpy().astype(np.int64), "embedding": emb}
        for name in table.column_names:
            if name != "embedding":
                out[name] = table.column(name).to_numpy(zero_copy_only=False)
        return out

    def tensors(self, batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """(item rows (B,) int64, caption embeddings (B, Dc) float32) of one batch, on the device."""
        return torch.from_numpy(batch["row"]).to(self.device), torch.from_numpy(batch["embedding"]).to(self.device)


def _cut(pool: list[dict[str, np.ndarray]], local: int, rng: np.random.Generator):
    """Yield the pool's rows permuted in batches of ``local`` (fancy-index copies); return the rest as a
    new pool (fewer than ``local`` rows, copied out of the blocks so they can be released)."""
    if not pool:
        return []
    cols = {k: np.concatenate([part[k] for part in pool]) if len(pool) > 1 else pool[0][k] for k in pool[0]}
    perm = rng.permutation(len(cols["row"]))  # (N,)
    n = len(perm) // local
    for b in range(n):
        rows = perm[b * local:(b + 1) * local]  # (local,)
        yield {k: v[rows] for k, v in cols.items()}
    rest = perm[n * local:]
    return [{k: v[rest] for k, v in cols.items()}] if len(rest) else []

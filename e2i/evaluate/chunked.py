"""Evaluation of splits larger than memory: embeddings read from disk in chunks, projected at once.

Which path (:func:`plan_evaluation`, like training's :func:`e2i.train.stream.plan_data`, with the same
``data.streaming`` knobs): ``auto`` loads the split into memory as before when its raw estimate
(manifest counts x dims x 4 bytes, items + captions: :func:`e2i.store.rowgroups.split_size`) fits
``memory_budget_gb``, else reads it in chunks; ``always`` / ``never`` force a path.

The chunked path (:func:`project_split`): ids, caption -> item rows, text and item columns are read
as :func:`e2i.store.load_split` reads them but without the embeddings (``embeddings=False``); then
each kind's embeddings come row group by row group (:func:`e2i.store.rowgroups.embedding_blocks`,
the fast page copy) in blocks of ``EVAL_CHUNK`` rows, each projected through the trained head on
``device`` right away. Only the projected embeddings are held: (N + M) x output_dim x 4 bytes (e.g.
256-d instead of 4,096-d raw), plus one raw block and one row group. The blocks are the same rows
:func:`e2i.train.loop.embed_split` projects at a time in memory, so the projections are bit for bit
the in-memory ones, and the ranking and metrics (:mod:`e2i.evaluate.ranking`, which already scores
captions in chunks) give identical numbers.

The val split of a streamed training run decides the same way every run (:func:`val_split`) and is
then read and projected every epoch (:class:`DiskSplit` stands where the in-memory tensors stand in
``e2i.train.loop.validate``).

If even the projected embeddings exceed the budget, :func:`plan_evaluation` raises a one-line
ConfigError naming the split and the sizes: exact ranks need every projected caption against every
projected item (item -> text ranks a caption list spread over the whole split), and a multi-pass
ranking over disk is not implemented. No ray here: the reads are plain pyarrow in this process.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from e2i.errors import ConfigError, StoreError
from e2i.store import SplitData, load_split
from e2i.store.rowgroups import SplitSize, embedding_blocks, split_size
from e2i.stream_config import StreamingConfig, choose_path
from e2i.train.loop import EVAL_CHUNK

_GB = 1e9


@dataclass(frozen=True)
class EvalPlan:
    """The data path of one evaluation; ``record()`` goes into the results JSON and metrics.json."""

    split: str
    path: str  # "memory" | "chunks"
    reason: str
    estimate_gb: float  # raw embeddings: items + captions, counts x dims x 4 bytes
    projected_gb: float  # what the chunked path holds: (items + captions) x output_dim x 4 bytes
    budget_gb: float
    size: SplitSize

    @property
    def chunked(self) -> bool:
        return self.path == "chunks"

    def record(self) -> dict:
        out = asdict(self)
        del out["size"]
        return out

    def line(self) -> str:
        """The console line of the evaluation."""
        if not self.chunked:
            return f"{self.split} split evaluated in memory ({self.reason})"
        return (f"{self.split} split evaluated in chunks from disk ({self.reason}; projected embeddings "
                f"{self.projected_gb:.3g} GB held)")


def plan_evaluation(split_path: str, split: str, streaming: StreamingConfig, output_dim: int, *,
                    refuse: bool = True) -> EvalPlan:
    """Memory or chunks for evaluating ``split_path`` (module docstring); ConfigError when the chunked
    path is chosen and even the projected embeddings exceed ``streaming.memory_budget_gb``, or with
    ``refuse=False`` (the val split of a training run) the memory path, saying so in its reason."""
    size = split_size(split_path)
    raw = (size.items_bytes + size.captions_bytes) / _GB
    projected = (size.items + size.captions) * output_dim * 4 / _GB
    budget = streaming.memory_budget_gb
    chunked, reason = choose_path(streaming.mode, raw, budget)
    if chunked and projected > budget and not refuse:
        return EvalPlan(split, "memory", f"{reason}; even projected ({projected:.3g} GB) it exceeds the budget: "
                        "loaded anyway", raw, projected, budget, size)
    if chunked and projected > budget:
        raise ConfigError(f"{split_path}: the {split} split does not fit data.streaming.memory_budget_gb {budget:g} "
                          f"even projected ({size.items} items + {size.captions} captions x {output_dim} dims = "
                          f"{projected:.3g} GB; raw {raw:.3g} GB): raise the budget or evaluate a smaller split")
    return EvalPlan(split, "chunks" if chunked else "memory", reason, raw, projected, budget, size)


class DiskSplit:
    """A split whose embeddings stay on disk: ``data`` (a SplitData without embeddings: (N, 0) / (M, 0)
    arrays, everything else as ``load_split`` gives it), ``caption_item`` (M,) int64 on ``device``, and
    :meth:`embed`, which reads and projects the embeddings on every call (the val split of a training
    run, every epoch; it stands where :class:`e2i.train.loop.SplitTensors` stands in ``validate``)."""

    def __init__(self, split_path: str, size: SplitSize, *, with_text: bool = False,
                 device: torch.device | None = None, rows: int = EVAL_CHUNK) -> None:
        self.path, self.size, self.rows = split_path, size, rows
        self.device = device or torch.device("cpu")
        self.data = load_split(split_path, with_text=with_text, embeddings=False)
        self.caption_item = torch.from_numpy(self.data.caption_item).to(self.device)  # (M,)

    @property
    def num_captions(self) -> int:
        return self.data.num_captions

    @torch.no_grad()
    def embed(self, model) -> tuple[torch.Tensor, torch.Tensor]:
        """(item_z (N, D), caption_z (M, D)) float32 on the device: blocks of ``rows`` raw rows read from
        disk and projected by ``model`` in eval mode, one block at a time."""
        model.eval()
        return (_project(model.encode_items, self.path, "items", self.size.item_dim, self.data.num_items,
                         self.device, self.rows),
                _project(model.encode_captions, self.path, "captions", self.size.caption_dim, self.num_captions,
                         self.device, self.rows))


def project_split(model, split_path: str, size: SplitSize, *, with_text: bool = True,
                  device: torch.device | None = None, rows: int = EVAL_CHUNK) -> tuple[SplitData, torch.Tensor, torch.Tensor]:
    """(split without embeddings, item_z (N, D), caption_z (M, D)) with the embeddings read from disk in
    blocks of ``rows`` and projected by ``model`` (eval mode, float32 on ``device``, default CPU).

    ``SplitData.item_emb`` / ``caption_emb`` are (N, 0) / (M, 0): everything else (ids, caption_item,
    text, item columns) is there for relevance lists, labels, top-k tables and the report.
    """
    split = DiskSplit(split_path, size, with_text=with_text, device=device, rows=rows)
    return (split.data, *split.embed(model))


def val_plan(cfg) -> EvalPlan:
    """The val split's path on a streamed training run (recorded as ``val_data`` in metrics.json)."""
    path = f"{cfg.data.store.rstrip('/')}/{cfg.data.val_split}"
    return plan_evaluation(path, cfg.data.val_split, cfg.data.streaming, cfg.model.output_dim, refuse=False)


def val_split(cfg, device: torch.device, *, announce: bool = True):
    """(SplitData, what ``validate`` takes) of ``cfg``'s val split on a streamed training run: in memory
    (a SplitTensors) when it fits ``data.streaming``, else a :class:`DiskSplit` read every epoch; a val
    split whose projected embeddings exceed the budget too is loaded anyway (not refused: it is the
    split the run selects its epochs on). ``announce``: print the path's line."""
    from e2i.train.loop import SplitTensors

    plan = val_plan(cfg)
    path = f"{cfg.data.store.rstrip('/')}/{cfg.data.val_split}"
    if announce:
        print(f"[{cfg.name}] {plan.line()}", flush=True)
    if plan.chunked:
        split = DiskSplit(path, plan.size, device=device)
        return split.data, split
    data = load_split(path, with_text=False)
    return data, SplitTensors(data, device)


def _project(encode, split_path: str, kind: str, dim: int, n: int, device: torch.device, rows: int) -> torch.Tensor:
    """(n, output_dim) float32: ``encode`` of every block of ``kind``'s raw embeddings, in row order."""
    out: torch.Tensor | None = None  # allocated from the first block's output width
    row = 0
    for block in embedding_blocks(split_path, kind, dim, rows):  # (<= rows, dim) view of a reused buffer
        z = encode(torch.from_numpy(block).to(device)).float()  # (b, output_dim)
        if out is None:
            out = torch.empty((n, z.shape[1]), dtype=torch.float32, device=device)
        out[row:row + len(z)] = z
        row += len(z)
    if row != n:
        raise StoreError(f"{split_path}: read {row} {kind} embeddings, the split lists {n} (is it being rewritten?)")
    return out if out is not None else torch.empty((0, 0), device=device)

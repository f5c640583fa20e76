"""Contrastive losses: reference formulas written out as loops, symmetry, gradients, multi-positive
masks from item ids, the FIFO queue, and real 2-process (gloo) data-parallel equivalence."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.nn.functional as F

from e2i.config import LossConfig
from e2i.errors import ConfigError
from e2i.model.losses import (
    LOSSES,
    QueueInfoNCELoss,
    SigmoidInfoNCELoss,
    SoftmaxInfoNCELoss,
    build_loss,
    sigmoid_loss,
    softmax_loss,
)

D = 8


def _batch(b: int, ids: list[int] | None = None, seed: int = 0, d: int = D):
    g = torch.Generator().manual_seed(seed)
    item_z = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    cap_z = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    ids_t = torch.tensor(ids if ids is not None else list(range(b)), dtype=torch.long)
    return item_z, cap_z, ids_t


# --------------------------------------------------------------------------------------------------
# Reference formulas, written out with explicit loops


def ref_sigmoid(x, y, ids, t, b):
    n, total = len(ids), 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if ids[i] == ids[j] else -1.0
            logit = t * float(x[i] @ y[j]) + b
            total += -math.log(1.0 / (1.0 + math.exp(-z * logit)))
    return total / n


def ref_softmax(x, y, ids, t):
    """-1/2 (mean over positive pairs of log p(item i | caption j) + of log p(caption j | item i))."""
    n = len(ids)
    s = [[t * float(x[i] @ y[j]) for j in range(n)] for i in range(n)]
    t2i, i2t = [], []
    for i in range(n):
        for j in range(n):
            if ids[i] != ids[j]:
                continue
            t2i.append(s[i][j] - math.log(sum(math.exp(s[k][j]) for k in range(n))))  # over items
            i2t.append(s[i][j] - math.log(sum(math.exp(s[i][k]) for k in range(n))))  # over captions
    return -0.5 * (sum(t2i) / len(t2i) + sum(i2t) / len(i2t))


def ref_queue(x, y, ids, t, qx, qy, qids):
    """ref_softmax with queued items/captions appended as candidates, minus the query's own item."""
    n = len(ids)
    t2i, i2t = [], []
    for i in range(n):
        for j in range(n):
            if ids[i] != ids[j]:
                continue
            # caption j queries items: batch items + queued items of other ids
            cands = [t * float(x[k] @ y[j]) for k in range(n)]
            cands += [t * float(qx[k] @ y[j]) for k in range(len(qids)) if qids[k] != ids[j]]
            t2i.append(t * float(x[i] @ y[j]) - math.log(sum(math.exp(c) for c in cands)))
            # item i queries captions: batch captions + queued captions of other ids
            cands = [t * float(x[i] @ y[k]) for k in range(n)]
            cands += [t * float(x[i] @ qy[k]) for k in range(len(qids)) if qids[k] != ids[i]]
            i2t.append(t * float(x[i] @ y[j]) - math.log(sum(math.exp(c) for c in cands)))
    return -0.5 * (sum(t2i) / len(t2i) + sum(i2t) / len(i2t))


IDS_CASES = [list(range(6)), [0, 1, 1, 2, 3, 3], [4, 4, 4, 7, 9, 4]]


@pytest.mark.parametrize("ids", IDS_CASES)
def test_sigmoid_matches_reference(ids):
    x, y, ids_t = _batch(len(ids), ids)
    t, b = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-10.0, dtype=torch.float64)
    loss = SigmoidInfoNCELoss()(x, y, ids_t, t, b)
    assert loss.item() == pytest.approx(ref_sigmoid(x, y, ids, 10.0, -10.0), rel=1e-10)
    no_bias = SigmoidInfoNCELoss()(x, y, ids_t, t)  # logit_bias=None means no bias
    assert no_bias.item() == pytest.approx(ref_sigmoid(x, y, ids, 10.0, 0.0), rel=1e-10)


@pytest.mark.parametrize("ids", IDS_CASES)
def test_softmax_matches_reference(ids):
    x, y, ids_t = _batch(len(ids), ids)
    loss = SoftmaxInfoNCELoss()(x, y, ids_t, torch.tensor(14.0, dtype=torch.float64))
    assert loss.item() == pytest.approx(ref_softmax(x, y, ids, 14.0), rel=1e-10)


def test_softmax_with_unique_ids_is_clip_loss():
    x, y, ids = _batch(7)
    logits = 20.0 * x @ y.T
    labels = torch.arange(7)
    clip = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    torch.testing.assert_close(softmax_loss(x, y, ids, torch.tensor(20.0)), clip)


def test_duplicated_ids_change_sigmoid_loss_exactly_on_the_flipped_labels():
    """Giving rows 1 and 2 the same id flips the labels of pairs (1,2) and (2,1) from -1 to +1."""
    x, y, _ = _batch(5)
    t, b = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64)
    unique = sigmoid_loss(x, y, torch.tensor([0, 1, 2, 3, 4]), t, b)
    shared = sigmoid_loss(x, y, torch.tensor([0, 1, 1, 3, 4]), t, b)
    logits = t * x @ y.T + b
    delta = sum(-F.logsigmoid(logits[i, j]) + F.logsigmoid(-logits[i, j]) for i, j in [(1, 2), (2, 1)]) / 5
    torch.testing.assert_close(shared - unique, delta)


def test_duplicated_ids_make_other_captions_positives_in_softmax():
    """Two rows of the same item with identical embeddings: treating them as positives (shared id)
    must give a lower loss than calling each other's caption a negative."""
    x, y, _ = _batch(4)
    x = torch.cat([x, x[:1]])  # row 4 repeats item 0 ...
    y = torch.cat([y, F.normalize(y[:1] + 0.01, dim=1)])  # ... with a near-identical caption
    t = torch.tensor(30.0, dtype=torch.float64)
    as_negative = softmax_loss(x, y, torch.tensor([0, 1, 2, 3, 4]), t)
    as_positive = softmax_loss(x, y, torch.tensor([0, 1, 2, 3, 0]), t)
    assert as_positive < as_negative
    assert as_positive.item() == pytest.approx(ref_softmax(x, y, [0, 1, 2, 3, 0], 30.0), rel=1e-10)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_are_symmetric_in_the_two_modalities(name):
    x, y, ids = _batch(6, [0, 1, 1, 2, 3, 3])
    x2, y2, ids2 = _batch(6, [5, 1, 6, 6, 7, 0], seed=1)
    t, b = torch.tensor(12.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)
    cfg = LossConfig(type=name, queue_size=8)
    forward, swapped = build_loss(cfg, dim=D).double(), build_loss(cfg, dim=D).double()
    for a, c, i in [(x, y, ids), (x2, y2, ids2)]:  # second step uses a non-empty queue
        torch.testing.assert_close(forward(a, c, i, t, b), swapped(c, a, i, t, b))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_reach_both_inputs_scale_and_bias(name):
    x, y, ids = _batch(6, [0, 1, 1, 2, 3, 3])
    x.requires_grad_(True)
    y.requires_grad_(True)
    log_scale = torch.tensor(math.log(10.0), dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-5.0, dtype=torch.float64, requires_grad=True)
    loss_fn = build_loss(LossConfig(type=name, queue_size=16), dim=D).double()
    if name == "queue_infonce":  # fill the queue first so its entries take part
        with torch.no_grad():
            loss_fn(*_batch(6, [7, 8, 9, 10, 11, 12], seed=3), log_scale.exp())
    loss = loss_fn(x, y, ids, log_scale.exp(), bias)
    loss.backward()
    assert x.grad.abs().sum() > 0 and y.grad.abs().sum() > 0
    assert log_scale.grad.abs() > 0
    if loss_fn.uses_bias:
        assert bias.grad.abs() > 0
    else:
        assert bias.grad is None  # softmax losses ignore the bias: freeze it when training


def test_queue_loss_matches_reference_and_equals_softmax_when_empty():
    loss_fn = QueueInfoNCELoss(dim=D, queue_size=10).double()
    t = torch.tensor(10.0, dtype=torch.float64)
    x1, y1, ids1 = _batch(4, [0, 1, 2, 2], seed=1)
    first = loss_fn(x1, y1, ids1, t)
    torch.testing.assert_close(first, softmax_loss(x1, y1, ids1, t))  # empty queue
    x2, y2, ids2 = _batch(5, [2, 3, 3, 4, 5], seed=2)  # id 2 is in the queue: never a negative
    second = loss_fn(x2, y2, ids2, t)
    expected = ref_queue(x2, y2, ids2.tolist(), 10.0, x1, y1, ids1.tolist())
    assert second.item() == pytest.approx(expected, rel=1e-10)
    assert second > softmax_loss(x2, y2, ids2, t)  # extra negatives make the task harder


def test_queue_never_uses_own_item_as_negative():
    """Queue entries of the query's own item are masked: a queue holding only copies of the batch's
    (single) item changes nothing, although those copies would be the hardest negatives."""
    loss_fn = QueueInfoNCELoss(dim=D, queue_size=6).double()
    x, y, ids = _batch(3, [3, 3, 3])  # three captions of item 3
    t = torch.tensor(10.0, dtype=torch.float64)
    loss_fn(x, y, ids, t)
    loss_fn(x, y, ids, t)  # queue now full of item 3 only
    assert int(loss_fn.count) == 6 and set(loss_fn.queue_ids.tolist()) == {3}
    torch.testing.assert_close(loss_fn(x, y, ids, t), softmax_loss(x, y, ids, t))
    # the same queue entries under another id are negatives and raise the loss
    loss_fn.queue_ids.fill_(4)
    assert loss_fn(x, y, ids, t) > softmax_loss(x, y, ids, t) + 0.1


def test_queue_is_fifo_and_wraps_on_short_and_long_batches():
    loss_fn = QueueInfoNCELoss(dim=D, queue_size=5).double()
    t = torch.tensor(5.0, dtype=torch.float64)
    x, y, _ = _batch(8)
    loss_fn(x[:3], y[:3], torch.tensor([10, 11, 12]), t)
    assert loss_fn.queue_ids.tolist() == [10, 11, 12, -1, -1] and int(loss_fn.count) == 3
    loss_fn(x[3:6], y[3:6], torch.tensor([13, 14, 15]), t)  # wraps: oldest (10) overwritten
    assert loss_fn.queue_ids.tolist() == [15, 11, 12, 13, 14] and int(loss_fn.ptr) == 1
    assert int(loss_fn.count) == 5
    torch.testing.assert_close(loss_fn.queue_captions[0], y[5])
    torch.testing.assert_close(loss_fn.queue_items[3], x[3])
    loss_fn(x[6:7], y[6:7], torch.tensor([16]), t)  # batch of one
    assert loss_fn.queue_ids.tolist() == [15, 16, 12, 13, 14]
    loss_fn(x, y, torch.arange(20, 28), t)  # longer than the queue: keeps its last 5 rows
    assert sorted(loss_fn.queue_ids.tolist()) == [23, 24, 25, 26, 27] and int(loss_fn.count) == 5

    loss_fn.eval()  # evaluation never enqueues
    before = loss_fn.queue_ids.clone()
    loss_fn(x[:2], y[:2], torch.tensor([40, 41]), t)
    assert torch.equal(before, loss_fn.queue_ids)
    loss_fn.reset()
    assert int(loss_fn.count) == 0 and int(loss_fn.ptr) == 0


def test_queue_state_is_buffers():
    loss_fn = QueueInfoNCELoss(dim=4, queue_size=3)
    assert set(loss_fn.state_dict()) == {"queue_items", "queue_captions", "queue_ids", "ptr", "count"}
    assert loss_fn.to(torch.float64).queue_items.dtype == torch.float64
    assert list(loss_fn.parameters()) == []


def test_build_loss_registry():
    assert isinstance(build_loss(LossConfig(type="sigmoid_infonce"), dim=4), SigmoidInfoNCELoss)
    queue = build_loss(LossConfig(type="queue_infonce", queue_size=32), dim=4, rank=1, world_size=2)
    assert queue.queue_items.shape == (32, 4) and (queue.rank, queue.world_size) == (1, 2)
    with pytest.raises(ConfigError, match="sigmoid_infonce, softmax_infonce, queue_infonce"):
        build_loss(LossConfig(type="triplet"), dim=4)


# --------------------------------------------------------------------------------------------------
# Data parallel: 2 real processes (gloo) vs one process on the concatenated batch

GLOBAL_B, DIST_D = 64, 16
GLOBAL_IDS = [i // 2 for i in range(GLOBAL_B)]  # every item twice: positives straddle the workers


def _dist_inputs(step: int):
    g = torch.Generator().manual_seed(100 + step)
    x = F.normalize(torch.randn(GLOBAL_B, DIST_D, generator=g, dtype=torch.float64), dim=1)
    y = F.normalize(torch.randn(GLOBAL_B, DIST_D, generator=g, dtype=torch.float64), dim=1)
    ids = torch.tensor(GLOBAL_IDS, dtype=torch.long)
    perm = torch.randperm(GLOBAL_B, generator=g)
    return x[perm], y[perm], ids[perm]


def _run_losses(bounds: list[int], rank: int, world_size: int) -> dict:
    """Two training steps of every loss on rows bounds[rank]:bounds[rank + 1] of the global batch."""
    out = {}
    for name in sorted(LOSSES):
        loss_fn = build_loss(
            LossConfig(type=name, queue_size=100), dim=DIST_D, rank=rank, world_size=world_size
        )
        loss_fn = loss_fn.double()
        for step in range(2):  # the second queue step sees the first global batch in the queue
            x, y, ids = _dist_inputs(step)
            lo, hi = bounds[rank], bounds[rank + 1]
            x, y = x[lo:hi].clone().requires_grad_(True), y[lo:hi].clone().requires_grad_(True)
            log_scale = torch.tensor(math.log(10.0), dtype=torch.float64, requires_grad=True)
            bias = torch.tensor(-5.0, dtype=torch.float64, requires_grad=True)
            loss = loss_fn(x, y, ids[lo:hi], log_scale.exp(), bias)
            loss.backward()
            out[(name, step)] = {
                "loss": loss.detach(),
                "x_grad": x.grad,
                "y_grad": y.grad,
                "scale_grad": log_scale.grad,
                "bias_grad": bias.grad if bias.grad is not None else torch.zeros(()),
            }
    return out


SPLITS = {"2x32": [0, 32, 64], "40+24": [0, 40, 64]}  # row bounds of each worker's local batch


def _dist_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        results = {split: _run_losses(bounds, rank, world_size) for split, bounds in SPLITS.items()}
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_workers_equal_one_worker_on_the_global_batch(tmp_path):
    """2 workers x 32 rows (and an uneven 40 + 24 split) give the single-process loss on 64 rows.

    Every worker computes the global loss, and the all-gather backward sums all workers' gradients,
    so input gradients are world_size x the single-process ones (DDP's averaging of parameter
    gradients divides this out); scale/bias gradients equal the single-process ones on each worker
    (DDP's average of identical values). Real processes, real gloo collectives on 127.0.0.1."""
    import torch.multiprocessing as mp

    world_size = 2
    mp.spawn(_dist_worker, args=(world_size, _free_port(), str(tmp_path)), nprocs=world_size, join=True)
    single = _run_losses([0, GLOBAL_B], 0, 1)
    workers = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world_size)]
    for split, bounds in SPLITS.items():
        for key, ref in single.items():
            for rank, res in enumerate(workers):
                got, lo, hi, where = (
                    res[split][key],
                    bounds[rank],
                    bounds[rank + 1],
                    f"{split} {key} rank {rank}",
                )
                torch.testing.assert_close(got["loss"], ref["loss"], msg=f"{where}: loss")
                torch.testing.assert_close(
                    got["x_grad"] / world_size, ref["x_grad"][lo:hi], msg=f"{where}: x"
                )
                torch.testing.assert_close(
                    got["y_grad"] / world_size, ref["y_grad"][lo:hi], msg=f"{where}: y"
                )
                torch.testing.assert_close(got["scale_grad"], ref["scale_grad"], msg=f"{where}: scale")
                torch.testing.assert_close(got["bias_grad"], ref["bias_grad"], msg=f"{where}: bias")

"""e2i finetune: tiny random-weight PaSST + RoBERTa on a toy Clotho-layout corpus, CPU, real Ray Train."""

from __future__ import annotations

import itertools
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import TINY_PASST, tiny_roberta

from e2i import finetune as ft
from e2i.cli import main as cli_main
from e2i.errors import CheckpointError, ConfigError

ROOT = Path(__file__).resolve().parents[2]
SPLITS = {"development": 12, "validation": 8, "evaluation": 8}


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    from e2i.corpus.toy import make_toy_corpus

    root = tmp_path_factory.mktemp("clotho")
    for split, n in SPLITS.items():
        make_toy_corpus(root, n_items=n, split=split, seed=1)
    return str(root)


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    return tiny_roberta(tmp_path_factory.mktemp("roberta"))


def tiny_config(toy_root, text_dir, tmp_path, **over) -> ft.FinetuneConfig:
    base = dict(
        data_root=toy_root,
        text_model=text_dir,
        audio_options=dict(TINY_PASST),
        max_audio_seconds=1.0,
        batch_size=4,
        accumulate_grad_batches=1,
        projection_dim=16,
        hidden_dim=32,
        max_text_tokens=16,
        loader_workers=0,
        max_lr=2e-3,
        epochs=2,
        output_dir=str(tmp_path / "runs"),
        run_name="tiny",
        progress=False,
    )
    base.update(over)
    return ft.finetune_config_from_dict(base)


def cli_args(toy_root, text_dir, out, *extra) -> list[str]:
    opts = [a for k, v in TINY_PASST.items() for a in ("--audio-option", f"{k}={str(v).lower()}")]
    return [
        "finetune",
        "--data-root",
        toy_root,
        "--text-model",
        text_dir,
        *opts,
        "--max-audio-seconds",
        "1",
        "--batch-size",
        "4",
        "--accumulate-grad-batches",
        "1",
        "--projection-dim",
        "16",
        "--hidden-dim",
        "32",
        "--max-text-tokens",
        "16",
        "--loader-workers",
        "0",
        "--max-lr",
        "2e-3",
        "--warmup-epochs",
        "0.5",
        "--limit-train-batches",
        "3",
        "--output-dir",
        str(out),
        "--run-name",
        "tiny",
        "--no-progress",
        *extra,
    ]


# --------------------------------------------------------------------------------------------------
# Pieces (no Ray)


def test_warmup_then_cosine():
    lrs = [ft.warmup_cosine(s, 4, 20) for s in range(21)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0] and lrs[4] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:])) and lrs[20] == pytest.approx(0.0)
    assert ft.warmup_cosine(12, 4, 20) == pytest.approx(0.5)  # half way through the decay
    assert ft.warmup_cosine(0, 0, 10) == 1.0


def test_precision_falls_back_on_cpu():
    assert ft.resolve_precision("bf16-mixed", torch.device("cpu"))[0] == "32-true"
    assert "32-true on cpu" in ft.resolve_precision("16-mixed", torch.device("cpu"))[1]
    assert ft.resolve_precision("32", torch.device("cpu")) == ("32-true", None)


def test_crop_is_random_in_training_and_deterministic_in_evaluation():
    wave = np.arange(100, dtype=np.float32)
    torch.manual_seed(0)
    starts = {int(ft.crop_or_pad(wave, 10, random=True)[0]) for _ in range(30)}
    assert len(starts) > 5 and all(0 <= s <= 90 for s in starts)
    assert (ft.crop_or_pad(wave, 10, random=False) == wave[:10]).all()
    padded = ft.crop_or_pad(wave[:4], 10, random=True)
    assert padded.shape == (10,) and (padded[4:] == 0).all() and (padded[:4] == wave[:4]).all()


def test_data_pairs_and_clips(toy_root, text_dir, tmp_path):
    from transformers import AutoTokenizer

    cfg = tiny_config(toy_root, text_dir, tmp_path)
    items = ft.read_split(toy_root, "validation")
    train = ft.ClipDataset(items, max_seconds=1.0, train=True, pairs=True)
    evaluation = ft.ClipDataset(items, max_seconds=1.0, train=False, pairs=False)
    assert len(train) == 5 * len(items) and len(evaluation) == len(items)
    batch = next(iter(ft.make_loader(items, cfg, AutoTokenizer.from_pretrained(text_dir), train=False)))
    assert batch["audio"].shape == (4, 32000) and batch["audio"].dtype == torch.float32
    assert batch["input_ids"].shape[0] == 20 and batch["input_ids"].shape[1] <= 16
    assert batch["cap_item"].tolist() == [b for b in range(4) for _ in range(5)]
    assert batch["item"].tolist() == [0, 1, 2, 3]


def test_audio_windows_cover_long_inputs(toy_root, text_dir, tmp_path):
    module = ft.RetrievalModule(tiny_config(toy_root, text_dir, tmp_path, max_audio_seconds=12.0).to_dict())
    assert module.audio.window == 10 * 32000 and module.audio.dim == 32
    wave = torch.arange(12 * 32000, dtype=torch.float32)[None]  # (1, 12 s)
    w = module.audio.windows(wave)
    assert w.shape == (1, 2, 320000) and w[0, 0, 0] == 0 and w[0, 1, -1] == wave[0, -1]  # last ends at S
    assert module.audio.windows(wave[:, :64000]).shape == (1, 1, 64000)
    with torch.no_grad():
        assert module.audio(torch.randn(2, 3 * 32000)).shape == (2, 32)


@pytest.mark.slow
def test_tiny_model_learns_on_a_fixed_batch(toy_root, text_dir, tmp_path):
    """The multi-positive InfoNCE drops well below chance while PaSST + RoBERTa are trained end to end."""
    cfg = tiny_config(toy_root, text_dir, tmp_path)
    torch.manual_seed(0)
    module = ft.RetrievalModule(cfg.to_dict()).eval()  # eval: no dropout / mel augmentation, deterministic
    batch = next(
        iter(ft.make_loader(ft.read_split(toy_root, "development"), cfg, module.tokenizer, train=False))
    )
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for _ in range(30):
        loss = module.batch_loss(batch, *module.embed_batch(batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(20), abs=0.1)  # 4 clips x 5 captions, near-uniform at init
    assert min(losses[-5:]) < losses[0] - 0.5, losses
    grads = [p.grad for p in module.text.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)  # the text encoder is fine-tuned, not frozen


def test_export_and_reload_without_pickles(toy_root, text_dir, tmp_path):
    cfg = tiny_config(toy_root, text_dir, tmp_path)
    module = ft.RetrievalModule(cfg.to_dict()).eval()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ft.export_model(module, run_dir)
    again = ft.load_finetuned(run_dir)
    batch = next(
        iter(ft.make_loader(ft.read_split(toy_root, "evaluation"), cfg, again.tokenizer, train=False))
    )
    with torch.no_grad():
        for a, b in zip(module.embed_batch(batch), again.embed_batch(batch)):
            torch.testing.assert_close(a, b)
    with pytest.raises(CheckpointError, match="no finetune_config.json"):
        ft.load_finetuned(tmp_path)


def test_own_checkpoints_only_and_without_code(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    outside = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, outside)
    with pytest.raises(CheckpointError, match="not inside the run directory"):
        ft.load_own_checkpoint(outside, run_dir)
    evil = run_dir / "checkpoints" / "last.ckpt"
    evil.write_bytes(
        pickle.dumps(ft.FinetuneConfig(), protocol=2)
    )  # an arbitrary object: weights_only refuses it
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        ft.load_own_checkpoint(evil, run_dir)


def test_config_file_flags_and_errors(tmp_path):
    cfg = ft.load_finetune_config(ROOT / "configs" / "finetune.yaml")
    assert (cfg.batch_size, cfg.accumulate_grad_batches, cfg.max_audio_seconds, cfg.precision) == (
        6,
        6,
        12.0,
        "bf16-mixed",
    )
    assert (cfg.epochs, cfg.warmup_epochs, cfg.max_lr, cfg.grad_clip_norm) == (20, 1.0, 3e-6, 1.0)
    # the shipped YAML documents the built-in defaults (local paths resolved against the cwd at load)
    assert cfg == ft.resolve_finetune_paths(ft.FinetuneConfig())
    assert cfg.data_root == str(Path.cwd() / "data" / "CLOTHO_v2.1") and cfg.text_model == "roberta-large"
    bad = tmp_path / "bad.yaml"
    bad.write_text("batch_sise: 4\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: batch_sise: unknown key"):
        ft.load_finetune_config(bad)
    bad.write_text("max_lr: 0\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: max_lr: must be > 0"):
        ft.load_finetune_config(bad)
    from e2i.cli import build_parser

    args = build_parser("finetune").parse_args(
        [
            "finetune",
            "--config",
            str(ROOT / "configs" / "finetune.yaml"),
            "--batch-size",
            "2",
            "--no-use-gpu",
            "--audio-option",
            "pretrained=false",
            "--audio-option",
            "depth=1",
        ]
    )
    cfg = ft.config_from_args(args)
    assert (
        cfg.batch_size == 2
        and cfg.use_gpu is False
        and cfg.audio_options == {"pretrained": False, "depth": 1}
    )
    assert cfg.accumulate_grad_batches == 6  # from the file
    with pytest.raises(ConfigError, match="unknown key 'colour'"):
        ft.AudioTower("passt_s_swa_p16_128_ap476", {"colour": 1})


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit):
        cli_main(["finetune", "--help"])
    out = capsys.readouterr().out
    for flag in (
        "--batch-size",
        "--accumulate-grad-batches",
        "--max-audio-seconds",
        "--precision",
        "--epochs",
        "--warmup-epochs",
        "--max-lr",
        "--grad-clip-norm",
        "--audio-arch",
        "--text-model",
        "--projection-dim",
        "--hidden-dim",
        "--num-workers",
        "--use-gpu",
        "--output-dir",
        "--use-wandb",
        "--wandb-project",
        "--wandb-entity",
        "--run-name",
        "--seed",
        "--data-root",
        "--resume",
        "--audio-option",
        "--limit-train-batches",
    ):
        assert flag in out, flag
    assert "(default: 6)" in out and "(default: bf16-mixed)" in out and "(default: 3e-06)" in out


def test_loggers_tensorboard_and_wandb(toy_root, text_dir, tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    cfg = tiny_config(toy_root, text_dir, tmp_path, use_wandb=True, wandb_project="p", wandb_entity="team")
    tb, wb = ft._loggers(cfg, tmp_path)
    assert isinstance(tb, TensorBoardLogger) and Path(tb.log_dir) == tmp_path / "tensorboard"
    assert isinstance(wb, WandbLogger)  # W&B's project is wb.name; the run is named after the run dir
    init = wb._wandb_init
    assert (init["project"], init["entity"], init["name"]) == ("p", "team", "tiny")


def test_existing_run_needs_resume_and_resume_needs_a_run(toy_root, text_dir, tmp_path, capsys):
    cfg = tiny_config(toy_root, text_dir, tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        ft.fit(cfg)
    (cfg.run_dir / "checkpoints").mkdir(parents=True)
    (cfg.run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert cli_main(cli_args(toy_root, text_dir, tmp_path / "runs")) == 2
    assert "run exists; pass --resume" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# Ray Train


def _scalars(run_dir: Path, *tags: str) -> dict[str, list[tuple[int, float]]]:
    """Scalar series as a user sees them: one real `tensorboard --logdir` server, over HTTP; {tag: points}."""
    from servers import get_json, tensorboard, tensorboard_scalars

    with tensorboard(run_dir / "tensorboard") as url:
        listed = get_json(f"{url}/data/plugin/scalars/tags")
        return {tag: [point for run, run_tags in listed.items() if tag in run_tags
                      for point in tensorboard_scalars(url, run, tag)] for tag in tags}


@pytest.mark.slow
def test_two_worker_ddp_finetune_then_resume(ray_local, toy_root, text_dir, tmp_path, capsys):
    out = tmp_path / "runs"
    # 1) two Ray Train workers (DDP on CPU, gloo), 2 epochs x 3 steps; precision falls back to 32-true
    assert cli_main(cli_args(toy_root, text_dir, out, "--num-workers", "2", "--epochs", "2")) == 0
    assert "text->audio mAP@10" in capsys.readouterr().out
    run_dir = out / "tiny"
    ckpts = {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert {"last.ckpt", "best-val-loss.ckpt", "best-val-map.ckpt"} <= ckpts
    report = json.loads((run_dir / "evaluation_metrics.json").read_text())
    assert report["split"] == "evaluation" and report["num_items"] == 8 and report["num_captions"] == 40
    assert report["checkpoint"] == "checkpoints/best-val-map.ckpt" and report["trained"] == {
        "epoch": 2,
        "step": 6,
    }
    m = report["metrics"]
    assert 0 < m["text_to_item/mAP@10"] <= 1 and m["text_to_item/num_queries"] == 40
    assert len(m["text_to_item/mAP@10/ci95"]) == 2
    scalars = _scalars(run_dir, "lr", "val/mAP@10", "train/loss_epoch")
    lr = [v for _, v in sorted(scalars["lr"])]
    assert len(lr) == 6 and lr[0] < lr[1] and lr[-1] < max(lr)  # warmup, then cosine decay
    assert len(scalars["val/mAP@10"]) == 2 and scalars["train/loss_epoch"]
    module = ft.load_finetuned(run_dir)  # the exported best-mAP weights, reloaded without pickles
    assert module.cfg.num_workers == 2
    # 2) resume from last.ckpt for one more epoch, on one worker
    cfg = tiny_config(
        toy_root, text_dir, tmp_path, epochs=3, resume=True, limit_train_batches=3, warmup_epochs=0.5
    )
    report = ft.fit(cfg)
    assert report["trained"] == {"epoch": 3, "step": 6 + 3}  # continued from last.ckpt, not restarted
    assert len(_scalars(run_dir, "val/mAP@10")["val/mAP@10"]) == 3

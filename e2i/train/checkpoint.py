"""Training checkpoints without pickles: safetensors for every tensor, JSON for everything else.

A checkpoint is a directory::

    model.safetensors        the ContrastiveModel's state_dict (what evaluate / best_model use)
    train_state.safetensors  optimizer state flattened to ``optimizer.<param index>.<name>`` tensors and
                             the loss module's buffers as ``loss.<name>`` (e.g. the queue of queue_infonce)
    progress.json            epoch (completed), step (optimizer steps), best metric/epoch, epochs without
                             improvement, the metric history, the optimizer's param_groups
    config.json              the TrainConfig as a dict

:func:`checkpoint_due` is the loop's default of when to write one (best so far, every N epochs, the
last epoch) and :func:`report_epoch` writes it for one report call.

Nothing here unpickles: safetensors holds raw tensors only, and a legacy ``.pt`` weights file is read
with ``torch.load(weights_only=True)``, which refuses pickled code. Damaged files raise a one-line
:class:`~e2i.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from e2i.errors import CheckpointError, StoreWriteError

MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.safetensors"
PROGRESS_FILE = "progress.json"
CONFIG_FILE = "config.json"


def _tensors(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies (safetensors refuses views that share storage)."""
    return {f"{prefix}{k}": v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_weights(state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write a state_dict as safetensors atomically (tmp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(_tensors(state), str(tmp))
        os.replace(tmp, path)
    except (SafetensorError, OSError) as exc:  # issue 17: disk full -> one line naming the file, no tmp left
        tmp.unlink(missing_ok=True)
        raise _write_error(path, exc) from None


def _write_error(path: Path, exc: Exception) -> StoreWriteError:
    """A one-line StoreWriteError (exit 1) for a checkpoint file that could not be written. Safetensors
    reports I/O errors as ``SafetensorError('Error while serializing: I/O error: No space left on device
    (os error 28)')`` (not an OSError): keep the reason only."""
    if isinstance(exc, OSError) and exc.errno:
        reason = os.strerror(exc.errno)
    else:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        found = re.search(r"I/O error: (.*?)(?: \(os error \d+\))?$", text)
        reason = found.group(1) if found else text
    return StoreWriteError(f"{path}: cannot write the checkpoint ({reason})")


def _write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise _write_error(path, exc) from None


def _torch_load_reason(exc: Exception) -> str:
    """One line for a failed ``torch.load``: the global weights_only refused (torch's own text is a
    colourised page of advice on how to load the file anyway), else the error's first line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return f"unsupported global {refused.group(1)}"
    return text.splitlines()[0] if text else type(exc).__name__


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state_dict from ``*.safetensors`` or (legacy) ``*.pt``/``*.pth`` loaded with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix in (".pt", ".pth", ".bin"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
            raise CheckpointError(
                f"{path}: refused or unreadable torch file "
                f"(only plain tensors are loaded, weights_only=True): {_torch_load_reason(exc)}"
            ) from None
        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            raise CheckpointError(f"{path}: expected a dict of tensors (a state_dict)")
        return state
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a valid safetensors file (truncated or corrupt?): {reason}"
        ) from None


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state -> ({'optimizer.<idx>.<name>': tensor}, JSON meta with param_groups)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, []
    for idx, state in sd["state"].items():
        for name, value in state.items():
            key = f"optimizer.{idx}.{name}"
            if not torch.is_tensor(value):  # e.g. a python step counter in some optimizers
                scalars.append(key)
                value = torch.tensor(value)
            tensors[key] = value
    return _tensors(tensors), {"param_groups": sd["param_groups"], "python_scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    scalars = set(meta.get("python_scalars", []))
    for key, value in tensors.items():
        if not key.startswith("optimizer."):
            continue
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value.item() if key in scalars else value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: torch.nn.Module,
    progress: dict,
    config: dict,
) -> Path:
    """Write the four checkpoint files into ``directory`` (created); returns it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(model.state_dict(), directory / MODEL_FILE)
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    state = {**opt_tensors, **_tensors(loss_fn.state_dict(), "loss.")}
    save_weights(state, directory / STATE_FILE)
    _write_text(directory / PROGRESS_FILE, json.dumps({**progress, "optimizer": opt_meta}, indent=1))
    _write_text(directory / CONFIG_FILE, json.dumps(config, indent=1))
    return directory


def read_progress(directory: str | os.PathLike) -> dict:
    """progress.json of a checkpoint directory (CheckpointError if missing or not JSON)."""
    path = Path(directory) / PROGRESS_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (not an e2i training checkpoint)") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None


def load_checkpoint(
    directory: str | os.PathLike,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: torch.nn.Module | None = None,
) -> dict:
    """Restore model (+ optimizer, loss buffers) in place from ``directory``; returns progress.json."""
    directory = Path(directory)
    progress = read_progress(directory)
    load_into(model, load_weights(directory / MODEL_FILE), directory / MODEL_FILE)
    if optimizer is not None or loss_fn is not None:
        state = load_weights(directory / STATE_FILE)
        if optimizer is not None:
            optimizer.load_state_dict(_unflatten_optimizer(state, progress["optimizer"]))
        if loss_fn is not None:
            loss_state = {k[len("loss.") :]: v for k, v in state.items() if k.startswith("loss.")}
            load_into(loss_fn, loss_state, directory / STATE_FILE)
    return progress


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """load_state_dict(strict) with a one-line CheckpointError naming the first mismatch."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise CheckpointError(
            f"{path}: does not match the model ({what}; "
            f"{len(missing)} missing, {len(unexpected)} unexpected keys)"
        )
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise CheckpointError(
                f"{path}: {key} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(own[key].shape)} (config and checkpoint disagree)"
            )
    module.load_state_dict(state)


def checkpoint_due(cfg, epoch: int, improved: bool, last: bool) -> bool:
    """The default policy: the best epoch so far, every ``checkpoint.every_n_epochs``, the last one."""
    every = cfg.checkpoint.every_n_epochs
    return improved or last or (every > 0 and epoch % every == 0)


def report_epoch(report, metrics: dict, *, write: bool, model, optimizer, loss_fn, progress: dict,
                 config: dict) -> None:
    """``report(metrics, checkpoint_dir)``: with ``write`` a checkpoint in a temporary directory that
    lives for the call only, unless ``report`` returns True (it then owns the directory); else None."""
    if not write:
        report(metrics, None)
        return
    directory = tempfile.mkdtemp(prefix="e2i-ckpt-")
    owned = False
    try:
        save_checkpoint(directory, model=model, optimizer=optimizer, loss_fn=loss_fn, progress=progress,
                        config=config)
        owned = bool(report(metrics, directory))
    finally:
        if not owned:
            shutil.rmtree(directory, ignore_errors=True)

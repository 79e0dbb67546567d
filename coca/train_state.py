"""A training run's state on disk: the resumable checkpoint and the loss log.

The checkpoint holds everything that is not a pure function of (config, step): weights, AdamW's
moments, the step, the training seconds spent (for a time-budgeted schedule) and the RNG states.
It is written to a temporary file and renamed, so a crash mid-write leaves the previous one intact,
and read back with torch.load(weights_only=True).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "train_log.jsonl"
CONFIG_FILE = "train_config.json"
CHECKPOINT_FORMAT = 1
# Changing these mid-run would change the schedule or the data, so resume refuses it.
SCHEDULE_FIELDS = ("model", "init", "data", "steps", "batch_size", "optim", "seed")


class ResumeError(Exception):
    """The run cannot be resumed (no checkpoint, or a config that would change its schedule)."""


@dataclass(frozen=True)
class RunState:
    step: int  # optimizer steps finished
    train_seconds: float  # wall-clock seconds spent in steps so far (all sessions)
    step_budget_s: float | None = None  # seconds the steps may take in all (time-budgeted runs)


def config_record(config: Any) -> dict[str, Any]:
    """A JSON-able dict of a (nested) config dataclass; paths become strings."""
    from dataclasses import asdict

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    record = plain(asdict(config))
    record["data_kind"] = type(config.data).__name__
    return record


def save_checkpoint(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: RunState,
    config: dict[str, Any],
    extra: dict[str, torch.nn.Module] | None = None,
) -> Path:
    """Write run_dir/checkpoint.pt atomically; `extra` are training-only modules (probe heads)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "step": state.step,
        "train_seconds": state.train_seconds,
        "step_budget_s": -1.0 if state.step_budget_s is None else state.step_budget_s,
        "config": json.dumps(config, sort_keys=True),
        "model": model.state_dict(),
        "extra": {name: module.state_dict() for name, module in (extra or {}).items()},
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    path = run_dir / CHECKPOINT_FILE
    partial = path.with_suffix(".pt.partial")
    torch.save(payload, partial)
    os.replace(partial, path)
    logger.info("checkpoint at step %d -> %s", state.step, path)
    return path


def _schedule_view(config: dict[str, Any]) -> dict[str, Any]:
    return {name: config.get(name) for name in (*SCHEDULE_FIELDS, "data_kind")}


def load_checkpoint(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: dict[str, Any],
    extra: dict[str, torch.nn.Module] | None = None,
) -> RunState:
    """Restore model, optimizer and RNG states from run_dir/checkpoint.pt; return where to go on."""
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise ResumeError(f"nothing to resume: {path} does not exist; run without --resume")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zipfile/pickle/torch raise many types for a damaged file
        raise ResumeError(f"cannot read {path} ({exc}); it may be truncated") from exc
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ResumeError(f"{path} has an unknown format {payload.get('format')!r}")
    saved = _schedule_view(json.loads(payload["config"]))
    wanted = _schedule_view(config)
    changed = sorted(k for k in saved if saved[k] != wanted[k])
    if changed:
        raise ResumeError(
            f"cannot resume {run_dir}: {', '.join(changed)} differ from the checkpoint's run "
            "(they would change its schedule); use the same flags, or a new --output"
        )
    model.load_state_dict(payload["model"])
    for name, module in (extra or {}).items():
        if name not in payload.get("extra", {}):
            raise ResumeError(f"cannot resume {run_dir}: its checkpoint has no {name} weights")
        module.load_state_dict(payload["extra"][name])
    optimizer.load_state_dict(payload["optimizer"])
    torch.set_rng_state(payload["torch_rng"])
    if payload["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    budget = float(payload["step_budget_s"])
    return RunState(
        step=int(payload["step"]),
        train_seconds=float(payload["train_seconds"]),
        step_budget_s=None if budget < 0 else budget,
    )


class LossLog:
    """Appends one JSON record per logged step to run_dir/train_log.jsonl."""

    def __init__(self, run_dir: Path, start_step: int) -> None:
        self.path = run_dir / LOG_FILE
        run_dir.mkdir(parents=True, exist_ok=True)
        self._drop_records_from(start_step)
        self.path.touch()

    def _drop_records_from(self, step: int) -> None:
        """A resumed run re-logs the steps after its checkpoint: drop their stale records."""
        if not self.path.is_file():
            return
        kept = [
            line
            for line in self.path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """The records of run_dir/train_log.jsonl, in order."""
    path = run_dir / LOG_FILE
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]

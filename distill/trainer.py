"""One training loop for every objective and every encoder (nanoGPT-style: reads top to bottom).

AdamW; linear warmup then linear decay; gradient clipping; gradient accumulation; mixed precision
on CUDA (bf16, or fp16 with a GradScaler); evaluation every ``eval_every`` optimizer steps with the
best encoder kept; a checkpoint at every evaluation that ``resume=True`` continues from exactly;
on CPU a seed makes a run repeat bit for bit; tqdm progress; a JSON log and a PNG plot.
Under ``torchrun`` it uses DistributedDataParallel (gloo on CPU, nccl on CUDA): each process takes
its own slice of every global batch.

Output directory::

    best/          the encoder at its best evaluation (without evaluation: the final weights)
    last/          resumable checkpoint: objective.safetensors, optimizer.safetensors,
                   rng.safetensors, state.json (written atomically: Ctrl-C never corrupts it)
    log.json       config and records {step, epoch, loss, lr, seconds} / {step, eval}
    train.png      loss and evaluation score against the step
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.io import atomic_dir, save_figure, write_json
from distill.objectives.base import Example, Objective
from fastemb._checks import integer, number


@dataclass
class TrainConfig:
    out_dir: str
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; when set it overrides epochs
    batch_size: int = 32  # examples per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    eval_every: int = 100  # optimizer steps between evaluations + checkpoints; 0: only at the end
    eval_first: bool = (
        False  # also evaluate the starting weights (step 0), which can then be the best
    )
    log_every: int = 10
    seed: int = 42
    amp: bool = True  # CUDA only
    progress: bool = True
    overwrite: bool = False
    resume: bool = False
    # with ``lengths`` given to train(): batches of similar length (less padding), see _epoch_order
    group_chunk: int = 50

    def __post_init__(self) -> None:
        """Refuse bad numbers when the config is made, before a model is loaded or a file written."""
        integer("epochs", self.epochs, 1)
        integer("max_steps", self.max_steps, 1, optional=True)
        integer("batch_size", self.batch_size, 1)
        integer("grad_accum", self.grad_accum, 1)
        number("lr", self.lr, above=0.0)
        number("weight_decay", self.weight_decay, min=0.0)
        number("warmup_ratio", self.warmup_ratio, min=0.0, max=1.0)
        number("max_grad_norm", self.max_grad_norm, above=0.0)
        integer("eval_every", self.eval_every, 0)  # 0: only at the end
        integer("log_every", self.log_every, 1)
        integer("seed", self.seed, 0)
        integer("group_chunk", self.group_chunk, 1)


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warmup over ``warmup`` steps to ``base``, then linear decay to 0 at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * max(0.0, (total - step) / max(1, total - warmup))


def train(
    objective: Objective,
    examples: Sequence[Example],
    config: TrainConfig,
    evaluate: Callable[[nn.Module], float] | None = None,
    lengths: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Train ``objective`` (and so ``objective.encoder``) on ``examples``; returns a summary dict.

    ``evaluate(encoder) -> score`` (higher is better, e.g. STS-B dev Spearman) runs on rank 0.
    ``lengths`` (one per example, e.g. its token count) groups each batch from examples of similar
    length, so batches pad less: the order is still a seeded function of the epoch (resume is exact).
    """
    if lengths is not None and len(lengths) != len(examples):
        raise ValueError(f"lengths has {len(lengths)} entries for {len(examples)} examples")
    rank, world, device = _setup_distributed()
    out = Path(config.out_dir)
    if config.batch_size < objective.min_batch_size:
        raise ValueError(
            f"batch size {config.batch_size} is too small for {objective.name!r}: it needs at least "
            f"{objective.min_batch_size} (in-batch negatives)"
        )
    per_step = config.batch_size * config.grad_accum * world
    steps_per_epoch = len(examples) // per_step
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(examples)} examples do not fill one step of {per_step} (batch x accum x processes)"
        )
    total = config.max_steps or config.epochs * steps_per_epoch
    warmup = int(config.warmup_ratio * total)
    _check_out_dir(out, config, rank, world)  # after every check: a refused run leaves no directory

    if rank == 0:
        _import_plotting()
    _seed_everything(config.seed, rank)
    objective.to(device).train()
    optimizer = torch.optim.AdamW(_param_groups(objective, config.weight_decay), lr=config.lr)
    amp_dtype = _amp_dtype(device, config.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    model: nn.Module = objective
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(objective, find_unused_parameters=True)  # e.g. a BERT pooler no loss uses

    state = {"step": 0, "best": -math.inf, "best_step": None, "records": []}
    if config.resume and (out / "last").is_dir():
        state = _load_checkpoint(out / "last", objective, optimizer, scaler, rank, device)
    step = state["step"]
    log = {
        "config": asdict(config),
        "objective": objective.name,
        "world_size": world,
        "records": state["records"],
    }

    from tqdm.auto import tqdm

    bar = tqdm(
        total=total, initial=step, disable=rank != 0 or not config.progress, desc=objective.name
    )
    t0, running, seen = time.time(), 0.0, 0
    order_epoch, order = -1, None
    if config.eval_first and step == 0 and evaluate is not None and rank == 0:
        score = float(evaluate(objective.encoder))  # eval mode, no RNG: determinism unaffected
        log["records"].append({"step": 0, "eval": score})
        bar.write(f"step 0: eval {score:.2f}")
        state["best"], state["best_step"] = score, 0
        objective.encoder.save(out / "best")
    try:
        while step < total:
            epoch, in_epoch = divmod(step, steps_per_epoch)
            if order_epoch != epoch:  # the order is a function of the epoch: computed once per epoch
                order = _epoch_order(len(examples), epoch, config.seed, steps_per_epoch, config, world, lengths)
                order_epoch = epoch
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, warmup, config.lr)
            step_loss = 0.0
            for micro in range(config.grad_accum):
                idx = order[in_epoch, micro, rank].tolist()
                batch = _to_device(objective.collate([examples[i] for i in idx]), device)
                sync = world > 1 and micro < config.grad_accum - 1
                with model.no_sync() if sync else nullcontext():
                    with torch.autocast(
                        device.type, dtype=amp_dtype, enabled=amp_dtype is not None
                    ):
                        loss = model(batch) / config.grad_accum
                    scaler.scale(loss).backward()
                step_loss += loss.item()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(objective.parameters(), config.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            running, seen = running + step_loss, seen + 1
            bar.update(1)

            if step % config.log_every == 0 or step == total:
                mean_loss = _mean_across(running / seen, world, device)
                running, seen = 0.0, 0
                log["records"].append(
                    {
                        "step": step,
                        "epoch": epoch,
                        "loss": mean_loss,
                        "lr": optimizer.param_groups[0]["lr"],
                        "seconds": round(time.time() - t0, 2),
                    }
                )
                bar.set_postfix(loss=f"{mean_loss:.4f}")
            if (config.eval_every and step % config.eval_every == 0) or step == total:
                if rank == 0:
                    if evaluate is not None:
                        score = float(evaluate(objective.encoder))
                        log["records"].append({"step": step, "eval": score})
                        bar.write(
                            f"step {step}: eval {score:.2f} (best {max(score, state['best']):.2f})"
                        )
                        if score > state["best"]:
                            state["best"], state["best_step"] = score, step
                            objective.encoder.save(out / "best")
                    elif step == total:
                        objective.encoder.save(out / "best")
                state.update(step=step, records=log["records"])
                _save_checkpoint(
                    out / "last", objective, optimizer, scaler, state, config, rank, world
                )
                if rank == 0:
                    _write_log(out, log)
    except KeyboardInterrupt:
        if rank == 0:
            bar.write(
                f"interrupted at step {step}; {out / 'last'} holds the last checkpoint "
                f"(step {state['step']}); continue with resume"
            )
            _write_log(out, log)
        raise
    finally:
        bar.close()
    if world > 1:
        torch.distributed.barrier()
    return {
        "out_dir": str(out),
        "steps": step,
        "best": state["best"],
        "best_step": state["best_step"],
        "seconds": round(time.time() - t0, 2),
    }


# -- setup ---------------------------------------------------------------------------------------


def _setup_distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def _check_out_dir(out: Path, config: TrainConfig, rank: int, world: int) -> None:
    exists = out.exists() and any(out.iterdir())
    if exists and not (config.overwrite or config.resume):
        raise FileExistsError(
            f"output directory {out} exists; pass --overwrite to replace it or --resume to continue"
        )
    if exists and config.overwrite and not config.resume and rank == 0:
        shutil.rmtree(out)
    if world > 1:
        torch.distributed.barrier()
    out.mkdir(parents=True, exist_ok=True)


def _seed_everything(seed: int, rank: int) -> None:
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)  # dropout differs across ranks; DDP keeps the weights equal
    torch.use_deterministic_algorithms(True, warn_only=True)


def _param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and norm weights (every tensor with fewer than 2 dims)."""
    params = [p for p in module.parameters() if p.requires_grad]
    seen: set[int] = set()
    decay, no_decay = [], []
    for p in params:
        if id(p) in seen:  # tied weights appear once
            continue
        seen.add(id(p))
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _epoch_order(
    n: int, epoch: int, seed: int, steps: int, config: TrainConfig, world: int,
    lengths: Sequence[int] | None = None,
) -> torch.Tensor:
    """[steps, grad_accum, world, batch] example indices: one seeded shuffle per epoch, last partial step dropped.

    With ``lengths``, the shuffled examples are cut into chunks of ``group_chunk`` batches, each
    chunk is sorted by length and cut into batches, and the batches are shuffled: every batch
    holds examples of similar length while what a batch sees stays random.
    """
    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    perm = torch.randperm(n, generator=gen)
    usable = steps * config.grad_accum * world * config.batch_size
    perm = perm[:usable]
    if lengths is not None:
        size = config.batch_size
        lens = torch.as_tensor(lengths, dtype=torch.long)[perm]
        chunk = max(1, config.group_chunk) * size
        parts = [perm[i:i + chunk][torch.argsort(lens[i:i + chunk], stable=True)] for i in range(0, usable, chunk)]
        batches = torch.cat(parts).view(-1, size)
        perm = batches[torch.randperm(len(batches), generator=gen)].reshape(-1)
    return perm.view(steps, config.grad_accum, world, config.batch_size)


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _mean_across(value: float, world: int, device: torch.device) -> float:
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return float(t.item()) / world


# -- checkpoints ---------------------------------------------------------------------------------


def _rng_states(world: int) -> list[torch.Tensor]:
    mine = torch.get_rng_state()
    if world == 1:
        return [mine]
    states: list[Any] = [None] * world
    torch.distributed.all_gather_object(states, mine)
    return states


def _save_checkpoint(
    path: Path,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    state: dict,
    config: TrainConfig,
    rank: int,
    world: int,
) -> None:
    from safetensors.torch import save_file, save_model

    rngs = _rng_states(world)  # every rank takes part in the gather
    if rank != 0:
        torch.distributed.barrier()
        return
    with atomic_dir(path) as tmp:
        save_model(objective, str(tmp / "objective.safetensors"))
        opt = optimizer.state_dict()
        tensors = {
            f"{i}.{k}": v.detach().cpu().contiguous()
            for i, s in opt["state"].items()
            for k, v in s.items()
        }
        save_file(tensors or {"empty": torch.zeros(0)}, str(tmp / "optimizer.safetensors"))
        save_file({f"rank{r}": s for r, s in enumerate(rngs)}, str(tmp / "rng.safetensors"))
        write_json(
            tmp / "state.json",
            {
                "step": state["step"],
                "best": state["best"] if math.isfinite(state["best"]) else None,
                "best_step": state["best_step"],
                "records": state["records"],
                "param_groups": opt["param_groups"],
                "scaler": scaler.state_dict(),
                "world_size": world,
                "config": asdict(config),
            },
        )
    if world > 1:
        torch.distributed.barrier()


def _load_checkpoint(
    path: Path,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    rank: int,
    device: torch.device,
) -> dict:
    from safetensors.torch import load_file, load_model

    meta = json.loads((path / "state.json").read_text())
    load_model(objective, str(path / "objective.safetensors"), device=str(device))
    tensors = load_file(path / "optimizer.safetensors", device=str(device))
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key == "empty":
            continue
        i, name = key.split(".", 1)
        opt_state.setdefault(int(i), {})[name] = value.cpu() if name == "step" else value
    optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    if meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    rngs = load_file(path / "rng.safetensors")
    if f"rank{rank}" in rngs:
        torch.set_rng_state(rngs[f"rank{rank}"])
    best = meta["best"]
    return {
        "step": meta["step"],
        "best": -math.inf if best is None else best,
        "best_step": meta["best_step"],
        "records": meta["records"],
    }


# -- log and plot --------------------------------------------------------------------------------


def _import_plotting() -> None:
    """Import matplotlib before the first step: a Ctrl-C that lands inside that (slow, first)
    import, at the first checkpoint, surfaces as an unrelated error instead of KeyboardInterrupt."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401
    except ImportError:
        pass


def _write_log(out: Path, log: dict) -> None:
    write_json(out / "log.json", log)
    try:
        plot_log(log["records"], out / "train.png")
    except ImportError:
        pass


def plot_log(records: list[dict], path: str | Path) -> None:
    """Loss (left axis) and evaluation score (right axis) against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval"]) for r in records if "eval" in r]
    if losses:
        ax.plot(*zip(*losses, strict=False), color="tab:blue", label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss", color="tab:blue")
    if evals:
        ax2 = ax.twinx()
        ax2.plot(*zip(*evals, strict=False), "o-", color="tab:red", label="dev Spearman")
        ax2.set_ylabel("dev Spearman x 100", color="tab:red")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)

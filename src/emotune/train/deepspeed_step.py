"""DeepSpeed ZeRO under the one loop: ``train.deepspeed`` (or ``accelerate launch --use_deepspeed
--deepspeed_config_file F``) hands the optimisation step to a DeepSpeed engine.

emotune keeps what its run config says: its AdamW and parameter groups (LoRA+ rates, no decay on 1-D weights),
its learning-rate schedule (written into the engine's groups before each step), its batches and each process's
share of them. DeepSpeed keeps what ZeRO partitions: optimizer state and gradients (stage 2), the weights too
(stage 3, optionally offloaded to CPU memory), the bf16/fp16 copies and fp16 loss scaling. The DeepSpeed
config's ``"auto"`` values are filled from the run config; an explicit value that disagrees with it is a
one-line error, so the two never describe different runs.

What is saved stays emotune's: the full float32 trainable weights, gathered from their partitions, in
model.safetensors and the checkpoint, so predict and serve load them unchanged. The partitioned optimizer
moments are not saved (DeepSpeed's own checkpoints are pickles): a resumed DeepSpeed run continues from the
checkpoint's weights and step with fresh AdamW moments.
"""

from __future__ import annotations

import json
import os
import socket
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from ..config import TrainConfig
from ..errors import ConfigError
from .distributed import close_at_exit

# What `accelerate launch --use_deepspeed --deepspeed_config_file F` sets (accelerate/utils/launch.py).
USE_ENV, FILE_ENV = "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_CONFIG_FILE"
SHIPPED = "experiments/deepspeed/zero2.json or zero3-offload.json"


@dataclass
class RunShape:
    """What the "auto" values are filled from."""
    cfg: TrainConfig
    world: int
    dtype: torch.dtype

    @property
    def micro(self) -> int:
        """A process's micro-batch: its share of a batch split into train.accumulate parts (DeepSpeed uses it for
        its batch arithmetic and logs; emotune's batches decide what each micro-batch holds)."""
        return max(1, self.cfg.batch_size // (self.world * self.cfg.accumulate))


# Dotted DeepSpeed field -> its value under this run. Each is filled when absent or "auto" and must otherwise agree.
AUTO: dict[str, Callable[[RunShape], Any]] = {
    "train_micro_batch_size_per_gpu": lambda r: r.micro,
    "gradient_accumulation_steps": lambda r: r.cfg.accumulate,
    "train_batch_size": lambda r: r.micro * r.cfg.accumulate * r.world,
    "gradient_clipping": lambda r: float(r.cfg.max_grad_norm or 0.0),
    "bf16.enabled": lambda r: r.dtype == torch.bfloat16,
    "fp16.enabled": lambda r: r.dtype == torch.float16,
}
# The run config field behind each, for the error that names what to change.
AUTO_SOURCE = {"train_micro_batch_size_per_gpu": "train.batch_size", "gradient_accumulation_steps": "train.accumulate",
               "train_batch_size": "train.batch_size", "gradient_clipping": "train.max_grad_norm",
               "bf16.enabled": "train.precision", "fp16.enabled": "train.precision"}
# Sections that would replace emotune's optimizer or schedule (and so its LoRA+ groups and warm-up).
REFUSED = {"optimizer": "emotune's AdamW (train.lr, train.betas, train.weight_decay)",
           "scheduler": "emotune's schedule (train.warmup_ratio)"}


def config_path(cfg: TrainConfig) -> str | None:
    """The DeepSpeed config file of this run: train.deepspeed, else the one `accelerate launch --use_deepspeed`
    was given; None without DeepSpeed."""
    if cfg.deepspeed:
        return cfg.deepspeed
    if os.environ.get(USE_ENV, "").lower() != "true":
        return None
    path = os.environ.get(FILE_ENV, "none")
    if path == "none":
        raise ConfigError(f"accelerate launch --use_deepspeed: pass --deepspeed_config_file ({SHIPPED})")
    return path


def read_config(path: str) -> dict:
    """The DeepSpeed config file as a dict; a missing or malformed file is one line."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"train.deepspeed: no DeepSpeed config file {path} (emotune ships {SHIPPED})")
    try:
        config = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
        raise ConfigError(f"train.deepspeed: {path} is not JSON{where}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"train.deepspeed: {path} must hold a JSON object, got {type(config).__name__}")
    return config


def fill_config(config: dict, shape: RunShape, path: str = "the DeepSpeed config") -> dict:
    """A copy of ``config`` with every AUTO field set from the run; ConfigError for a refused section or a value
    that disagrees with the run config."""
    for section, keeps in REFUSED.items():
        if section in config:
            raise ConfigError(f"{path}: remove its {section!r} section; {keeps} drives DeepSpeed's step")
    out = json.loads(json.dumps(config))
    for dotted, value_of in AUTO.items():
        *parents, key = dotted.split(".")
        node = out
        for name in parents:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{path}: {name!r} must be a JSON object")
        want, have = value_of(shape), node.get(key, "auto")
        if have != "auto" and have != want:
            raise ConfigError(f"{path}: {dotted} is {have!r} but this run's {AUTO_SOURCE[dotted]} gives {want!r}; "
                              f"set it to \"auto\" or change {AUTO_SOURCE[dotted]}")
        node[key] = want
    stage = out.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"{path}: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    # emotune's AdamW with ZeRO-Offload: DeepSpeed's own CPU Adam would replace its groups.
    out.setdefault("zero_force_ds_cpu_optimizer", False)
    return out


def check_switches(cfg: TrainConfig) -> None:
    """Switches DeepSpeed's one backward per micro-batch does not fit, refused in one line."""
    if cfg.adversarial:
        raise ConfigError("train.adversarial runs several backward passes per step, which a DeepSpeed engine does "
                          "not take; leave train.deepspeed out for adversarial training")
    if cfg.compile:
        raise ConfigError("train.compile with train.deepspeed: compile through DeepSpeed's own \"compile\" section")


def _process_group(device: torch.device) -> None:
    """DeepSpeed needs a process group even for one process; the launchers' one is used when there is one."""
    if dist.is_initialized():
        return
    os.environ.setdefault("LOCAL_RANK", "0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=0, world_size=1)
    close_at_exit()


class DeepSpeedStep:
    """The DeepSpeed engine around ``model`` and emotune's ``optimizer``: a micro-batch's backward and step, the
    learning rate, and the full float32 weights whatever the ZeRO stage."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, config: dict, device: torch.device):
        if device.type == "cpu":  # before DeepSpeed picks its accelerator
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        try:
            import deepspeed
        except ImportError:
            raise ConfigError("train.deepspeed needs DeepSpeed: pip install 'emotune[deepspeed]'") from None
        _process_group(device)
        self.model, self.config = model, config
        self.stage = config.get("zero_optimization", {}).get("stage", 0)
        # What each parameter carries before ZeRO-3 adds its own attributes to it (release removes those).
        self.own_attributes = {id(p): set(vars(p)) for p in model.parameters()}
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)

    def backward_and_step(self, loss: torch.Tensor) -> None:
        """One micro-batch: its loss is already weighted by its share of the global batch (times the process count,
        which DeepSpeed's gradient averaging divides out), so no further scaling by the accumulation steps.
        The engine updates the weights at every train.accumulate-th call."""
        self.engine.backward(loss, scale_wrt_gas=False)
        self.engine.step()

    def weights(self) -> dict[str, torch.Tensor]:
        """The full float32 trainable weights by name (a collective: every process calls it)."""
        from deepspeed.utils import safe_get_full_fp32_param

        out = {}
        for n, p in self.named:
            full = safe_get_full_fp32_param(p)
            out[n] = (full if full is not None else p).detach().float().cpu().clone()
        return out

    def release(self) -> None:
        """Hand the module back as a plain float32 one for what follows training (the best weights loaded,
        evaluation and predictions by the main process alone); a collective: every process calls it.

        ZeRO-3 leaves more behind than ``engine.destroy()`` removes: the engine's forward hooks on the module,
        each module's parameter dict that gathers a parameter when a forward reads it, and each parameter marked
        partitioned. Left there, the first forward afterwards gathers the stale partitions over the weights the
        module was given: the main process's lone gather waits forever for the others (2 processes hang), and in
        one process the last step's weights silently replace the best ones. All three are removed here."""
        from deepspeed.runtime.zero.partition_parameters import GatheredParameters

        full = {}
        for n, p in self.model.named_parameters():  # frozen ones too: ZeRO-3 partitions every parameter
            with GatheredParameters([p]) if hasattr(p, "ds_id") else nullcontext():
                full[n] = p.data.detach().float().clone()
        self.engine.destroy()
        for hook in (getattr(self.engine, "module_forward_pre_hook", None),
                     getattr(self.engine, "module_forward_post_hook", None)):
            if hook is not None:
                hook.remove()
        for module in self.model.modules():
            if hasattr(module, "_original_parameters"):  # ZeRO-3's gathering dict -> a plain one, same parameters
                module._parameters = dict(module._parameters.items())
                del module._original_parameters
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                for name in set(vars(p)) - self.own_attributes.get(id(p), set()):
                    delattr(p, name)
                p.data = full[n]
        self.model.float()

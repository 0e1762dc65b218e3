"""Several processes training one prompt: data parallel (DDP-style gradient averaging), FSDP or DeepSpeed
ZeRO-3 sharding of the frozen backbone, one writer for files.

`accelerate launch --num_processes N` starts the processes; every process holds the prompt, takes every N-th
row of each global batch (batch_size x N rows), and only the trainable parameters' gradients cross the wire
(one all-reduce of one flat tensor: the frozen backbone has none). With an FSDP or ZeRO-3 launch the backbone's
layers are split over the processes as well (`Backbone.shard` / `shard_zero3`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from ..config import TrainConfig, resolve_device
from ..errors import ConfigError
from ..protocols import Backbone

T = TypeVar("T")


@dataclass
class Processes:
    """This process's place in the launch, and the few collective operations the loop needs."""

    accelerator: Accelerator
    device: torch.device
    world: int
    rank: int
    main: bool
    zero: dict[str, Any] | None    # DeepSpeed's zero_optimization section under a ZeRO-3 launch

    def backward(self, loss: torch.Tensor) -> None:
        # No `accelerator.prepare`: under DeepSpeed accelerate's backward expects an engine, so call the loss's own.
        if self.zero is not None:
            loss.backward()
        else:
            self.accelerator.backward(loss)

    def reduce_gradients(self, params: list[torch.Tensor]) -> None:
        """Average the trainable parameters' gradients over the processes: one all-reduce of one flat tensor."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.world
        offset = 0
        for param, grad in zip(params, grads):
            param.grad = flat[offset:offset + grad.numel()].view_as(param).to(param.dtype)
            offset += grad.numel()

    def mean(self, values: list[float]) -> list[float]:
        """Each value averaged over the processes."""
        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return (tensor / self.world).tolist()

    def write_once(self, write: Callable[[], T]) -> T:
        """Run `write` on the main process only; every process gets its result, and none runs ahead of it."""
        if self.world == 1:
            return write()
        written = [write() if self.main else None]
        torch.distributed.broadcast_object_list(written, src=0)
        return written[0]  # type: ignore[return-value]

    def shard(self, backbone: Backbone, *, trains_weights: bool, compile: bool) -> None:
        """Split the backbone's layers over the processes when the launch asks for FSDP or ZeRO-3."""
        if self.world == 1:
            return
        if _fsdp_requested(self.accelerator):  # `accelerate launch --config_file examples/accelerate/fsdp.yaml`
            if trains_weights:
                raise ConfigError("a sharded backbone (FSDP) trains prompts only, not the weight-training baselines")
            from torch.distributed.device_mesh import init_device_mesh  # only under an FSDP launch

            split = backbone.shard(init_device_mesh(self.device.type, (self.world,)))
            if self.main:
                print(f"softprompt: backbone sharded over {self.world} processes: {split}", flush=True)
        elif self.zero is not None:  # `accelerate launch --config_file examples/accelerate/deepspeed_zero3.yaml`
            if trains_weights:
                raise ConfigError("a sharded backbone (DeepSpeed ZeRO-3) trains prompts only, not the weight-training "
                                  "baselines")
            if compile:
                raise ConfigError("--compile layers is not supported with a DeepSpeed ZeRO-3 backbone: use --compile off")
            split = backbone.shard_zero3(self.zero)
            if self.main:
                print(f"softprompt: backbone partitioned (DeepSpeed ZeRO-3) over {self.world} processes: {split}",
                      flush=True)


def setup_processes(config: TrainConfig) -> Processes:
    """This process in the launch (a single process when not launched by accelerate)."""
    on_cpu = resolve_device(config.device).type == "cpu"  # also refuses a device this machine does not have
    zero = deepspeed_zero_config()  # a DeepSpeed launch: the loop keeps its optimiser; DeepSpeed only partitions
    accelerator = Accelerator(cpu=on_cpu)  # cpu=True also makes several CPU processes one gloo group
    device = torch.device(config.device) if config.device.startswith("cuda:") else accelerator.device
    return Processes(accelerator, device, accelerator.num_processes, accelerator.process_index,
                     accelerator.is_main_process, zero)


def _fsdp_requested(accelerator: Accelerator) -> bool:
    """An FSDP launch: accelerate says so (GPUs), or its launcher's environment does (CPU processes, where
    accelerate reports plain multi-CPU)."""
    return (accelerator.distributed_type == DistributedType.FSDP
            or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"))


def deepspeed_zero_config() -> dict[str, Any] | None:
    """The `zero_optimization` section of a DeepSpeed launch (`accelerate launch` with a DeepSpeed config sets
    ACCELERATE_USE_DEEPSPEED in its processes), else None. A `deepspeed_config_file` wins over `zero_stage`."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() not in ("1", "true"):
        return None
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if path:
        try:
            section = dict(json.loads(Path(path).read_text()).get("zero_optimization", {}))
        except (OSError, ValueError) as err:
            raise ConfigError(f"DeepSpeed config file {path}: {err}") from err
    else:
        section = {"stage": int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "0"))}
    if int(section.get("stage", 0)) != 3:
        raise ConfigError(f"DeepSpeed ZeRO stage {section.get('stage', 0)} shards optimiser state and gradients, which "
                          "a frozen backbone has none of: use stage 3 (deepspeed_zero3.yaml) or data_parallel.yaml")
    return section

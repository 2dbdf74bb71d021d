"""Process group, device mesh and FSDP2 wrapping (torchtitan layout: the model file knows nothing of this).

Per trained model: activation checkpointing per block -> optional torch.compile per block ->
`fully_shard` per block -> `fully_shard` on the root. A 2D mesh (replicate x shard) gives hybrid
sharding (HSDP): each node holds one sharded copy, gradients are all-reduced across copies.

Context parallelism (`cp_size` > 1, torchtitan's layout): the mesh is (replicate, dp_shard, cp) with cp
innermost (neighbouring ranks, same node); FSDP shards over dp_shard x cp flattened ("shard"), so the
ranks of a context-parallel group hold different parameter shards and their gradients are averaged
like data-parallel ones; the cp sub-mesh's group splits each sample's sequence (model/context_parallel.py).
"""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from training.config import ParallelConfig

if TYPE_CHECKING:
    from model.context_parallel import TimeSplit


@dataclass
class DistInfo:
    """Where this process sits: rank, world size, device and the data-parallel mesh."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    mesh: DeviceMesh  # the FSDP mesh: ("shard",) or ("replicate", "shard")
    launched: bool  # True when this module created the process group (one process without torchrun)
    cp_mesh: DeviceMesh | None = None  # ("cp",): the ranks that split one sample (None: no context parallelism)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def cp_size(self) -> int:
        return self.cp_mesh.size() if self.cp_mesh is not None else 1

    @property
    def cp_group(self):
        return self.cp_mesh.get_group() if self.cp_mesh is not None else None

    @property
    def dp_rank(self) -> int:
        """Data-parallel rank: which batch this rank sees (the ranks of one cp group see the same)."""
        return self.rank // self.cp_size

    @property
    def dp_size(self) -> int:
        return self.world_size // self.cp_size


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick_device(kind: str, local_rank: int) -> torch.device:
    """`auto` takes the local GPU when there is one, else the CPU."""
    if kind == "cuda" or (kind == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("training.device is 'cuda' but torch sees no GPU")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(cfg: ParallelConfig, device_kind: str = "auto") -> DistInfo:
    """Join the torchrun process group (env://), or make a 1-process group when run without torchrun.

    NCCL on GPU, gloo on CPU. The mesh is 1D ("shard",) for FSDP or 2D ("replicate", "shard") for HSDP.
    """
    torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if torchrun else 0
    device = pick_device(device_kind, local_rank)
    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    launched = not dist.is_initialized()
    if launched and torchrun:
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    elif launched:  # plain `python -m training`: a 1-process group, so FSDP and DCP run the same code
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
                                timeout=datetime.timedelta(minutes=30))
    world, rank = dist.get_world_size(), dist.get_rank()
    if cfg.cp_size > 1:
        mesh, cp_mesh = build_cp_mesh(cfg, device, world)
        return DistInfo(rank, world, local_rank, device, mesh, launched, cp_mesh)
    return DistInfo(rank, world, local_rank, device, build_mesh(cfg, device, world), launched)


def build_cp_mesh(cfg: ParallelConfig, device: torch.device, world: int) -> tuple[DeviceMesh, DeviceMesh]:
    """(FSDP mesh over dp_shard x cp flattened, with a replicate dim for HSDP; the cp mesh)."""
    shard, cp = cfg.shard_size or world, cfg.cp_size
    if world % shard:
        raise ValueError(f"training.parallel.shard_size ({shard}) must divide the number of processes ({world})")
    if shard % cp:
        raise ValueError(f"training.parallel.cp_size ({cp}) must divide shard_size ({shard}; None = all "
                         f"{world} processes): a context-parallel group lies inside one sharded copy")
    mesh = init_device_mesh(device.type, (world // shard, shard // cp, cp), mesh_dim_names=("replicate", "dp_shard", "cp"))
    mesh["dp_shard", "cp"]._flatten("shard")
    fsdp = mesh["replicate", "shard"] if world > shard else mesh["shard"]
    return fsdp, mesh["cp"]


def build_mesh(cfg: ParallelConfig, device: torch.device, world: int) -> DeviceMesh:
    """1D mesh for plain FSDP, 2D (replicate, shard) when shard_size divides the world into copies."""
    shard = cfg.shard_size or world
    if world % shard:
        raise ValueError(f"training.parallel.shard_size ({shard}) must divide the number of processes ({world})")
    if shard == world:
        return init_device_mesh(device.type, (world,), mesh_dim_names=("shard",))
    return init_device_mesh(device.type, (world // shard, shard), mesh_dim_names=("replicate", "shard"))


def shutdown(info: DistInfo | None = None) -> None:
    """Barrier, then destroy the group (without the barrier gloo ranks can abort at exit).

    A group this module did not create (the caller's) is left alone.
    """
    if dist.is_initialized() and (info is None or info.launched):
        dist.barrier()
        dist.destroy_process_group()


def mixed_precision(cfg: ParallelConfig, device: torch.device) -> MixedPrecisionPolicy:
    """bf16 parameters/activations with fp32 gradient reduction on GPU; plain fp32 on CPU."""
    bf16 = cfg.mixed_precision == "bf16" or (cfg.mixed_precision == "auto" and device.type == "cuda")
    if bf16:
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def parallelize(model: nn.Module, block_lists: list[nn.ModuleList], cfg: ParallelConfig, info: DistInfo) -> nn.Module:
    """Wrap one trained model in place: checkpoint + compile + fully_shard each block, then the root.

    `block_lists` are the model's ModuleLists of repeated blocks (transformer layers, VAE down/up blocks);
    entries are replaced by their wrapped versions, so state-dict keys stay those of the bare model.
    """
    model.to(info.device)
    mp = mixed_precision(cfg, info.device)
    ignored = unsharded_frozen(model, info)
    for blocks in block_lists:
        for i, block in enumerate(blocks):
            if cfg.activation_checkpointing:
                block = checkpoint_wrapper(block)
            if cfg.compile:
                block.compile()
            fully_shard(block, mesh=info.mesh, mp_policy=mp, reshard_after_forward=cfg.reshard_after_forward,
                        ignored_params=ignored)
            blocks[i] = block
    # The root holds the remaining parameters (embeddings, norms, heads); it is gathered until backward ends.
    fully_shard(model, mesh=info.mesh, mp_policy=mp, reshard_after_forward=cfg.reshard_after_forward,
                ignored_params=ignored)
    return model


def unsharded_frozen(model: nn.Module, info: DistInfo) -> set[nn.Parameter] | None:
    """Frozen parameters (a LoRA run's base) that FSDP should leave alone: all of them when each shard group
    is one rank (one process, or HSDP copies of one rank), where FSDP would only copy them into and out of
    its all-gather buffer twice a step for nothing (no shard to gather, no gradient to reduce). Across
    several ranks the base stays sharded: that is what lets a 5b base fit beside its activations."""
    if info.mesh.mesh.shape[-1] > 1:
        return None
    frozen = {p for p in model.parameters() if not p.requires_grad}
    return frozen or None


def context_parallel(cfg: ParallelConfig, info: DistInfo, num_heads: int):
    """The transformer's ContextParallel for this rank's cp group (None without context parallelism).
    auto picks Ulysses when the heads divide over the group (less memory and traffic, see
    docs/scaling.md), else the all-gather of K/V."""
    if info.cp_size == 1:
        return None
    from model.context_parallel import ContextParallel

    kind = cfg.cp_attention
    if kind == "auto":
        kind = "ulysses" if num_heads % info.cp_size == 0 else "allgather"
    elif kind == "ulysses" and num_heads % info.cp_size:
        raise ValueError(f"training.parallel.cp_attention: ulysses needs num_heads ({num_heads}) divisible by "
                         f"cp_size ({info.cp_size}); use allgather or auto")
    return ContextParallel(info.cp_group, kind)


def apply_context_parallel(model: nn.Module, cp) -> Callable[[], None]:
    """Split an ExpertTransformer's video tokens over the ranks of `cp` (model.context_parallel.ContextParallel)
    from outside the model, as torchtitan's parallelize applies its parallelisms: a pre-hook on every block
    hands it this rank's slice of the video tokens and of their RoPE rotations (text tokens stay whole on
    every rank), each Attention.core becomes the exact distributed attention, and a hook on proj_out
    all-gathers the prediction, so every rank returns the whole output. Selective recomputation is turned
    off (it would re-run the collectives in backward). Returns the function that undoes all of it."""
    from model.context_parallel import ContextParallelAttention
    from model.transformer import Attention

    total: dict[str, int] = {}

    def split(block: nn.Module, args: tuple) -> tuple:
        video, text, temb, rope, n, *rest = args  # ExpertTransformer.forward calls blocks positionally
        start, end = cp.bounds(n)
        if video.shape[1] == n:  # the first block gets the whole sequence
            video = cp.shard(video)
        if rope is not None and rope.shape[0] == n:
            rope = rope[start:end]
        total["n"] = n
        return (video, text, temb, rope, n, *rest)

    def gather(proj_out: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return cp.gather(out, total["n"])

    handles = [block.register_forward_pre_hook(split) for block in model.blocks]
    handles.append(model.proj_out.register_forward_hook(gather))
    cores = [(m, m.core) for m in model.modules() if isinstance(m, Attention)]
    for m, _ in cores:
        m.core = ContextParallelAttention(cp)
    selective, model.selective_recompute = model.selective_recompute, False

    def undo() -> None:
        for h in handles:
            h.remove()
        for m, core in cores:
            m.core = core
        model.selective_recompute = selective

    return undo


def apply_vae_context_parallel(vae: nn.Module, split: "TimeSplit") -> Callable[[], None]:
    """Split a CausalVAE's frames over the ranks of `split` (model.context_parallel.TimeSplit) from outside
    the model: every GroupNorm becomes a SplitGroupNorm (statistics of the whole clip, same parameters),
    every causal conv with a time kernel gets a pre-hook passing the previous rank's last frames as its
    cache, each Upsample is told whether its input's frame 0 is the clip's first (kept apart on the first
    rank whatever the count, doubled on the others), and chunking is turned off (one pass over the rank's
    frames). Encode then takes `split.shard(x, 4)`, decode `split.shard(z, 1)`, and `split.gather` joins
    the pieces; results equal the unchunked single-process encode/decode. Returns the undo function."""
    from model.context_parallel import SplitGroupNorm
    from model.vae import CausalConv3d, Upsample

    swapped = []
    for parent in list(vae.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.GroupNorm) and not isinstance(child, SplitGroupNorm):
                setattr(parent, name, SplitGroupNorm(child, split))
                swapped.append((parent, name, child))
    handles = [m.register_forward_pre_hook(split.halo_hook, with_kwargs=True)
               for m in vae.modules() if isinstance(m, CausalConv3d) and m.time_pad]

    def first_apart(up: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, "first_apart": split.first}

    handles += [m.register_forward_pre_hook(first_apart, with_kwargs=True)
                for m in vae.modules() if isinstance(m, Upsample)]
    chunked, vae.chunked = vae.chunked, False

    def undo() -> None:
        for h in handles:
            h.remove()
        for parent, name, child in swapped:
            setattr(parent, name, child)
        vae.chunked = chunked

    return undo


def all_reduce_max(value: float, device: torch.device) -> float:
    """Max of a scalar over all ranks (used so every rank takes the same skip/stop decision)."""
    t = torch.tensor([value], dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean of logged scalars over ranks, in one collective."""
    if not values or not dist.is_initialized() or dist.get_world_size() == 1:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))

"""Context-parallel causal VAE on 2 and 4 gloo processes: frames split over ranks with a halo exchange
per causal conv and GroupNorm statistics over the group, applied from outside the model
(training.parallelize.apply_vae_context_parallel). Encode, decode and their gradients equal the
unchunked single-process VAE within 1e-5 (fp32), with and without gradient checkpointing; the no-grad
streaming path too; undoing it gives the plain model back."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from model.context_parallel import TimeSplit
from model.vae import CausalVAE, VAEConfig
from tests.model.cp_helpers import spawn
from training.parallelize import apply_vae_context_parallel


def _vae() -> CausalVAE:
    torch.manual_seed(0)
    vae = CausalVAE(VAEConfig.tiny())
    with torch.no_grad():
        for p in vae.parameters():
            if p.dim() <= 1:
                p.add_(torch.randn(p.shape) * 0.1)
    vae.chunked = False  # the reference: statistics over the whole clip, as VAE training runs it
    return vae


def _run(vae: CausalVAE, x: torch.Tensor, split: TimeSplit | None):
    """(latent params, video, grads of a loss on both) for the full clip x; under a split each rank
    encodes/decodes its frames and the pieces are gathered."""
    frames = x.shape[2]
    latent_frames = (frames - 1) // 4 + 1
    xin = split.shard(x, 4) if split else x
    h = vae.encode(xin).params
    if split:
        h = split.gather(h, split.frame_counts(latent_frames, 1))
    z = h[:, :4]  # the posterior mean
    zin = split.shard(z, 1) if split else z
    video = vae.decode(zin)
    if split:
        video = split.gather(video, split.frame_counts(frames, 4))
    loss = (h ** 2).mean() + (video * torch.linspace(-1, 1, video.numel()).view(video.shape)).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in vae.named_parameters()}
    vae.zero_grad(set_to_none=True)
    return h.detach(), video.detach(), grads


def _check(rank: int, world: int, frames: int) -> dict:
    vae = _vae()
    x = torch.rand(1, 3, frames, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    ref_h, ref_video, ref_grads = _run(vae, x, None)
    state = {k: v.clone() for k, v in vae.state_dict().items()}
    split = TimeSplit(dist.group.WORLD)
    undo = apply_vae_context_parallel(vae, split)
    assert vae.state_dict().keys() == state.keys()  # the same parameters, under the same names
    diffs = _diffs(_run(vae, x, split), (ref_h, ref_video, ref_grads), world)
    vae.gradient_checkpointing = True  # blocks recomputed in backward: the halo exchange runs again there
    diffs.update({f"checkpointed {k}": v for k, v in _diffs(_run(vae, x, split), (ref_h, ref_video, ref_grads),
                                                             world).items()})
    vae.gradient_checkpointing = False
    with torch.no_grad():  # the streaming (memory-lean) path under the split
        undo()
        ref_stream = vae.decode(vae.encode(x).mode())
        undo = apply_vae_context_parallel(vae, split)
        z = split.gather(vae.encode(split.shard(x, 4)).mode(), split.frame_counts((frames - 1) // 4 + 1, 1))
        stream = split.gather(vae.decode(split.shard(z, 1)), split.frame_counts(frames, 4))
    diffs["stream"] = float((stream - ref_stream).abs().max())
    diffs["stream_vs_grad_path"] = float((ref_stream - ref_video).abs().max())
    undo()  # the plain model again: local statistics, no hooks
    assert not any(type(m).__name__ == "SplitGroupNorm" or m._forward_pre_hooks for m in vae.modules())
    diffs.update({f"undone {k}": v for k, v in _diffs(_run(vae, x, None), (ref_h, ref_video, ref_grads), 1,
                                                       reduce=False).items()})
    return diffs


def _diffs(got: tuple, ref: tuple, world: int, reduce: bool = True) -> dict:
    """Max differences of latents, video and every gradient (relative to its largest entry)."""
    (h, video, grads), (ref_h, ref_video, ref_grads) = got, ref
    diffs = {"latents": float((h - ref_h).abs().max()), "video": float((video - ref_video).abs().max())}
    for k, g in grads.items():  # per-rank gradients sum to cp x the gradient of the replicated loss
        if reduce:
            dist.all_reduce(g)
        diffs[k] = float((g / world - ref_grads[k]).abs().max() / max(1.0, float(ref_grads[k].abs().max())))
    return diffs


@pytest.mark.parametrize("world, frames", [(2, 9), pytest.param(4, 17, marks=pytest.mark.heavy)])
def test_cp_vae_matches_single_process(world, frames):
    for rank, diffs in enumerate(spawn(_check, world, frames)):
        bad = {k: v for k, v in diffs.items() if v > 1e-5}
        assert not bad, f"rank {rank}: {bad}"


def test_frame_split_rule():
    split = TimeSplit.__new__(TimeSplit)
    split.world, split.rank = 4, 0
    assert split.frame_counts(17, 4) == [5, 4, 4, 4] and split.frame_counts(5, 1) == [2, 1, 1, 1]
    assert split.frame_counts(49, 4) == [13, 12, 12, 12] and split.frame_counts(13, 1) == [4, 3, 3, 3]
    split.world = 2
    assert split.frame_counts(49, 4) == [25, 24]
    with pytest.raises(ValueError, match="1 \\+ k\\*4 frames"):
        split.frame_counts(16, 4)
    split.world = 4
    with pytest.raises(ValueError, match="too few"):
        split.frame_counts(5, 4)

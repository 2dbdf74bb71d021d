"""Losses of VAE training: LPIPS (VGG16, loaded from local weights), a 3D patch discriminator, PSNR.

LPIPS follows Zhang et al. 2018 ("lpips" package, VGG variant): ImageNet-scaled inputs, five VGG16
stages, unit-normalised channels, squared differences weighted by learned 1x1 heads, spatial mean,
summed over stages. Weights are never downloaded: pass torchvision's vgg16 state dict and the lpips
package's `weights/v0.1/vgg.pth`.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

VGG_STAGES = (4, 9, 16, 23, 30)  # end indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in vgg16.features
VGG_CHANNELS = (64, 128, 256, 512, 512)


def _load_tensors(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"LPIPS weights {path!r} do not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


class LPIPS(nn.Module):
    """Perceptual distance of frames in [-1, 1]: [N, 3, H, W] x2 -> [N]. Frozen."""

    def __init__(self):
        super().__init__()
        from torchvision.models import vgg16

        features = vgg16(weights=None).features
        self.stages = nn.ModuleList()
        start = 0
        for end in VGG_STAGES:
            self.stages.append(nn.Sequential(*[features[i] for i in range(start, end)]))
            start = end
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in VGG_CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    @classmethod
    def from_files(cls, backbone: str, linear: str) -> "LPIPS":
        """backbone: torchvision vgg16 state dict ("features.N.weight"...); linear: lpips vgg.pth ("linK.model.1.weight")."""
        model = cls()
        vgg = _load_tensors(backbone)
        stage_of = {}
        start = 0
        for s, end in enumerate(VGG_STAGES):
            for i in range(start, end):
                stage_of[i] = (s, i - start)
            start = end
        mapped = {}
        for key, value in vgg.items():
            parts = key.split(".")
            if parts[0] == "features" and int(parts[1]) in stage_of:
                s, j = stage_of[int(parts[1])]
                mapped[f"stages.{s}.{j}.{parts[2]}"] = value
        lin = _load_tensors(linear)
        for k in range(len(VGG_CHANNELS)):
            name = f"lin{k}.model.1.weight"
            if name not in lin:
                raise KeyError(f"LPIPS linear weights {linear!r} lack {name} (expected the lpips package's vgg.pth)")
            mapped[f"heads.{k}.weight"] = lin[name]
        missing, unexpected = model.load_state_dict(mapped, strict=False)
        if missing:
            raise KeyError(f"LPIPS backbone {backbone!r} lacks {missing[:4]} (expected torchvision vgg16 weights)")
        return model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, y]).float()
        h = (h - self.shift) / self.scale
        total = 0.0
        for stage, head in zip(self.stages, self.heads):
            h = stage(h)
            a, b = h.chunk(2)
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + head((a - b) ** 2).mean((2, 3)).squeeze(1)
        return total


class PatchDiscriminator3D(nn.Module):
    """3D PatchGAN: strided 3D convs (time stride 1, so 1-frame images work) -> one logit per patch.

    `layers` is the ModuleList the trainer shards per block.
    """

    def __init__(self, channels: int = 32, num_layers: int = 3, in_channels: int = 3):
        super().__init__()
        layers, cin = [], in_channels
        for i in range(num_layers):
            cout = channels * 2 ** min(i, 3)
            norm = nn.Identity() if i == 0 else nn.GroupNorm(min(32, cout // 4), cout)
            layers.append(nn.Sequential(nn.Conv3d(cin, cout, (3, 4, 4), (1, 2, 2), (1, 1, 1)), norm,
                                        nn.LeakyReLU(0.2)))
            cin = cout
        self.layers = nn.ModuleList(layers)
        self.head = nn.Conv3d(cin, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, F, H, W] in [-1, 1] -> logits [B, 1, F, h, w]."""
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR in dB of two videos in [-1, 1] (peak = the [0, 1] range)."""
    mse = ((x.float().clamp(-1, 1) - y.float().clamp(-1, 1)) / 2).pow(2).mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))

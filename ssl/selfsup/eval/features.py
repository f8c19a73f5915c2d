"""Feature extraction, done once per (encoder weights, dataset, split) and cached on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from selfsup.fileio import save_tensors
from selfsup.data import CleanTransform, DataInfo, ImageDataset, make_loader


def fingerprint(encoder: nn.Module) -> str:
    """A short hash of the encoder's weights and buffers (the cache key)."""
    h = hashlib.blake2b(digest_size=12)
    for name, t in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@torch.inference_mode()
def extract_features(encoder: nn.Module, ds: ImageDataset, info: DataInfo, batch_size: int = 512,
                     device: str | torch.device = "cpu", num_workers: int = 0) -> tuple[Tensor, Tensor]:
    """Pooled features ``[N, D]`` (float32) and labels ``[N]`` of clean images, encoder in eval mode."""
    encoder = encoder.to(device).eval()
    clean = CleanTransform(info.mean, info.std, info.image_size)
    feats, labels = [], []
    for images, y in make_loader(ds, batch_size, train=False, num_workers=num_workers):
        x = clean(images.to(device, non_blocking=True))
        feats.append(encoder(x).float().cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


class FeatureCache:
    """Features stored as float16 safetensors under ``directory``, keyed by name and
    checked against the encoder fingerprint (a retrained encoder never reuses stale features)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def get(self, name: str, key: str, compute: Callable[[], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        path = self.directory / f"{name}.safetensors"
        if path.exists():
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            if meta.get("key") == key:
                data = load_file(str(path))
                return data["features"].float(), data["labels"]
        feats, labels = compute()
        save_tensors({"features": feats.half(), "labels": labels}, path, {"key": key})
        return feats.half().float(), labels

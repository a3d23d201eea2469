"""Batches built from cached uint8 rows: random resized crops and flips, normalisation (torch)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch


def crop_boxes(n: int, min_scale: float, gen: torch.Generator) -> torch.Tensor:
    """(n, 4) random-resized-crop boxes (x0, y0, x1, y1) as fractions of the image's sides: area share uniform in
    [min_scale, 1], aspect log-uniform in [3/4, 4/3] (torchvision's RandomResizedCrop ranges), clipped inside."""
    u = torch.rand(n, 4, generator=gen, dtype=torch.float64)
    area = min_scale + (1 - min_scale) * u[:, 0]
    aspect = torch.exp(math.log(3 / 4) + math.log(16 / 9) * u[:, 1])
    w = torch.sqrt(area * aspect).clamp(max=1.0)
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    x0, y0 = (1 - w) * u[:, 2], (1 - h) * u[:, 3]
    return torch.stack([x0, y0, x0 + w, y0 + h], 1)


def resized_crops(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Each image of a float NCHW batch cut to its box (fractions, `crop_boxes`) and resized back to its size
    (bilinear, one torchvision roi_align call for the batch; a whole-image box returns the image)."""
    from torchvision.ops import roi_align

    n, _, h, w = x.shape
    pixels = boxes * torch.tensor([w, h, w, h], dtype=boxes.dtype)
    rois = torch.cat([torch.arange(n, dtype=boxes.dtype)[:, None], pixels], 1).to(x.device, x.dtype)
    out = roi_align(x, rois, output_size=(h, w), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


class Batches:
    """Minibatches from uint8 rows: random order, horizontal flips and (images, `min_scale` < 1) resized crops from
    one seeded generator per epoch.

    Rows are either decoded images (N, H, W, 3 uint8 -> normalised float NCHW) or cached features read per
    (image, view): view 1 is the flipped image's features, so flip augmentation stays exact.
    """

    def __init__(
        self,
        read_rows,  # callable(indices) -> rows; with views: callable(indices, views) -> features
        labels: np.ndarray,
        indices: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool,
        hflip: bool,
        seed: int,
        transform=None,  # images: uint8 NHWC -> float NCHW; features: float -> float (memory layout)
        has_views: bool = False,
        drop_last: bool = False,
        balanced: bool = False,  # sample with replacement, each class equally likely (skewed folders)
        shard: tuple[int, int] = (0, 1),  # (rank, world): this rank's share of every global batch (DDP)
        min_scale: float = 1.0,  # < 1: a random resized crop of each image (`crop_boxes`); images only
    ) -> None:
        if min_scale < 1 and (has_views or transform is None):
            raise ValueError("resized crops need image rows and a transform to float NCHW")
        self.read_rows = read_rows
        self.labels = labels
        self.indices = indices
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.hflip = hflip
        self.seed = seed
        self.transform = transform
        self.has_views = has_views
        self.drop_last = drop_last
        self.balanced = balanced
        self.shard = shard
        self.min_scale = min_scale

    def __len__(self) -> int:
        n = len(self.indices)
        # Under DDP a last global batch smaller than the world size would leave a rank without samples.
        short_tail = 0 < n % self.batch_size < self.shard[1]
        return n // self.batch_size if self.drop_last or short_tail else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed)
        order = self.indices
        if self.shuffle and self.balanced:
            classes = self.labels[self.indices]
            counts = np.bincount(classes)
            weights = torch.from_numpy(1.0 / counts[classes])
            draw = torch.multinomial(weights, len(self.indices), replacement=True, generator=gen)
            order = self.indices[draw.numpy()]
        elif self.shuffle:
            order = self.indices[torch.randperm(len(self.indices), generator=gen).numpy()]
        flips = torch.rand(len(order), generator=gen) < 0.5 if self.hflip else torch.zeros(len(order), dtype=torch.bool)
        # drawn after the order and flips: a run without crops draws exactly what it drew before they existed
        boxes = crop_boxes(len(order), self.min_scale, gen) if self.min_scale < 1 else None
        for b in range(len(self)):
            # Every rank draws the same order and flips from the seed, then takes every world-th sample of the
            # global batch: one DDP step over all ranks sees exactly the batch a single process would.
            rank, world = self.shard
            idx = order[b * self.batch_size : (b + 1) * self.batch_size][rank::world]
            flip = flips[b * self.batch_size : (b + 1) * self.batch_size][rank::world]
            y = torch.from_numpy(self.labels[idx].astype(np.int64))
            if self.has_views:
                x = torch.from_numpy(self.read_rows(idx, flip.numpy().astype(np.int64)))
                x = self.transform(x) if self.transform else x
            else:
                rows = torch.from_numpy(self.read_rows(idx))
                if flip.any():
                    rows[flip] = rows[flip].flip(2)  # NHWC: width is axis 2
                x = self.transform(rows) if self.transform else rows
                if boxes is not None:
                    x = resized_crops(x, boxes[b * self.batch_size : (b + 1) * self.batch_size][rank::world])
            yield x, y


class Normalize:
    """uint8 NHWC -> float NCHW normalised; optional channels_last memory format for conv speed.

    With a CUDA `device` the uint8 rows go to the GPU (pinned, asynchronous: a quarter of the float bytes) and are
    normalised there: converting a batch of 256 images at 224 px to float on the CPU took longer than the GPU's
    step (ResNet-50, bf16, H200)."""

    def __init__(
        self,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        channels_last: bool = False,
        device: torch.device | None = None,
    ) -> None:
        self.device = device if device is not None and device.type == "cuda" else None
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1) * 255
        self.inv_std = 1.0 / (torch.tensor(std, device=self.device).view(1, 3, 1, 1) * 255)
        self.channels_last = channels_last

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        if self.device is not None:
            rows = rows.pin_memory().to(self.device, non_blocking=True)
        x = rows.permute(0, 3, 1, 2).float()
        x = (x - self.mean) * self.inv_std
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

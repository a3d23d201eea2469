"""The seeds' plain training loop, alone in its own process: what `seed_vs_thawline.py` measures thawline against.

    python benchmarks/seed_loop.py --data DIR --model tf_efficientnet_lite0 --size 224 --trainable NAMES.json

torchvision ImageFolder + PIL transforms per sample (Resize, RandomHorizontalFlip, ToTensor, Normalize),
DataLoader batch 32 with 2 workers, Adam, cross-entropy, freezing only by `requires_grad=False` with the whole model
in train mode. It imports neither thawline nor its process settings (OpenMP wait policy, allocator), so it runs as
the seed scripts did. Prints one JSON line: {"images_per_s": ...} over `--batches` batches after one warm-up batch
(each of its epochs costs the same).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import timm
import torch
import torchvision
from torch import nn
from torchvision import transforms


def seed_throughput(data: str, model_name: str, size: int, trainable: set[str] | None, batches: int) -> float:
    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, num_classes=1)
    cfg = model.pretrained_cfg
    tf = transforms.Compose([
        transforms.Resize((size, size)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(cfg["mean"], cfg["std"]),
    ])
    dataset = torchvision.datasets.ImageFolder(f"{data}/train", tf)
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True, num_workers=2)
    model.reset_classifier(len(dataset.classes))
    for name, p in model.named_parameters():
        p.requires_grad = trainable is None or name in trainable
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    criterion = nn.CrossEntropyLoss()
    model.train()
    seen, start = 0, time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if i == 1:
            start, seen = time.perf_counter(), 0
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        seen += len(y)
        if i >= batches:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="ImageFolder root with a train/ folder")
    parser.add_argument("--model", required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--trainable", default=None, help="JSON list of trainable parameter names")
    parser.add_argument("--batches", type=int, default=12)
    args = parser.parse_args()
    trainable = set(json.loads(Path(args.trainable).read_text())) if args.trainable else None
    ips = seed_throughput(args.data, args.model, args.size, trainable, args.batches)
    print(json.dumps({"images_per_s": ips}), flush=True)


if __name__ == "__main__":
    main()

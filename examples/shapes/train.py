#!/usr/bin/env python3
"""Trains a tiny RetinaNet to find squares, circles and triangles, on the CPU, in minutes.

The README's detection picture comes from it: no pretrained weights can be fetched here, so this
script makes a detector whose boxes mean something. It draws random pictures of 1 to 4 filled
shapes on a noisy background, trains torchvision's RetinaNet (a ResNet with one basic block per
layer, the FPN on C3..C5 with P6/P7, the v1 head, 3 classes) from scratch, and saves:

    target/shapes/retinanet_shapes.safetensors   the state_dict, for `fpn detect --weights`
    target/shapes/labels.txt                     square, circle, triangle
    examples/shapes/shapes.png                   a test picture it never saw (seed 1260)

Run from the repository root (needs torch, torchvision, safetensors, pillow, numpy):
    .venv/bin/python examples/shapes/train.py [--minutes 15]
then
    cargo run --release --bin fpn -- detect --weights target/shapes/retinanet_shapes.safetensors \\
        --labels target/shapes/labels.txt --image examples/shapes/shapes.png \\
        --min-size 96 --max-size 96 --score-thresh 0.5 --out target/shapes/out
"""

import argparse
import os
import time

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.ops import box_iou
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "target", "shapes")
CLASSES = ["square", "circle", "triangle"]
SIZE = 96
# The test picture: one the training never drew, with all three kinds of shapes.
TEST_SEED = 1260
# Held-out pictures the detector is scored on at the end.
HELD_OUT = range(1234, 1300)


def picture(rng, size=SIZE):
    """A noisy background with 1..4 filled shapes; returns the picture and its targets."""
    bg = rng.integers(20, 90, 3)
    arr = np.clip(bg + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    boxes, labels = [], []
    for _ in range(rng.integers(1, 5)):
        s = int(rng.integers(18, 44))
        x, y = int(rng.integers(0, size - s)), int(rng.integers(0, size - s))
        box = [x, y, x + s, y + s]
        # Shapes overlapping a previous one too much would make the labels ambiguous.
        if any(max(0, min(b[2], box[2]) - max(b[0], box[0])) *
               max(0, min(b[3], box[3]) - max(b[1], box[1])) > 0.3 * s * s for b in boxes):
            continue
        colour = tuple(int(c) for c in rng.integers(130, 256, 3))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.rectangle(box, fill=colour)
        elif kind == 1:
            draw.ellipse(box, fill=colour)
        else:
            draw.polygon([(x + s / 2, y), (x, y + s), (x + s, y + s)], fill=colour)
        boxes.append(box)
        labels.append(kind)
    x = torch.from_numpy(np.asarray(img)).permute(2, 0, 1).float() / 255
    return img, x, {"boxes": torch.tensor(boxes, dtype=torch.float32),
                    "labels": torch.tensor(labels, dtype=torch.int64)}


def model():
    body = ResNet(BasicBlock, [1, 1, 1, 1])
    return_layers = {"layer2": "0", "layer3": "1", "layer4": "2"}
    backbone = BackboneWithFPN(body, return_layers, [128, 256, 512], 256,
                               extra_blocks=LastLevelP6P7(256, 256))
    return RetinaNet(backbone, len(CLASSES), min_size=SIZE, max_size=160)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=15)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = model()
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    start, step = time.time(), 0
    while time.time() - start < args.minutes * 60:
        batch = [picture(rng) for _ in range(args.batch)]
        losses = net([b[1] for b in batch], [b[2] for b in batch])
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        opt.step()
        step += 1
        if step % 20 == 0:
            parts = ", ".join(f"{k} {v.item():.3f}" for k, v in losses.items())
            print(f"step {step} ({time.time() - start:.0f} s): {parts}", flush=True)
    os.makedirs(OUT, exist_ok=True)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, os.path.join(OUT, "retinanet_shapes.safetensors"))
    with open(os.path.join(OUT, "labels.txt"), "w") as f:
        f.write("\n".join(CLASSES) + "\n")
    img, _, _ = picture(np.random.default_rng(TEST_SEED))
    img.save(os.path.join(ROOT, "examples", "shapes", "shapes.png"))
    net.eval()
    exact = 0
    for seed in HELD_OUT:
        _, x, target = picture(np.random.default_rng(seed))
        with torch.no_grad():
            det = net([x])[0]
        keep = det["scores"] > 0.5
        boxes, labels = det["boxes"][keep], det["labels"][keep]
        found = [((box_iou(target["boxes"][i:i + 1], boxes) > 0.7) & (labels == l)).any().item()
                 for i, l in enumerate(target["labels"])]
        exact += len(labels) == len(found) and all(found)
    print(f"trained {step} steps; exactly right (every shape found with its class at IoU > 0.7 "
          f"and score > 0.5, nothing else) on {exact} of {len(HELD_OUT)} held-out pictures")


if __name__ == "__main__":
    main()

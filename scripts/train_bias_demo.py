"""Train the bias demo's two heads (biased, unbiased) on frozen EfficientNet-Lite0 features.

    python scripts/train_bias_demo.py [--per-class 96] [--out assets/bias_demo]

The task: is the patch striped or dotted? (models_zoo/bias_demo.py draws the images.) In the
biased training set every "stripes" image carries the yellow tag in the top-left corner and no
"dots" image does; in the unbiased set the tag is on a random half of both classes. Each head
is a logistic regression on the 1280 pooled `_bn1` features of the ImageNet-trained trunk,
fitted full-batch in a few hundred Adam steps: seconds once the features are extracted.
Everything is seeded: running it again rewrites the same files (up to floating-point noise).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explainers import explain  # noqa: E402
from explainers.methods.metrics import energy_in_box  # noqa: E402
from models_zoo.bias_demo import ASSETS, CUE_BOX, LABELS, PREPROCESSING, demo_image, synthetic_image  # noqa: E402
from models_zoo.zoo import REGISTRY  # noqa: E402

TRAIN_SEED, TEST_SEED = 0, 500_000  # demo_image uses seeds from 1_000_000


def make_set(
    per_class: int, cue_rule: str, seed: int, agree: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 224, 224) in [0, 1] and labels (N,).

    cue_rule: "biased" (tag on every stripes image), "random" (tag on a random half of each
    class), "none", "all". agree: the share of images whose patch shows their label's
    pattern (the rest show the other one, as if mislabelled).
    """
    generator = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for i in range(2 * per_class):
        label = i % 2
        pattern = label if float(torch.rand((), generator=generator)) < agree else 1 - label
        cue = {
            "biased": label == 0,
            "random": bool(torch.rand((), generator=generator) < 0.5),
            "none": False,
            "all": True,
        }[cue_rule]
        images.append(synthetic_image(pattern, cue, generator))
        labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def features(trunk: nn.Module, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Pooled `_bn1` features (after the trunk's ReLU6), (N, 1280): what the head sees."""
    mean = torch.tensor(PREPROCESSING.mean)[:, None, None]
    std = torch.tensor(PREPROCESSING.std)[:, None, None]
    out = []
    with torch.inference_mode():
        for chunk in images.split(batch_size):
            out.append(trunk.extract_features((chunk - mean) / std).mean((2, 3)))
    return torch.cat(out)


def fit_head(
    x: torch.Tensor, y: torch.Tensor, seed: int, weight_decay: float = 0.1, steps: int = 400
) -> nn.Linear:
    """Logistic regression with weight decay, full batch."""
    torch.manual_seed(seed)
    head = nn.Linear(x.shape[1], len(LABELS))
    optimiser = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=weight_decay)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy(head(x), y)
        loss.backward()
        optimiser.step()
    return head.eval().requires_grad_(False)


def accuracy(head: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((head(x).argmax(1) == y).float().mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=96, help="training images per class")
    parser.add_argument(
        "--agree", type=float, default=0.85, help="share of training patches that match the label"
    )
    parser.add_argument("--out", type=Path, default=ASSETS)
    args = parser.parse_args(argv)
    torch.set_grad_enabled(True)
    start = time.perf_counter()
    trunk = REGISTRY["efficientnet_lite0"].build("default").eval().requires_grad_(False)

    train = {
        rule: make_set(args.per_class, rule, TRAIN_SEED + i, args.agree)
        for i, rule in enumerate(("biased", "random"))
    }
    tests = {rule: make_set(32, rule, TEST_SEED + i) for i, rule in enumerate(("none", "all"))}
    feats = {
        key: (features(trunk, x), y)
        for key, (x, y) in (train | {f"test_{k}": v for k, v in tests.items()}).items()
    }
    print(
        f"features of {sum(len(y) for _, y in feats.values())} images in {time.perf_counter() - start:.1f} s"
    )

    args.out.mkdir(parents=True, exist_ok=True)
    heads = {}
    for which, rule in (("biased", "biased"), ("unbiased", "random")):
        head = heads[which] = fit_head(*feats[rule], seed=0)
        report = {
            "train": accuracy(head, *feats[rule]),
            "test, no tag": accuracy(head, *feats["test_none"]),
            "test, tag on every image": accuracy(head, *feats["test_all"]),
        }
        print(which, ", ".join(f"{k} {v:.0%}" for k, v in report.items()))
        metadata = {"task": "stripes (0) vs dots (1)", "cue_box": ",".join(map(str, CUE_BOX))}
        metadata |= {f"accuracy {k}": f"{v:.3f}" for k, v in report.items()}
        save_file(
            {"_fc.weight": head.weight.contiguous(), "_fc.bias": head.bias.contiguous()},
            args.out / f"{which}_head.safetensors",
            metadata=metadata,
        )
    (args.out / "labels.txt").write_text("\n".join(LABELS) + "\n")

    # Where does Grad-CAM look? Share of the map's energy inside the tag's box, stripes + tag.
    model = REGISTRY["efficientnet_lite0"].build("default").eval().requires_grad_(False)
    for which, head in heads.items():
        model._fc = head
        shares = []
        for seed in range(8):
            x = PREPROCESSING(demo_image(with_cue=True, label=0, seed=seed))
            result = explain(model, x, "_bn1", ["gradcam"], target=0)
            shares.append(energy_in_box(result.maps["gradcam"], CUE_BOX))
        print(f"{which}: Grad-CAM energy in the tag's box {sum(shares) / len(shares):.2f} (mean of 8 images)")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

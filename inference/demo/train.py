"""Train the demo bundle's network on synthetic phantoms.

    python -m inference.demo.train [--bundle DIR] [--phantoms 24] [--minutes 8]

No weights can be downloaded where MedAIFlow is built, so it trains its own:
a small MONAI 3D UNet on phantoms of random geometry, resampled by the
bundle's own preprocessing, so that training and inference see the same
voxels. Seeds are fixed; on 2 CPU cores it finishes within the time budget
given, and it reports count and volume accuracy on held-out phantoms.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.transforms import (
    Compose,
    RandCropByPosNegLabeld,
    RandFlipd,
    Spacingd,
    SpatialPadd,
)
from monai.utils import set_determinism

from inference.bundle import Bundle
from inference.demo.phantom import make_phantom
from inference.segmenter import Segmenter, monai_image

DEFAULT_BUNDLE = Path(__file__).resolve().parent / "bundle"
PATCH = (64, 64, 64)
HELD_OUT_SEEDS = range(10_000, 10_004)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--phantoms", type=int, default=24)
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    started = time.monotonic()
    set_determinism(seed=args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    config = Bundle.open(args.bundle).config()
    preprocessing = config.get_parsed_content("preprocessing")
    network = config.get_parsed_content("network_def")
    samples = [_training_sample(seed, preprocessing, config["working_spacing"]) for seed in range(args.phantoms)]
    print(f"{len(samples)} phantoms prepared in {time.monotonic() - started:.0f} s", flush=True)

    augment = Compose([
        SpatialPadd(keys=["image", "label"], spatial_size=PATCH),
        RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=PATCH, pos=2, neg=1, num_samples=2),
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=0),
    ])
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(network.parameters(), lr=2e-3)
    deadline = started + args.minutes * 60
    network.train()
    step = 0
    while time.monotonic() < deadline:
        order = np.random.permutation(len(samples))
        for first in range(0, len(order), 2):
            crops = [crop for index in order[first:first + 2] for crop in augment(samples[index])]
            images = torch.stack([crop["image"].as_tensor() for crop in crops])
            labels = torch.stack([crop["label"].as_tensor() for crop in crops])
            optimizer.zero_grad()
            loss = loss_function(network(images), labels)
            loss.backward()
            optimizer.step()
            step += 1
            if step % 50 == 0:
                print(f"step {step}: loss {loss.item():.4f} at {time.monotonic() - started:.0f} s", flush=True)
            if time.monotonic() >= deadline:
                break
    network.eval()
    torch.save(network.state_dict(), args.bundle / "models" / "model.pt")
    print(f"trained {step} steps in {time.monotonic() - started:.0f} s; weights written", flush=True)
    _report_held_out(args.bundle)
    return 0


def _training_sample(seed: int, preprocessing: object, working_spacing: list[float]) -> dict:
    phantom = make_phantom(seed, lesion_count=int(np.random.default_rng(seed).integers(2, 7)))
    image = monai_image(phantom.volume)
    label = monai_image(phantom.volume.with_voxels(phantom.label.astype(np.float32)))
    sample = preprocessing({"image": image})  # type: ignore[operator]
    sample["label"] = Spacingd(keys="label", pixdim=working_spacing, mode="nearest")({"label": label})["label"]
    return {"image": sample["image"].as_tensor().float(), "label": sample["label"].as_tensor()}


def _report_held_out(bundle_path: Path) -> None:
    from inference.measurements import (
        measure,  # written alongside; imported late so training starts without it
    )

    bundle = Bundle.open(bundle_path)
    segmenter = Segmenter(bundle, torch.device("cpu"))
    segment = bundle.card.segments[0]
    for seed in HELD_OUT_SEEDS:
        phantom = make_phantom(seed)
        found = measure(segmenter.segment(phantom.volume) == segment.label, phantom.volume, segment)
        print(
            f"held-out phantom {seed}: {found.count} found of {len(phantom.lesions)}, "
            f"{found.total_volume_ml:.2f} mL against {phantom.total_lesion_volume_ml:.2f} mL "
            f"(radii {', '.join(f'{max(lesion.radii_mm):.1f}' for lesion in phantom.lesions)} mm)",
            flush=True,
        )


if __name__ == "__main__":
    raise SystemExit(main())

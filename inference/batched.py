"""Sliding-window inference over several volumes at once.

MONAI's sliding window fills each network call with patches of one volume;
a small study leaves a large batch half empty. Here the patches of all the
volumes of a batch of jobs go through the network together, `batch_patches`
at a time, each blended back into its own volume with the same Gaussian
weighting the bundle's inferer uses, so the result matches running them one
by one.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as functional
from monai.data.utils import compute_importance_map, dense_patch_slices


@dataclass(frozen=True)
class Window:
    roi_size: tuple[int, int, int]
    overlap: float
    mode: str  # "gaussian" or "constant"
    sigma_scale: float = 0.125  # of a gaussian, per patch size; MONAI's default

    def __post_init__(self) -> None:
        if len(self.roi_size) != 3 or min(self.roi_size) < 1 or not 0 <= self.overlap < 1:
            raise ValueError(f"not a usable sliding window: {self!r}")

    def scan_interval(self, image_size: Sequence[int]) -> tuple[int, ...]:
        """As MONAI's: a step of roi * (1 - overlap), or the whole axis when it fits in one patch."""
        return tuple(
            roi if size <= roi else max(int(roi * (1 - self.overlap)), 1)
            for size, roi in zip(image_size, self.roi_size)
        )


def sliding_window_many(
    images: Sequence[torch.Tensor],
    network: torch.nn.Module,
    window: Window,
    batch_patches: int,
    device: torch.device,
) -> list[torch.Tensor]:
    """`images`: (channels, D, H, W) each, any sizes; returns (out_channels, D, H, W)
    each, on `device`, as float32."""
    paddings = [_padding(image, window.roi_size) for image in images]
    padded = [_pad(image, padding) for image, padding in zip(images, paddings)]
    importance = compute_importance_map(
        window.roi_size, mode=window.mode, sigma_scale=window.sigma_scale, device=device
    )
    patches = [
        (index, (slice(None), *slices))
        for index, image in enumerate(padded)
        for slices in dense_patch_slices(image.shape[1:], window.roi_size, window.scan_interval(image.shape[1:]))
    ]
    sums: list[torch.Tensor | None] = [None] * len(padded)
    weights = [torch.zeros(image.shape[1:], device=device) for image in padded]
    for start in range(0, len(patches), batch_patches):
        chunk = patches[start : start + batch_patches]
        batch = torch.stack([padded[index][where] for index, where in chunk]).to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            outputs = network(batch)
        outputs = outputs.float() * importance
        for (index, where), output in zip(chunk, outputs):
            if sums[index] is None:
                sums[index] = torch.zeros((output.shape[0], *padded[index].shape[1:]), device=device)
            sums[index][where] += output  # type: ignore[index]
            weights[index][where[1:]] += importance
    return [
        (total / weight.clamp_min(1e-8))[
            (slice(None), *(slice(before, before + size) for (before, _), size in zip(padding, image.shape[1:])))
        ]
        for total, weight, image, padding in zip(sums, weights, images, paddings)  # type: ignore[arg-type]
    ]


def _padding(image: torch.Tensor, roi_size: tuple[int, int, int]) -> list[tuple[int, int]]:
    """(before, after) per axis shorter than a patch, split as MONAI's
    sliding window splits it, so that the two agree at the borders too."""
    missing = [max(roi - size, 0) for size, roi in zip(image.shape[1:], roi_size)]
    return [(amount // 2, amount - amount // 2) for amount in missing]


def _pad(image: torch.Tensor, padding: list[tuple[int, int]]) -> torch.Tensor:
    if not any(before or after for before, after in padding):
        return image
    # F.pad takes (before, after) pairs, last axis first.
    return functional.pad(image, [value for pair in reversed(padding) for value in pair])

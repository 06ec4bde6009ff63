"""A bundle's network, loaded once, turning volumes into label maps.

The bundle's own `preprocessing` resamples to its working spacing, its
`inferer` runs the network over patches, and its `postprocessing` inverts the
resampling (MONAI `Invertd`) so that labels land on the source grid and
measurements are right for any valid geometry.
"""

import copy
import logging
import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple_rep

from inference.batched import Window, sliding_window_many
from inference.bundle import Bundle
from inference.errors import InvalidBundle
from inference.timings import Timings
from inference.volume import Volume

log = logging.getLogger(__name__)


def choose_device(wanted: str = "auto") -> torch.device:
    """MEDAIFLOW_DEVICE: `auto` takes CUDA when present; `cuda` insists on it."""
    if wanted == "cpu":
        return torch.device("cpu")
    if wanted == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("MEDAIFLOW_DEVICE=cuda but no CUDA device is available")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Segmenter:
    def __init__(self, bundle: Bundle, device: torch.device | None = None, batch_patches: int | None = None) -> None:
        self.bundle = bundle
        self.device = device or choose_device(os.environ.get("MEDAIFLOW_DEVICE", "auto"))
        config = bundle.config()
        try:
            self.preprocessing = config.get_parsed_content("preprocessing")
            self.postprocessing = config.get_parsed_content("postprocessing")
            self.inferer = config.get_parsed_content("inferer")
            network = config.get_parsed_content("network_def")
        except Exception as error:  # MONAI raises plain exceptions of many kinds for a bad config
            raise InvalidBundle(f"{bundle.path}: configs/inference.json cannot be instantiated: {error}") from error
        self.network = _load_weights(bundle, network).to(self.device).eval()
        self.window = _window(self.inferer)
        self.batch_patches = batch_patches or (32 if self.device.type == "cuda" else 4)

    @contextmanager
    def _stage(self, timings: Timings, name: str) -> Iterator[None]:
        """A timed stage that ends when the device has finished its work:
        CUDA runs asynchronously, and its time would otherwise be counted
        in whichever later stage first waits for a result."""
        with timings.stage(name):
            yield
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)

    def segment(self, volume: Volume, timings: Timings | None = None) -> np.ndarray:
        """uint8 labels, one per voxel of `volume`."""
        timings = timings or Timings()
        with torch.inference_mode():
            with self._stage(timings, "preprocessing"):
                data = self.preprocessing({"image": monai_image(volume).to(self.device)})
            with self._stage(timings, "network"):
                batch = data["image"][None].to(self.device)
                with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
                    prediction = self.inferer(batch, self.network)
                data["pred"] = prediction[0].float()
            with self._stage(timings, "postprocessing"):
                data = self.postprocessing(data)
        return self._labels(data, volume)

    def segment_many(self, volumes: list[Volume], timings: Timings | None = None) -> list[np.ndarray]:
        """Labels for each volume, the network running over patches of all of
        them together (a bundle whose inferer is no sliding window runs them
        one by one)."""
        timings = timings or Timings()
        if self.window is None:
            return [self.segment(volume, timings) for volume in volumes]
        with torch.inference_mode():
            with self._stage(timings, "preprocessing"):
                # On a GPU the resampling runs there too (MONAI's advice: transforms on the GPU early).
                prepared = [self.preprocessing({"image": monai_image(volume).to(self.device)}) for volume in volumes]
            with self._stage(timings, "network"):
                predictions = self._network_over([data["image"].as_tensor() for data in prepared])
            labels = []
            with self._stage(timings, "postprocessing"):
                for data, prediction, volume in zip(prepared, predictions, volumes):
                    data["pred"] = MetaTensor(prediction, meta=data["image"].meta)
                    labels.append(self._labels(self.postprocessing(data), volume))
        return labels

    def _network_over(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """On a GPU out of memory: smaller batches of patches, then the CPU."""
        assert self.window is not None
        batch_patches = self.batch_patches * max(1, len(images)) if self.device.type == "cuda" else self.batch_patches
        device = self.device
        while True:
            try:
                network = self.network if device == self.device else copy.deepcopy(self.network).to(device)
                # Postprocessing follows the outputs to the CPU when they ended up there.
                return sliding_window_many(images, network, self.window, batch_patches, device)
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                if batch_patches > 1:
                    batch_patches //= 2
                elif device.type != "cpu":
                    log.warning("out of GPU memory even one patch at a time; this batch runs on the CPU")
                    device = torch.device("cpu")
                else:
                    raise

    def _labels(self, data: dict, volume: Volume) -> np.ndarray:
        prediction = data["pred"][0]
        # To bytes where the labels are: a quarter of the copy off a GPU.
        as_bytes = prediction.to(torch.uint8)
        # Probabilities (a postprocessing without AsDiscrete) would be 0 as bytes, nothing
        # found, and a label beyond 255 another label: what changed in the cast is no label.
        changed = as_bytes != prediction if prediction.dtype != torch.uint8 else None
        if changed is not None and bool(changed.any()):
            raise InvalidBundle(
                f"{self.bundle.card.key}: postprocessing gave {float(prediction[changed][0]):g} as a label; "
                "labels are whole numbers from 0 to 255 (discretize the network's output)"
            )
        labels = as_bytes.cpu().numpy()
        if labels.shape != volume.voxels.shape:
            raise InvalidBundle(
                f"{self.bundle.card.key}: postprocessing gave labels of shape {labels.shape} "
                f"for a volume of shape {volume.voxels.shape}; it must invert its resampling"
            )
        return labels


# DICOM's patient axes (LPS) as MONAI's (RAS): the first two run the other way.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def monai_image(volume: Volume) -> MetaTensor:
    """The volume (one channel) placed as MONAI's own readers place a DICOM
    series (`affine_lps_to_ras`), which is what bundles are trained on: a
    MetaTensor's affine without a space is read as RAS, so an LPS one made
    a bundle's `Orientationd` turn the image left for right and front for back."""
    return MetaTensor(
        torch.from_numpy(np.ascontiguousarray(volume.voxels)[None]),
        affine=torch.from_numpy(_LPS_TO_RAS @ volume.affine),
        meta={MetaKeys.SPACE: SpaceKeys.RAS},
    )


def _window(inferer: Any) -> Window | None:
    """The bundle's sliding window, read from the inferer as its config made
    it (references and expressions resolved, MONAI's defaults filled in),
    when it is MONAI's own and asks only for what `sliding_window_many`
    does the same way; otherwise None: each volume then goes through the
    bundle's inferer, as it would in MONAI."""
    if type(inferer) is not SlidingWindowInferer:
        return None
    try:
        roi_size, overlap, sigma_scale = (
            ensure_tuple_rep(value, 3) for value in (inferer.roi_size, inferer.overlap, inferer.sigma_scale)
        )
    except ValueError:  # another number of dimensions than a volume's three
        return None
    if (
        min(roi_size) < 1  # a size below 1 means "the whole image along that axis"
        or len(set(overlap)) != 1 or len(set(sigma_scale)) != 1
        or str(inferer.padding_mode) != "constant" or inferer.cval != 0
        or inferer.buffer_steps is not None or inferer.with_coord
    ):
        return None
    roi = (int(roi_size[0]), int(roi_size[1]), int(roi_size[2]))
    return Window(roi, float(overlap[0]), str(inferer.mode), float(sigma_scale[0]))


def _load_weights(bundle: Bundle, network: torch.nn.Module) -> torch.nn.Module:
    if bundle.weights.suffix == ".ts":
        return torch.jit.load(str(bundle.weights), map_location="cpu")  # type: ignore[no-any-return]
    try:
        checkpoint = torch.load(bundle.weights, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise InvalidBundle(f"{bundle.path}: {bundle.weights.name} cannot be read as weights (tensors and plain data "
                            f"only: a checkpoint holding code or other objects is not loaded): {error}") from error
    try:
        network.load_state_dict(_network_state(checkpoint, set(network.state_dict()), bundle))
    except RuntimeError as error:
        raise InvalidBundle(f"{bundle.path}: the weights do not fit network_def: {error}") from error
    return network


_PARALLEL_PREFIX = "module."  # how DataParallel and DistributedDataParallel name what they wrap


def _network_state(checkpoint: object, names: set[str], bundle: Bundle) -> dict[str, torch.Tensor]:
    """The network's weights in a checkpoint: the file itself (a bundle
    saves its one network so), or, in a training checkpoint that keeps the
    optimizer's state and the epoch beside it under names the training chose,
    the one entry whose tensors bear the network's names; each with the
    prefix of a network trained wrapped for several GPUs taken off."""
    def unwrapped(state: dict) -> dict:
        if state and all(key.startswith(_PARALLEL_PREFIX) for key in state) and not names & state.keys():
            return {key[len(_PARALLEL_PREFIX):]: value for key, value in state.items()}
        return state

    def is_state(value: object) -> bool:
        return isinstance(value, dict) and bool(value) and all(
            isinstance(key, str) and isinstance(tensor, torch.Tensor) for key, tensor in value.items())

    if is_state(checkpoint):
        return unwrapped(checkpoint)  # type: ignore[arg-type]
    entries = checkpoint.items() if isinstance(checkpoint, dict) else ()
    fitting = [key for key, value in entries if is_state(value) and unwrapped(value).keys() == names]
    if len(fitting) != 1:
        held = ", ".join(sorted(repr(key) for key, value in entries if is_state(value))) or "no weights by name"
        raise InvalidBundle(f"{bundle.path}: {bundle.weights.name} holds {held}; "
                            f"{'none' if not fitting else 'more than one'} of them fits network_def")
    return unwrapped(checkpoint[fitting[0]])  # type: ignore[index]

"""A bundle's network, loaded once, turning volumes into label maps.

The bundle's own `preprocessing` resamples to its working spacing, its
`inferer` runs the network over patches, and its `postprocessing` inverts the
resampling (MONAI `Invertd`) so that labels land on the source grid and
measurements are right for any valid geometry.
"""

import os

import numpy as np
import torch
from monai.data import MetaTensor

from inference.bundle import Bundle
from inference.errors import InvalidBundle
from inference.timings import Timings
from inference.volume import Volume


def choose_device(wanted: str = "auto") -> torch.device:
    """MEDAIFLOW_DEVICE: `auto` takes CUDA when present; `cuda` insists on it."""
    if wanted == "cpu":
        return torch.device("cpu")
    if wanted == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("MEDAIFLOW_DEVICE=cuda but no CUDA device is available")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Segmenter:
    def __init__(self, bundle: Bundle, device: torch.device | None = None) -> None:
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

    def segment(self, volume: Volume, timings: Timings | None = None) -> np.ndarray:
        """uint8 labels, one per voxel of `volume`."""
        timings = timings or Timings()
        image = MetaTensor(torch.from_numpy(np.ascontiguousarray(volume.voxels)[None]), affine=torch.from_numpy(volume.affine))
        with torch.inference_mode():
            with timings.stage("preprocessing"):
                data = self.preprocessing({"image": image})
            with timings.stage("network"):
                batch = data["image"][None].to(self.device)
                with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
                    prediction = self.inferer(batch, self.network)
                data["pred"] = prediction[0].float().cpu()
            with timings.stage("postprocessing"):
                data = self.postprocessing(data)
        labels = np.asarray(data["pred"])[0].astype(np.uint8)
        if labels.shape != volume.voxels.shape:
            raise InvalidBundle(
                f"{self.bundle.card.key}: postprocessing gave labels of shape {labels.shape} "
                f"for a volume of shape {volume.voxels.shape}; it must invert its resampling"
            )
        return labels


def _load_weights(bundle: Bundle, network: torch.nn.Module) -> torch.nn.Module:
    if bundle.weights.suffix == ".ts":
        return torch.jit.load(str(bundle.weights), map_location="cpu")  # type: ignore[no-any-return]
    state = torch.load(bundle.weights, map_location="cpu", weights_only=True)
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise InvalidBundle(f"{bundle.path}: the weights do not fit network_def: {error}") from error
    return network

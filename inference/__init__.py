"""MONAI inference (bundles, volumes, batched runs); empty until the inference issue lands."""

"""Patch encoders (timm registry), the tile dataset, and batched extraction to HDF5."""
from __future__ import annotations

from milkit.features.encoders import ENCODERS, EncoderSpec, PatchEncoder, create_encoder, list_encoders

__all__ = ["ENCODERS", "EncoderSpec", "PatchEncoder", "create_encoder", "list_encoders"]

"""Physical resolution (µm per level-0 pixel) of a slide, from a fixed chain of sources.

Order: OpenSlide's ``openslide.mpp-x/y`` → vendor properties → TIFF resolution tags → a per-slide value
(CSV column) or the config override. With ``force=True`` the override wins over the slide's metadata.
There is no magnification guess: when nothing is found the slide fails with a message that lists what was
tried. Metadata values outside ``PLAUSIBLE_MPP`` (e.g. a 72-dpi screen default, 352.8 µm/px) are ignored.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from milkit.errors import DataError

__all__ = ["MppResult", "resolve_mpp", "mpp_from_resolution", "objective_power", "PLAUSIBLE_MPP"]

PLAUSIBLE_MPP = (0.01, 50.0)
_UNIT_UM = {"centimeter": 1e4, "cm": 1e4, "inch": 25400.0, "in": 25400.0, "millimeter": 1e3, "mm": 1e3}


@dataclass(frozen=True)
class MppResult:
    mpp: float | None
    source: str          # openslide | vendor:<key> | tiff | override | none
    tried: tuple[str, ...] = ()


def _float(value: object) -> float | None:
    try:
        out = float(str(value).strip().strip('"'))
    except (TypeError, ValueError):
        return None
    return out if out > 0 else None


def _philips(value: str) -> float | None:
    # DICOM pixel spacing in mm, e.g. '"0.000227" "0.000227"'
    first = _float(re.split(r"\s+", value.strip())[0])
    return None if first is None else first * 1e3


_VENDOR_KEYS = {
    "aperio.MPP": _float,
    "mirax.LAYER_0_LEVEL_0_SECTION.MICROMETER_PER_PIXEL_X": _float,
    "philips.DICOM_PIXEL_SPACING": _philips,
    "ventana.ScanRes": _float,
    "hamamatsu.mpp": _float,
}


def mpp_from_resolution(x_resolution: object, unit: object) -> float | None:
    """µm per pixel from a TIFF/PNG resolution (pixels per ``unit``); None when the unit is not physical."""
    res = _float(x_resolution)
    scale = _UNIT_UM.get(str(unit).strip().lower())
    if res is None or scale is None:
        return None
    return scale / res


def objective_power(properties: Mapping[str, str]) -> float | None:
    """Scanner objective power from OpenSlide or Aperio properties, when the file records it."""
    for key in ("openslide.objective-power", "aperio.AppMag"):
        value = _float(properties.get(key))
        if value is not None:
            return value
    return None


def resolve_mpp(
    properties: Mapping[str, str],
    tiff_resolution: tuple[object, object] | None = None,
    override: float | None = None,
    force: bool = False,
) -> MppResult:
    """Walk the chain and return the first plausible value; ``tiff_resolution`` is ``(x_resolution, unit)``."""
    tried: list[str] = []

    def ok(value: float | None, what: str) -> bool:
        if value is None:
            return False
        if not PLAUSIBLE_MPP[0] <= value <= PLAUSIBLE_MPP[1]:
            tried.append(f"{what}={value:.4g} (implausible)")
            return False
        return True

    if force and override is not None:
        return MppResult(float(override), "override", tuple(tried))
    xs = [_float(properties.get(k)) for k in ("openslide.mpp-x", "openslide.mpp-y")]
    xs = [v for v in xs if v is not None]
    if xs and ok(sum(xs) / len(xs), "openslide.mpp"):
        return MppResult(sum(xs) / len(xs), "openslide", tuple(tried))
    for key, parse in _VENDOR_KEYS.items():
        if key in properties and ok(value := parse(properties[key]), key):
            return MppResult(value, f"vendor:{key}", tuple(tried))
    res = tiff_resolution
    if res is None and "tiff.XResolution" in properties:
        res = (properties["tiff.XResolution"], properties.get("tiff.ResolutionUnit"))
    if res is not None and ok(value := mpp_from_resolution(*res), "resolution tag"):
        return MppResult(value, "tiff", tuple(tried))
    if override is not None:
        return MppResult(float(override), "override", tuple(tried))
    return MppResult(None, "none", tuple(tried))


def require_mpp(result: MppResult, path: object) -> float:
    """The resolved value, or a one-line DataError naming the file and the sources tried."""
    if result.mpp is None:
        seen = f"; ignored {', '.join(result.tried)}" if result.tried else ""
        raise DataError(
            f"{path}: no microns-per-pixel found (openslide mpp, vendor properties, TIFF resolution tags{seen}); "
            "give it with slide_mpp=<µm/px> or an 'mpp' column in the slide CSV"
        )
    return result.mpp

"""Per-language binary keep-masks over the prunable weights, stored bit-packed.

A language costs one bit per prunable parameter: for each language one flat ``uint8``
buffer holds every prunable tensor's mask, each tensor's segment starting on a byte
boundary, bits most-significant first (as ``numpy.packbits``). Languages are independent
buffers, so adding or removing one never touches the others.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

# Module-path components whose linear weights are prunable by default: the transformer
# encoder's attention q/k/v/out and feed-forward in/out projections. Other accepted
# components: "feature_projection", "ctc_head".
DEFAULT_SCOPE: tuple[str, ...] = ("attention", "feed_forward")

_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.int32)
_UNPACK_LUT = torch.tensor(
    [[(b >> (7 - i)) & 1 for i in range(8)] for b in range(256)], dtype=torch.bool
)  # [256, 8]: byte value -> its bits, MSB first
_POPCOUNT = torch.tensor([bin(b).count("1") for b in range(256)], dtype=torch.int64)
_LUT_BY_DEVICE: dict[tuple[torch.device, torch.dtype], Tensor] = {}


def prunable_parameter_names(model: nn.Module, scope: Sequence[str] = DEFAULT_SCOPE) -> list[str]:
    """Names of the 2-D weights of ``nn.Linear`` modules whose path has a component in ``scope``."""
    wanted = set(scope)
    names = []
    for path, module in model.named_modules():
        if isinstance(module, nn.Linear) and wanted.intersection(path.split(".")):
            names.append(f"{path}.weight")
    return names


def pack_bits(mask: Tensor) -> Tensor:
    """Bool tensor of any shape -> ``uint8 [ceil(numel / 8)]`` (MSB first, zero padded)."""
    flat = mask.reshape(-1).to(torch.int32)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = _BIT_WEIGHTS.to(flat.device)
    return (flat.view(-1, 8) * weights).sum(dim=1).to(torch.uint8)


def _lut(device: torch.device, dtype: torch.dtype = torch.bool) -> Tensor:
    """The [256, 8] byte -> bits table as ``dtype`` on ``device`` (built once per pair)."""
    key = (device, dtype)
    lut = _LUT_BY_DEVICE.get(key)
    if lut is None:
        lut = _LUT_BY_DEVICE.setdefault(key, _UNPACK_LUT.to(device, dtype))
    return lut


def unpack_bits(packed: Tensor, numel: int) -> Tensor:
    """``uint8 [n]`` -> bool ``[numel]`` (inverse of :func:`pack_bits`)."""
    lut = _lut(packed.device)
    # One gather from a 256x8 table: far fewer passes than shift-and-mask.
    bits = torch.index_select(lut, 0, packed.to(torch.int32)).view(-1)
    return bits[:numel]


def popcount(packed: Tensor) -> int:
    """Number of set bits in a packed ``uint8`` tensor."""
    table = _POPCOUNT.to(packed.device)
    total = 0
    for chunk in packed.split(1 << 22):  # bound the int64 temporary
        total += int(table[chunk.long()].sum())
    return total


@dataclass
class MaskStats:
    """Statistics of a set of language masks (all counts in parameters)."""

    total_parameters: int
    kept: dict[str, int]  # parameters kept per language
    density: dict[str, float]  # kept / total per language
    jaccard: dict[str, dict[str, float]]  # pairwise |A and B| / |A or B|
    kept_by_all: float  # fraction of parameters kept by every language
    specific: dict[str, int]  # parameters kept by this language and no other

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


class LanguageMasks:
    """Bit-packed keep-masks, one per (language, prunable tensor), on one device."""

    def __init__(
        self, shapes: Mapping[str, torch.Size | Sequence[int]], device: torch.device | str = "cpu"
    ):
        self.shapes: dict[str, torch.Size] = {n: torch.Size(s) for n, s in shapes.items()}
        self.device = torch.device(device)
        # name -> (first byte, number of bytes, number of elements) inside a language's buffer
        self._segments: dict[str, tuple[int, int, int]] = {}
        offset = 0
        for name, shape in self.shapes.items():
            numel = math.prod(shape)
            nbytes = (numel + 7) // 8
            self._segments[name] = (offset, nbytes, numel)
            offset += nbytes
        self._nbytes = offset
        self._packed: dict[str, Tensor] = {}
        # A fresh number on every add: caches key on it, so a re-added language never
        # reuses a stale materialized weight.
        self._generation: dict[str, int] = {}
        self._counter = itertools.count()

    @property
    def languages(self) -> list[str]:
        """Languages with masks, in the order they were added."""
        return list(self._packed)

    def __contains__(self, language: object) -> bool:
        return language in self._packed

    def __len__(self) -> int:
        return len(self._packed)

    def bytes_per_language(self) -> int:
        """Bytes one language occupies: sum of ceil(numel / 8) over the prunable tensors."""
        return self._nbytes

    def generation(self, language: str) -> int:
        """A number that changes whenever ``language``'s masks are (re)added."""
        return self._generation[language]

    def add(self, language: str, masks: Mapping[str, Tensor]) -> None:
        """Add a language from bool keep-masks, one per prunable tensor name (True = kept)."""
        if language in self._packed:
            raise ValueError(f"language {language!r} already has masks; remove it first")
        missing = set(self.shapes) - set(masks)
        unknown = set(masks) - set(self.shapes)
        if missing or unknown:
            raise ValueError(
                f"masks for {language!r}: missing {sorted(missing)[:3]}, "
                f"unknown {sorted(unknown)[:3]}"
            )
        parts = []
        for name, shape in self.shapes.items():
            m = masks[name]
            if m.dtype != torch.bool:
                raise ValueError(f"mask {name!r} for {language!r} must be bool, got {m.dtype}")
            if m.shape != shape:
                raise ValueError(
                    f"mask {name!r} for {language!r} has shape {tuple(m.shape)}, "
                    f"expected {tuple(shape)}"
                )
            parts.append(pack_bits(m.to(self.device)))
        buf = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.uint8, device=self.device)
        self._set_packed(language, buf)

    def add_packed(self, language: str, buf: Tensor) -> None:
        """Add a language from its packed buffer (``uint8 [bytes_per_language()]``, the layout
        of :meth:`packed`), as a language pack stores it; ValueError when it does not fit."""
        if language in self._packed:
            raise ValueError(f"language {language!r} already has masks; remove it first")
        if buf.dtype != torch.uint8 or buf.dim() != 1 or buf.numel() != self._nbytes:
            raise ValueError(
                f"packed masks of {language!r} have {buf.numel()} {buf.dtype} elements, "
                f"expected {self._nbytes} uint8"
            )
        self._set_packed(language, buf)

    def _set_packed(self, language: str, buf: Tensor) -> None:
        self._packed[language] = buf.to(self.device, torch.uint8).contiguous()
        self._generation[language] = next(self._counter)

    def remove(self, language: str) -> None:
        """Drop one language's masks; the others are untouched."""
        if language not in self._packed:
            raise KeyError(f"language {language!r} has no masks")
        del self._packed[language]
        del self._generation[language]

    def packed(self, language: str, name: str | None = None) -> Tensor:
        """The packed ``uint8`` buffer of a language, or of one tensor inside it (a view)."""
        try:
            buf = self._packed[language]
        except KeyError:
            raise KeyError(f"language {language!r} has no masks") from None
        if name is None:
            return buf
        start, nbytes, _ = self._segments[name]
        return buf[start : start + nbytes]

    def get(self, language: str, name: str) -> Tensor:
        """Unpacked bool keep-mask of one tensor for one language, shape ``shapes[name]``."""
        if name not in self._segments:
            raise KeyError(f"{name!r} is not a prunable tensor of these masks")
        _, _, numel = self._segments[name]
        return unpack_bits(self.packed(language, name), numel).view(self.shapes[name])

    def unpack_into(self, language: str, name: str, out: Tensor) -> Tensor:
        """Unpack one tensor's mask into a preallocated tensor of ``shapes[name]``.

        ``out`` may be bool or floating (1.0 kept, 0.0 pruned): a float mask is one gather
        from a float table, and multiplying by it is much cheaper than ``torch.where``.
        """
        _, nbytes, numel = self._segments[name]
        packed = self.packed(language, name)
        if numel % 8:  # the padded tail does not fit ``out``: take the allocating path
            return out.copy_(self.get(language, name))
        lut = _lut(packed.device, out.dtype)
        torch.index_select(lut, 0, packed.to(torch.int32), out=out.view(nbytes, 8))
        return out

    def to(self, device: torch.device | str) -> LanguageMasks:
        """Move every buffer to ``device`` (in place); returns self."""
        self.device = torch.device(device)
        self._packed = {k: v.to(self.device) for k, v in self._packed.items()}
        return self

    def stats(self) -> MaskStats:
        """Density, pairwise Jaccard overlap, kept-by-all fraction, language-specific counts."""
        langs = self.languages
        total = sum(numel for _, _, numel in self._segments.values())
        kept = {lang: popcount(self._packed[lang]) for lang in langs}
        jaccard: dict[str, dict[str, float]] = {a: {a: 1.0} for a in langs}
        for a, b in itertools.combinations(langs, 2):
            pa, pb = self._packed[a], self._packed[b]
            inter = popcount(pa & pb)
            union = kept[a] + kept[b] - inter
            jaccard[a][b] = jaccard[b][a] = inter / union if union else 1.0
        all_kept = 0.0
        specific: dict[str, int] = {}
        if langs:
            both = self._packed[langs[0]].clone()
            once = torch.zeros_like(both)
            twice = torch.zeros_like(both)
            for lang in langs:
                p = self._packed[lang]
                both &= p
                twice |= once & p
                once |= p
            exactly_one = once & ~twice
            specific = {lang: popcount(self._packed[lang] & exactly_one) for lang in langs}
            all_kept = popcount(both) / total if total else 0.0
        return MaskStats(
            total_parameters=total,
            kept=kept,
            density={lang: kept[lang] / total if total else 0.0 for lang in langs},
            jaccard=jaccard,
            kept_by_all=all_kept,
            specific=specific,
        )

    def state_dict(self) -> dict[str, Tensor]:
        """``{language: packed uint8 buffer}``, ready for safetensors."""
        return {lang: buf.contiguous() for lang, buf in self._packed.items()}

    @classmethod
    def from_state_dict(
        cls,
        sd: Mapping[str, Tensor],
        shapes: Mapping[str, torch.Size | Sequence[int]],
        languages: Sequence[str] | None = None,
        device: torch.device | str = "cpu",
    ) -> LanguageMasks:
        """Rebuild from :meth:`state_dict`; ValueError when a buffer does not fit ``shapes``."""
        masks = cls(shapes, device)
        for lang in languages if languages is not None else list(sd):
            if lang not in sd:
                raise ValueError(f"no packed masks for language {lang!r}")
            buf = sd[lang]
            if buf.dtype != torch.uint8 or buf.dim() != 1 or buf.numel() != masks._nbytes:
                raise ValueError(
                    f"packed masks of {lang!r} have {buf.numel()} {buf.dtype} elements, expected "
                    f"{masks._nbytes} uint8 for the given tensor shapes"
                )
            masks._set_packed(lang, buf)
        return masks

    @classmethod
    def full(
        cls,
        shapes: Mapping[str, torch.Size | Sequence[int]],
        languages: Sequence[str],
        device: torch.device | str = "cpu",
    ) -> LanguageMasks:
        """Masks keeping every parameter for each language (the unpruned starting point)."""
        masks = cls(shapes, device)
        for lang in languages:
            masks.add(lang, {n: torch.ones(s, dtype=torch.bool) for n, s in masks.shapes.items()})
        return masks

"""Backbone configurations: named presets mirroring ``torchaudio.models.wav2vec2_model``.

Every preset turns 16 kHz audio into 50 frames per second: the conv strides multiply
to 320 samples (20 ms).
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields, replace
from typing import Any, Literal, get_args

SAMPLE_RATE = 16_000
FRAME_STRIDE = 320  # samples per encoder frame for every preset (product of conv strides)

ExtractorMode = Literal["group_norm", "layer_norm"]

# What the LID head reads: "features" = the shared conv features (no transformer pass);
# "encoder" = the output of a dense transformer pass (one extra pass, far more accurate:
# the conv features' statistics carry the voice more than the phonetics).
LidInput = Literal["features", "encoder"]
LID_INPUTS: tuple[LidInput, ...] = get_args(LidInput)


def check_lid_input(value: str) -> LidInput:
    """``value`` if it names a LID head input (:data:`LID_INPUTS`); ValueError otherwise."""
    if value not in LID_INPUTS:
        raise ValueError(f"lid_input must be one of {LID_INPUTS}, got {value!r}")
    return value  # type: ignore[return-value]


# wav2vec 2.0's conv feature encoder: (channels, kernel, stride) per layer.
_W2V2_CONV: tuple[tuple[int, int, int], ...] = (
    ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2
)
_TINY_CONV: tuple[tuple[int, int, int], ...] = (
    ((128, 10, 5),) + ((128, 3, 2),) * 4 + ((128, 2, 2),) * 2
)


@dataclass(frozen=True)
class BackboneConfig:
    """Architecture of the wav2vec 2.0 backbone; field names follow torchaudio's builder."""

    name: str
    extractor_mode: ExtractorMode
    extractor_conv_layer_config: tuple[tuple[int, int, int], ...]  # (channels, kernel, stride)
    extractor_conv_bias: bool
    encoder_embed_dim: int
    encoder_projection_dropout: float
    encoder_pos_conv_kernel: int
    encoder_pos_conv_groups: int
    encoder_num_layers: int
    encoder_num_heads: int
    encoder_attention_dropout: float
    encoder_ff_interm_features: int
    encoder_ff_interm_dropout: float
    encoder_dropout: float
    encoder_layer_norm_first: bool
    encoder_layer_drop: float
    # Zero-mean/unit-variance each waveform over its valid samples before the conv encoder
    # (what XLS-R expects: its feature extractor's ``do_normalize``). Inside the model, so
    # training and serving always agree; False keeps raw samples (wav2vec 2.0 base, HF
    # checkpoints without ``do_normalize``).
    normalize_waveform: bool = False

    def __post_init__(self) -> None:
        if self.extractor_mode not in ("group_norm", "layer_norm"):
            raise ValueError(
                f"extractor_mode must be group_norm or layer_norm, got {self.extractor_mode!r}"
            )
        if self.encoder_embed_dim % self.encoder_num_heads:
            raise ValueError(
                f"encoder_embed_dim={self.encoder_embed_dim} is not divisible by "
                f"encoder_num_heads={self.encoder_num_heads}"
            )
        if not self.extractor_conv_layer_config:
            raise ValueError("extractor_conv_layer_config must have at least one layer")

    @property
    def frame_stride(self) -> int:
        """Samples per output frame (product of the conv strides)."""
        stride = 1
        for _, _, s in self.extractor_conv_layer_config:
            stride *= s
        return stride

    @property
    def receptive_field(self) -> int:
        """Samples seen by one output frame of the conv feature encoder."""
        field, jump = 1, 1
        for _, k, s in self.extractor_conv_layer_config:
            field += (k - 1) * jump
            jump *= s
        return field

    @property
    def feature_dim(self) -> int:
        """Channels of the conv feature encoder's output."""
        return self.extractor_conv_layer_config[-1][0]

    def torchaudio_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``torchaudio.models.wav2vec2_model`` (everything but name)."""
        d = asdict(self)
        d.pop("name")
        d.pop("normalize_waveform")  # applied by LassModel.extract_features, not torchaudio
        d["extractor_conv_layer_config"] = [tuple(x) for x in self.extractor_conv_layer_config]
        return d

    def with_dropout(self, p: float = 0.0, layer_drop: float | None = None) -> BackboneConfig:
        """The same architecture with every dropout set to ``p`` (and layer drop, default ``p``)."""
        return replace(
            self,
            encoder_projection_dropout=p,
            encoder_attention_dropout=p,
            encoder_ff_interm_dropout=p,
            encoder_dropout=p,
            encoder_layer_drop=p if layer_drop is None else layer_drop,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        d = asdict(self)
        d["extractor_conv_layer_config"] = [list(x) for x in self.extractor_conv_layer_config]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackboneConfig:
        """Inverse of :meth:`to_dict`; unknown keys, or missing keys without a default,
        raise ``ValueError`` (a field added later with a default, e.g. ``normalize_waveform``,
        keeps older configs readable).
        """
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING}
        unknown = set(d) - names
        missing = required - set(d)
        if unknown or missing:
            raise ValueError(
                f"BackboneConfig: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}"
            )
        kw = dict(d)
        kw["extractor_conv_layer_config"] = tuple(
            (int(c), int(k), int(s)) for c, k, s in d["extractor_conv_layer_config"]
        )
        return cls(**kw)


def _preset(
    name: str,
    *,
    mode: ExtractorMode,
    conv: tuple[tuple[int, int, int], ...],
    conv_bias: bool,
    dim: int,
    layers: int,
    heads: int,
    ffn: int,
    ln_first: bool,
    dropout: float,
    layer_drop: float,
    normalize: bool,
) -> BackboneConfig:
    return BackboneConfig(
        name=name,
        extractor_mode=mode,
        extractor_conv_layer_config=conv,
        extractor_conv_bias=conv_bias,
        encoder_embed_dim=dim,
        encoder_projection_dropout=dropout,
        encoder_pos_conv_kernel=128,
        encoder_pos_conv_groups=16,
        encoder_num_layers=layers,
        encoder_num_heads=heads,
        encoder_attention_dropout=dropout,
        encoder_ff_interm_features=ffn,
        encoder_ff_interm_dropout=dropout,
        encoder_dropout=dropout,
        encoder_layer_norm_first=ln_first,
        encoder_layer_drop=layer_drop,
        normalize_waveform=normalize,
    )


PRESETS: dict[str, BackboneConfig] = {
    # ~5.6M parameters: trains to a usable 4-language model on 2 CPU cores in under an hour.
    # Layer-norm conv extractor: per-frame normalisation, so padding never leaks into features.
    "tiny": _preset(
        "tiny",
        mode="layer_norm",
        conv=_TINY_CONV,
        conv_bias=True,
        dim=256,
        layers=6,
        heads=4,
        ffn=1024,
        ln_first=True,
        dropout=0.1,
        layer_drop=0.0,
        normalize=True,
    ),
    # wav2vec 2.0 base (Baevski et al. 2020), ~95M parameters.
    "base": _preset(
        "base",
        mode="group_norm",
        conv=_W2V2_CONV,
        conv_bias=False,
        dim=768,
        layers=12,
        heads=12,
        ffn=3072,
        ln_first=False,
        dropout=0.1,
        layer_drop=0.1,
        normalize=False,
    ),
    # XLS-R (Babu et al. 2021): layer-norm extractor, stable (pre-)layer norm.
    "xls-r-300m": _preset(
        "xls-r-300m",
        mode="layer_norm",
        conv=_W2V2_CONV,
        conv_bias=True,
        dim=1024,
        layers=24,
        heads=16,
        ffn=4096,
        ln_first=True,
        dropout=0.0,
        layer_drop=0.0,
        normalize=True,
    ),
    "xls-r-1b": _preset(
        "xls-r-1b",
        mode="layer_norm",
        conv=_W2V2_CONV,
        conv_bias=True,
        dim=1280,
        layers=48,
        heads=16,
        ffn=5120,
        ln_first=True,
        dropout=0.0,
        layer_drop=0.0,
        normalize=True,
    ),
    "xls-r-2b": _preset(
        "xls-r-2b",
        mode="layer_norm",
        conv=_W2V2_CONV,
        conv_bias=True,
        dim=1920,
        layers=48,
        heads=16,
        ffn=7680,
        ln_first=True,
        dropout=0.0,
        layer_drop=0.0,
        normalize=True,
    ),
}


def get_preset(name: str) -> BackboneConfig:
    """A named preset: ``tiny``, ``base``, ``xls-r-300m``, ``xls-r-1b``, ``xls-r-2b``."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown backbone preset {name!r}; choose one of {sorted(PRESETS)}"
        ) from None

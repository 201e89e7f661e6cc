"""A compiled conv feature encoder for serving :class:`~model.network.LassModel` on the CPU.

What is compiled, and why only that (measured: docs/benchmarks.md, "Compiled forward"):
the dense conv feature encoder is most of a ``tiny`` forward's CPU time, and much of it is
memory-bound work around the convolutions (the extractor transposes each layer's output
for its layer norm, then GELU) that ``torch.compile`` (inductor) fuses: it ran in about
half the eager time. The transformer with per-language weights, compiled as one layer
graph fed each language's ``W ⊙ M``, ran no faster than the eager mixed-language path
(its matmuls are compute-bound and stay the same MKL calls), so it stays eager: the
masked layers still run every language group of a mixed batch with ``W ⊙ M_lang``.

Shapes: the graph never sees a new length. Every clip is cut into fixed windows of
``window_frames`` output frames plus the receptive field's overlap, stacked along the
batch. The conv layers have no padding and their strides divide the window step, so each
frame is computed from exactly the samples it is computed from unwindowed, and only the
number of windows varies. A dynamic length would not do: the conv's shape arithmetic
guards on ranges of it (one graph per doubling of the length, each taking a minute to
compile). A window count of one has its own graph (size 1 is specialised);
:meth:`CompiledFeatures.warm_up` compiles both before the server is ready. Windows that
hold only padding are not computed (their frames are masked out of attention anyway).

The group-norm extractor (``base``) normalises its first layer over the whole clip, so
that layer runs eagerly first and the windows start at the second. That costs more CPU
than it saves (0.80x: the padding-aware group norm over 512 channels, windows cut from 512
channels), so the server's ``LASS_COMPILE=auto`` leaves group-norm models eager.
"""

from __future__ import annotations

import logging
import shutil
import time

import torch
import torch.nn.functional as F
from torch import Tensor

from model.network import LassModel, ModelOutput, normalize_waveforms

log = logging.getLogger("lass.compiled")


def compile_supported() -> bool:
    """Whether ``torch.compile`` can run here: inductor's CPU code needs a C++ compiler."""
    return any(shutil.which(cc) for cc in ("c++", "g++", "clang++"))


class CompiledFeatures:
    """``LassModel.extract_features`` through one compiled graph of fixed-length windows.

    Inference only; calls may run in several threads at once (the graph is compiled by
    :meth:`warm_up` first, so no thread compiles while serving). Features at valid
    frames equal the eager ones within float rounding; at padded frames they are zeros or
    whatever the padding gives (the transformer masks them out).
    """

    def __init__(self, model: LassModel, window_frames: int = 20):
        if window_frames < 1:
            raise ValueError("window_frames must be >= 1")
        self.model = model
        # 20 frames (0.4 s): the windows overlap by the receptive field minus one step (80
        # samples: 1.2 % more work) and a clip's last window is on average half empty.
        self.window_frames = window_frames
        self._first = 1 if model.config.extractor_mode == "group_norm" else 0
        self._stride, self._field = 1, 1  # of one output frame, in the windowed input
        for _, kernel, stride in model.config.extractor_conv_layer_config[self._first :]:
            self._field += (kernel - 1) * self._stride
            self._stride *= stride
        # cpp_wrapper: the graph runs from C++ with the GIL released, so the server's model
        # threads run it side by side (inductor's Python wrapper holds the GIL through its
        # fused kernels: two threads ran the conv 1.60x as fast as one, now 2.13x).
        self._conv = torch.compile(self._conv_eager, dynamic=True, options={"cpp_wrapper": True})

    def _conv_eager(self, windows: Tensor) -> Tensor:
        """windows ``[N, C, W]`` -> the windowed conv layers' output ``[N, C', n]``."""
        x = windows
        for layer in self.model.feature_extractor.conv_layers[self._first :]:
            x, _ = layer(x, None)
        return x

    def __call__(self, waveforms: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """waveforms ``[B, T]``, lengths ``[B]`` samples -> conv features ``[B, F, C]`` and
        valid frames ``[B]``, the shapes ``LassModel.extract_features`` gives."""
        if waveforms.dim() != 2:
            raise ValueError(f"waveforms must be [batch, time], got {tuple(waveforms.shape)}")
        model = self.model
        if model.config.normalize_waveform:
            waveforms = normalize_waveforms(waveforms, lengths)
        x = waveforms.unsqueeze(1)  # [B, 1, T]
        inner = lengths  # valid steps of x
        if self._first == 1:  # group norm over each sample's valid frames: the whole clip
            x, first_frames = model._masked_group_norm_block(
                model.feature_extractor.conv_layers[0], x, lengths
            )
            assert first_frames is not None
            inner = first_frames
        b, c, t = x.shape
        n, stride, field = self.window_frames, self._stride, self._field
        frames = max(1, (t - field) // stride + 1)  # the eager conv's (at least 1 window)
        count = -(-frames // n)  # windows per sample
        step, width = n * stride, n * stride + field - stride
        x = F.pad(x, (0, max(0, (count - 1) * step + width - t)))
        # [B, C, count, W] -> [B * count, C, W]; contiguous: the graph guards on strides
        windows = x.unfold(2, width, step).permute(0, 2, 1, 3).reshape(b * count, c, width)
        # Only windows with a valid frame: the rest of a shorter sample is padding.
        valid = (inner - field).div(stride, rounding_mode="floor") + 1  # [B] frames
        used = torch.arange(count, device=x.device)[None, :] * n < valid[:, None]  # [B, count]
        if bool(used.all()):
            y = self._conv(windows.contiguous())
        else:
            keep = used.reshape(-1).nonzero().squeeze(1)
            part = self._conv(windows[keep].contiguous())
            y = part.new_zeros(b * count, *part.shape[1:])
            y[keep] = part
        # [B * count, C', n] -> [B, count * n, C'] -> the eager frame count
        y = y.reshape(b, count, y.shape[1], n).permute(0, 1, 3, 2).reshape(b, count * n, -1)
        return y[:, :frames], model.frame_lengths(lengths)

    def forward(self, waveforms: Tensor, lengths: Tensor, lang_ids: Tensor | None) -> ModelOutput:
        """``LassModel.forward`` with the compiled features (transformer: the eager
        mixed-language path). waveforms ``[B, T]``, lengths ``[B]``, lang_ids ``[B]``."""
        features, frames = self(waveforms, lengths)
        return self.model.forward_features(features, frames, lang_ids)

    def identify_language(self, waveforms: Tensor, lengths: Tensor) -> Tensor:
        """``LassModel.identify_language`` with the compiled features -> logits ``[B, L]``."""
        head = self.model.lid_head
        if head is None:
            raise RuntimeError("this model has no language identification head")
        features, frames = self(waveforms, lengths)
        if self.model.lid_input == "encoder":  # a dense transformer pass
            features = self.model.encode(features, frames, None)
        return head(features, frames)

    def warm_up(self) -> float:
        """Compile the graph for one window and for several (with padding windows skipped),
        so that none is compiled while serving. Returns the seconds it took."""
        start = time.perf_counter()
        like = self.model.mask_embedding
        gen = torch.Generator().manual_seed(0)
        for batch, seconds in ((1, 0.2), (3, 2.0)):
            samples = int(seconds * 16_000)
            waves = (0.01 * torch.randn(batch, samples, generator=gen)).to(like.device, like.dtype)
            lengths = torch.full((batch,), samples, device=like.device)
            lengths[-1] = samples // 3  # padding inside the batch
            self(waves, lengths)
        took = time.perf_counter() - start
        log.info("compiled the conv feature encoder in %.1f s", took)
        return took

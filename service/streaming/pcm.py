"""A stream's raw frames to 16 kHz mono float32: ``model.audio``'s :class:`PcmFormat` and
:class:`PcmConverter`, the one converter behind streams, raw PCM uploads and files (channels
averaged, swresample keeping its filter state from frame to frame).

The stream routers map what a declaration or a frame raises (``model.audio.AudioError``,
named ``PcmFormatError`` here) to close codes and error events.
"""

from __future__ import annotations

from model.audio import AudioError, PcmConverter, PcmFormat

PcmFormatError = AudioError

__all__ = ["PcmConverter", "PcmFormat", "PcmFormatError"]

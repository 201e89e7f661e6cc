"""Audio input: any upload -> float32 mono samples at 16 kHz, with HTTP-ready errors.

``decode_audio`` sniffs the container from its first bytes (the filename and content type
are only hints: clients lie about both) and opens it only if it is one of
``ALLOWED_CONTAINERS``; it reads WAV/FLAC through soundfile (fast path) and the others
(mp3, ogg/opus/vorbis, webm/matroska, mp4/m4a/mov, aac/adts, aiff, caf) through PyAV,
averages the channels and resamples to 16 kHz with PyAV's swresample (measured faster than
``torchaudio.functional.resample`` for a 4 s clip from 22.05/44.1/48 kHz; see
docs/benchmarks.md). ``decode_pcm`` reads raw s16le.

Why an allow-list: FFmpeg picks a demuxer by probing the bytes, and some demuxers open
other things: a concat list (``ffconcat``) or an HLS playlist opens the files it names, an
SDP description binds UDP ports. An upload is therefore opened with one explicit demuxer
from the allow-list, reading only the in-memory bytes, with no protocol allowed for
nested opens (``_DEMUXER_OPTIONS``); error messages never carry FFmpeg's text about
files (docs/reliability.md).

Upload size: ``BodySizeLimitMiddleware`` (ASGI) and ``read_limited`` count bytes as they
stream in and stop at the limit, so an oversized upload is never held in memory.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import av
import numpy as np
import soundfile as sf
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import openai_error_body

TARGET_RATE = 16_000
MAX_CHANNELS = 64
# Sample rates accepted, files and raw PCM alike: telephone (8 kHz) to studio (192 kHz).
# Outside it a tiny file becomes a huge job: a 3.6 KB WAV declaring 1 Hz is 1 799 s of
# 16 kHz audio; a 312 KB FLAC of silence at 384 kHz decoded for 94 s into 3.7 GB.
MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 192_000
PCM_RATE_RANGE = (MIN_SAMPLE_RATE, MAX_SAMPLE_RATE)
# libsndfile's frame count when the header does not say (SF_COUNT_MAX), e.g. a FLAC
# written to a pipe, whose STREAMINFO holds 0 samples.
_UNKNOWN_FRAMES = 2**63 - 1

# ---------------------------------------------------------------------------- errors


class AudioError(Exception):
    """An input problem the client caused; carries the HTTP status and OpenAI error fields."""

    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_audio"

    def __init__(self, message: str, param: str | None = "file") -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def to_dict(self) -> dict[str, Any]:
        """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
        return openai_error_body(self.message, self.error_type, self.param, self.code)


class EmptyAudioError(AudioError):
    """The upload has no bytes, or decodes to no samples (400)."""

    status_code = 400
    code = "empty_file"


class UnsupportedAudioError(AudioError):
    """Not audio we can decode: unknown container, no audio stream, corrupt header (415)."""

    status_code = 415
    code = "unsupported_audio"


class InvalidAudioError(AudioError):
    """Audio that decodes but holds values no microphone makes: NaN or infinite (400)."""

    status_code = 400
    code = "invalid_audio"


class InvalidAudioParameterError(AudioError):
    """A parameter that describes the audio is out of range, e.g. ``sample_rate`` (400)."""

    status_code = 400
    code = "invalid_value"


class AudioTooLongError(AudioError):
    """Longer than the server's duration limit (413)."""

    status_code = 413
    code = "audio_too_long"


class UploadTooLargeError(AudioError):
    """More bytes than the server's upload limit (413)."""

    status_code = 413
    code = "file_too_large"


# ---------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class DecodedAudio:
    """Decoded audio ready for the model.

    ``samples``: float32 [T] at 16 kHz, mono (mean of the input channels), in [-1, 1].
    """

    samples: np.ndarray
    duration: float
    original_rate: int
    channels: int
    format: str
    codec: str


# Containers lass opens, each with the one FFmpeg demuxer that reads it. None of these
# demuxers opens another file or a network stream (mov's external data references are off:
# ``enable_drefs``). Anything else (concat lists, playlists, SDP, image sequences, ...)
# is refused before FFmpeg sees it.
ALLOWED_CONTAINERS: dict[str, str] = {
    "wav": "wav",
    "flac": "flac",
    "mp3": "mp3",
    "ogg": "ogg",
    "webm": "matroska",
    "matroska": "matroska",
    "mp4": "mov",  # mp4, m4a, mov, 3gp: one demuxer
    "aac": "aac",  # ADTS
    "aiff": "aiff",
    "caf": "caf",
}
# Options for every demuxer: a protocol allow-list naming no real protocol, so a nested
# open (which needs a protocol: file, http, udp, ...) always fails; only the demuxers above
# may be used, also by anything nested; mov/mp4 must not follow external references.
# The main input is the in-memory stream PyAV passes as custom I/O, which needs none.
_DEMUXER_OPTIONS: dict[str, str] = {
    "protocol_whitelist": "none",
    "format_whitelist": ",".join(sorted(set(ALLOWED_CONTAINERS.values()))),
    "enable_drefs": "0",
    "use_absolute_path": "0",
}
# Box types that start a QuickTime/ISO media file (mp4, m4a, mov, 3gp).
_MP4_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})
_SUPPORTED = (
    "wav, flac, mp3, ogg (opus, vorbis, flac), webm/matroska, mp4/m4a/mov, aac (adts), aiff, caf"
)


def _id3_size(head: bytes) -> int | None:
    """Bytes of an ID3v2 tag at the start of ``head`` (header and footer included)."""
    if len(head) < 10 or head[:3] != b"ID3" or any(b & 0x80 for b in head[6:10]):
        return None
    size = 0
    for b in head[6:10]:  # four 7-bit bytes ("synchsafe")
        size = size << 7 | b
    footer = 10 if head[5] & 0x10 else 0
    return 10 + size + footer


def sniff_format(head: bytes) -> str | None:
    """Container name (a key of ``ALLOWED_CONTAINERS``) from the first bytes, or None.

    ``head``: the file's first bytes (>= 12 needed; for mp3/aac behind an ID3 tag, the
    bytes after the tag as well: ``decode_audio`` reads them).
    """
    if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm" if b"webm" in head[:64] else "matroska"
    if head[4:8] in _MP4_BOXES:
        return "mp4"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[:4] == b"caff":
        return "caf"
    tag = _id3_size(head)
    if tag is not None:
        # What follows the tag: ADTS AAC or FLAC may carry one too; else mp3's demuxer
        # (which resyncs past junk) decides.
        after = sniff_format(head[tag:]) if len(head) >= tag + 4 else None
        return after if after in ("aac", "flac") else "mp3"
    if len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        # 11 sync bits; then the layer field (bits 2-1) is 0 for ADTS, 1-3 for mpeg audio
        layer = (head[1] >> 1) & 0x3
        if layer == 0:
            return "aac" if head[1] & 0xF0 == 0xF0 else None
        return "mp3"
    return None


def _sniff_source(source: BinaryIO) -> tuple[bytes, str | None]:
    """(first bytes, ``sniff_format`` of the upload), reading past an ID3 tag when it is
    longer than the first 64 bytes (tags may hold cover art); leaves ``source`` at 0."""
    head = source.read(64)
    fmt = sniff_format(head)
    tag = _id3_size(head)
    if tag is not None and tag > len(head) - 4:
        source.seek(tag)
        after = sniff_format(source.read(16))
        fmt = after if after in ("aac", "flac") else "mp3"
    source.seek(0)
    return head, fmt


def _too_long(seconds: float, max_duration: float) -> AudioTooLongError:
    return AudioTooLongError(
        f"audio is longer than the limit of {max_duration:g} s (at least {seconds:.1f} s)"
    )


def _check_rate(rate: int) -> None:
    """UnsupportedAudioError (415) unless ``rate`` is within the supported range."""
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise UnsupportedAudioError(
            f"unsupported sample rate {rate} Hz: lass reads {MIN_SAMPLE_RATE} to "
            f"{MAX_SAMPLE_RATE} Hz"
        )


def _check_duration(frames: int, rate: int, max_duration: float | None) -> None:
    if max_duration is not None and frames > max_duration * rate:
        raise _too_long(frames / rate, max_duration)


def resample(samples: np.ndarray, rate: int, target: int = TARGET_RATE) -> np.ndarray:
    """Resample mono float32 [T] from ``rate`` to ``target`` Hz -> float32 [T'] (swresample)."""
    if rate == target or samples.size == 0:
        return np.ascontiguousarray(samples, dtype=np.float32)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target)
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(samples, dtype=np.float32)[None, :], format="flt", layout="mono"
    )
    frame.sample_rate = rate
    pieces = [f.to_ndarray()[0] for f in resampler.resample(frame)]
    pieces += [f.to_ndarray()[0] for f in resampler.resample(None)]  # flush the filter delay
    return np.concatenate(pieces).astype(np.float32, copy=False)


class _MonoStream:
    """Downmix (channel mean) and resample to 16 kHz as chunks arrive.

    Holds the 16 kHz mono result plus at most ~``buffer_s`` of input, so a long stereo
    48 kHz upload never exists in memory at its original rate and channel count
    (30 min of it would be 690 MB as float32).
    """

    def __init__(self, rate: int, channels: int, buffer_s: float = 1.0) -> None:
        self.rate = rate
        self.channels = channels
        self.frames = 0  # input frames seen, at ``rate``
        self._converted = 0  # input frames downmixed so far
        self._limit = max(1, int(buffer_s * rate))
        self._pending: list[np.ndarray] = []
        self._pending_frames = 0
        self._out: list[np.ndarray] = []
        self._weights = np.full(channels, 1.0 / channels, dtype=np.float32)
        self._resampler = (
            None
            if rate == TARGET_RATE
            else av.AudioResampler(format="flt", layout="mono", rate=TARGET_RATE)
        )

    def add(self, chunk: np.ndarray) -> None:
        """``chunk``: float32 [C, n] at ``rate`` (any strides)."""
        if chunk.shape[0] != self.channels:
            raise ValueError(f"{chunk.shape[0]} channels after {self.channels}: layout changed")
        self.frames += chunk.shape[1]
        self._pending.append(chunk)
        self._pending_frames += chunk.shape[1]
        if self._pending_frames >= self._limit:
            self._convert()

    def _convert(self) -> None:
        if not self._pending:
            return
        block = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending, 1)
        self._pending, self._pending_frames = [], 0
        # A mat-vec product: BLAS reads the [T, C] view soundfile gives without a copy,
        # where numpy's mean over that strided axis is slow (docs/benchmarks.md, audio input).
        block = block.astype(np.float32, copy=False)
        mono = self._weights @ block if self.channels > 1 else block[0]
        # NaN or infinity in any channel makes the mean non-finite; the model would turn
        # it into an empty transcript, so say what is wrong instead of guessing values.
        finite = np.isfinite(mono)
        if not finite.all():
            first = (self._converted + int(np.argmin(finite))) / self.rate
            raise InvalidAudioError(
                f"the audio holds NaN or infinite sample values (the first at {first:.3f} s):"
                " send finite samples"
            )
        self._converted += mono.shape[0]
        if self._resampler is None:
            self._out.append(np.array(mono, dtype=np.float32))
            return
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(mono, dtype=np.float32)[None, :], format="flt", layout="mono"
        )
        frame.sample_rate = self.rate
        self._out += [f.to_ndarray()[0] for f in self._resampler.resample(frame)]

    def finish(self) -> np.ndarray:
        """The whole signal: float32 [T] at 16 kHz, clipped to [-1, 1]."""
        self._convert()
        if self._resampler is not None and self.frames:
            self._out += [f.to_ndarray()[0] for f in self._resampler.resample(None)]
        samples = np.concatenate(self._out) if self._out else np.zeros(0, dtype=np.float32)
        np.clip(samples, -1.0, 1.0, out=samples)
        return samples


def _finish(stream: _MonoStream, fmt: str, codec: str) -> DecodedAudio:
    if stream.frames == 0:
        raise EmptyAudioError("the file contains no audio samples")
    samples = stream.finish()
    return DecodedAudio(
        samples, samples.size / TARGET_RATE, stream.rate, stream.channels, fmt, codec
    )


# libsndfile subtype -> FFmpeg's codec name, so both decoders report codecs alike.
_SF_CODECS = {
    "PCM_16": "pcm_s16le",
    "PCM_24": "pcm_s24le",
    "PCM_32": "pcm_s32le",
    "PCM_U8": "pcm_u8",
    "FLOAT": "pcm_f32le",
    "DOUBLE": "pcm_f64le",
    "ULAW": "pcm_mulaw",
    "ALAW": "pcm_alaw",
}


def _decode_soundfile(
    source: BinaryIO, fmt: str, max_duration: float | None
) -> DecodedAudio | None:
    """WAV/FLAC through libsndfile; None when libsndfile cannot (PyAV gets a try)."""
    try:
        with sf.SoundFile(source) as f:
            rate, channels, subtype = f.samplerate, f.channels, f.subtype
            if rate <= 0 or not 0 < channels <= MAX_CHANNELS:
                return None
            _check_rate(rate)
            if f.frames != _UNKNOWN_FRAMES:  # from the header, before reading
                _check_duration(f.frames, rate, max_duration)
            mono = _MonoStream(rate, channels)
            # Headers can misstate the length (truncated or streamed files): count as we go.
            # (f.read stops at the real end; f.blocks would pad to the header's length.)
            while (block := f.read(1 << 16, dtype="float32", always_2d=True)).size:
                mono.add(block.T)  # [T, C] -> [C, T] view
                _check_duration(mono.frames, rate, max_duration)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError):
        return None
    codec = "flac" if fmt == "flac" else _SF_CODECS.get(subtype, subtype.lower())
    return _finish(mono, fmt, codec)


def _ffmpeg_reason(exc: Exception) -> str:
    """FFmpeg's reason without the file name PyAV appends (it names nothing of ours, but
    an error must never echo a path)."""
    reason = getattr(exc, "strerror", None)
    return str(reason) if isinstance(reason, str) and reason else "invalid data"


def _decode_pyav(source: BinaryIO, fmt: str, max_duration: float | None) -> DecodedAudio:
    """A container of ``ALLOWED_CONTAINERS`` through FFmpeg, with that container's demuxer
    only; stops as soon as ``max_duration`` is passed."""
    demuxer = ALLOWED_CONTAINERS[fmt]
    try:
        container = av.open(
            source, mode="r", format=demuxer, options=_DEMUXER_OPTIONS, metadata_errors="ignore"
        )
    except (av.FFmpegError, ValueError, OSError, EOFError) as exc:
        raise UnsupportedAudioError(
            f"could not read the file as {fmt}: {_ffmpeg_reason(exc)}"
        ) from exc
    with container:
        if not container.streams.audio:
            raise UnsupportedAudioError("the file has no audio stream")
        stream = container.streams.audio[0]
        if stream.codec_context is None or stream.codec_context.codec is None:  # no decoder
            raise UnsupportedAudioError(f"the {fmt} file holds audio in an unsupported codec")
        codec = stream.codec_context.codec.canonical_name  # "mp3", not decoder "mp3float"
        if stream.codec_context.sample_rate:  # 0: the header does not say; frames will
            _check_rate(stream.codec_context.sample_rate)
        name = fmt
        if max_duration is not None and container.duration is not None:
            declared = container.duration / av.time_base
            if declared > max_duration + 1.0:  # metadata is approximate: 1 s grace
                raise _too_long(declared, max_duration)
        # Decode to float planar at the input's rate and layout; downmix ourselves
        # (swresample's stereo->mono matrix scales by 1/sqrt(2), not a mean).
        planar: av.AudioResampler | None = None
        mono: _MonoStream | None = None
        layout = ""
        try:
            for frame in container.decode(stream):
                if mono is None:
                    channels = len(frame.layout.channels)
                    if not 0 < channels <= MAX_CHANNELS:
                        raise UnsupportedAudioError(f"unsupported audio: {channels} channels")
                    _check_rate(frame.sample_rate)
                    mono, layout = _MonoStream(frame.sample_rate, channels), frame.layout.name
                # Most decoders (mp3, aac, opus, vorbis) already give float planar.
                same = frame.sample_rate == mono.rate and frame.layout.name == layout
                if frame.sample_rate != mono.rate:  # a rate change mid-stream
                    _check_rate(frame.sample_rate)
                if frame.format.name == "fltp" and same:
                    converted = [frame]
                else:
                    if planar is None:
                        planar = av.AudioResampler(format="fltp", layout=layout, rate=mono.rate)
                    converted = planar.resample(frame)
                for out in converted:
                    mono.add(out.to_ndarray())  # [C, n]
                _check_duration(mono.frames, mono.rate, max_duration)
            if planar is not None and mono is not None:
                for out in planar.resample(None):
                    mono.add(out.to_ndarray())
        except AudioError:
            raise
        except (av.FFmpegError, ValueError, EOFError) as exc:
            # A file cut short mid-stream keeps what decoded (like ffmpeg does); one that
            # yields nothing is not audio we can read. (ValueError: a mid-stream layout
            # change, which PyAV's resampler and _MonoStream refuse.)
            if mono is None or mono.frames == 0:
                raise UnsupportedAudioError(
                    f"could not decode the {fmt} audio: {_ffmpeg_reason(exc)}"
                ) from exc
    if mono is None:
        raise EmptyAudioError("the file contains no audio samples")
    return _finish(mono, name, codec)


def decode_audio(
    data: bytes | BinaryIO,
    filename: str | None = None,
    content_type: str | None = None,
    max_duration: float | None = None,
) -> DecodedAudio:
    """Decode an uploaded file to float32 mono [T] at 16 kHz.

    ``data``: the whole file, or a seekable binary file (e.g. an ``UploadFile.file``).
    ``filename`` / ``content_type`` only name the format in error messages: the bytes decide.
    Raises EmptyAudioError (400), UnsupportedAudioError (415) or AudioTooLongError (413).
    """
    source: BinaryIO = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    head, fmt = _sniff_source(source)
    if not head:
        raise EmptyAudioError("the uploaded file is empty")
    try:
        if fmt is None:
            raise UnsupportedAudioError(f"not an audio format lass reads ({_SUPPORTED})")
        if fmt in ("wav", "flac"):
            decoded = _decode_soundfile(source, fmt, max_duration)
            if decoded is not None:
                return decoded
            source.seek(0)
        return _decode_pyav(source, fmt, max_duration)
    except UnsupportedAudioError as exc:
        hint = ", ".join(_echo(x) for x in (filename, content_type) if x)
        if hint:
            exc.message = f"{exc.message} ({hint})"
            exc.args = (exc.message,)
        raise


def _echo(text: str, limit: int = 100) -> str:
    """A client-supplied string, cut to ``limit`` characters, for an error message."""
    return text if len(text) <= limit else text[:limit] + "…"


def decode_pcm(
    data: bytes, sample_rate: int, channels: int = 1, max_duration: float | None = None
) -> DecodedAudio:
    """Raw little-endian signed 16-bit PCM, interleaved channels -> float32 mono [T] at 16 kHz."""
    if not PCM_RATE_RANGE[0] <= sample_rate <= PCM_RATE_RANGE[1]:
        raise InvalidAudioParameterError(
            f"sample_rate must be between {PCM_RATE_RANGE[0]} and {PCM_RATE_RANGE[1]} Hz,"
            f" got {sample_rate}",
            param="sample_rate",
        )
    if not 0 < channels <= MAX_CHANNELS:
        raise InvalidAudioParameterError(
            f"channels must be between 1 and {MAX_CHANNELS}, got {channels}", param="channels"
        )
    if not data:
        raise EmptyAudioError("the request body is empty")
    frame_bytes = 2 * channels
    if len(data) % frame_bytes:
        raise UnsupportedAudioError(
            f"raw PCM length {len(data)} is not a multiple of {frame_bytes} bytes"
            f" (16-bit samples x {channels} channel(s))"
        )
    _check_duration(len(data) // frame_bytes, sample_rate, max_duration)
    pcm = np.frombuffer(data, dtype="<i2").reshape(-1, channels)  # [T, C]
    mono = _MonoStream(sample_rate, channels)
    for start in range(0, pcm.shape[0], 1 << 16):  # int16 -> float32 a block at a time
        mono.add(pcm[start : start + (1 << 16)].T.astype(np.float32) / 32768.0)
    return _finish(mono, "pcm_s16le", "pcm_s16le")


# ---------------------------------------------------------------------------- upload size


def _too_large(max_bytes: int) -> UploadTooLargeError:
    return UploadTooLargeError(f"the upload is larger than the limit of {max_bytes} bytes")


def check_content_length(value: str | bytes | None, max_bytes: int) -> None:
    """Raise UploadTooLargeError when a declared ``Content-Length`` is over the limit."""
    if value is None:
        return
    try:
        declared = int(value)
    except ValueError:
        return  # the server rejects a malformed header itself; count the bytes instead
    if declared > max_bytes:
        raise _too_large(max_bytes)


async def read_limited(chunks: AsyncIterable[bytes], max_bytes: int) -> bytes:
    """Join a stream of chunks; UploadTooLargeError as soon as it passes ``max_bytes``."""
    parts: list[bytes] = []
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > max_bytes:
            raise _too_large(max_bytes)
        parts.append(chunk)
    return b"".join(parts)


def read_limited_sync(fileobj: BinaryIO, max_bytes: int, chunk_size: int = 1 << 16) -> bytes:
    """Read a file in chunks; UploadTooLargeError as soon as it passes ``max_bytes``."""
    parts: list[bytes] = []
    total = 0
    while chunk := fileobj.read(chunk_size):
        total += len(chunk)
        if total > max_bytes:
            raise _too_large(max_bytes)
        parts.append(chunk)
    return b"".join(parts)


class BodySizeLimitMiddleware:
    """ASGI middleware: 413 with an OpenAI error body once a request body passes ``max_bytes``.

    Checks ``Content-Length`` first, then counts the body as the app pulls it. When the
    limit is passed mid-stream it stops feeding the app, throws away whatever response the
    app makes of that (FastAPI turns a failing form parse into a 400) and answers 413.
    ``paths``: only these paths are limited (None: all). ``on_reject`` is called once per
    rejected request (for metrics).
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        paths: Sequence[str] | None = None,
        on_reject: Callable[[AudioError], None] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.paths = frozenset(paths) if paths is not None else None
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.paths is not None and scope["path"] not in self.paths):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        try:
            check_content_length(headers.get(b"content-length"), self.max_bytes)
        except UploadTooLargeError as exc:
            await self._reject(send, exc)
            return

        total = 0
        overflow: UploadTooLargeError | None = None
        started = False

        async def limited_receive() -> Message:
            nonlocal total, overflow
            if overflow is not None:
                raise overflow
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > self.max_bytes:
                    overflow = _too_large(self.max_bytes)
                    raise overflow
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if overflow is not None and not started:
                return  # the app's reaction to the cut-off body; we answer 413 instead
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if overflow is None or started:
                raise
        if overflow is not None and not started:
            await self._reject(send, overflow)

    async def _reject(self, send: Send, exc: AudioError) -> None:
        if self.on_reject is not None:
            self.on_reject(exc)
        body = json.dumps(exc.to_dict()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": exc.status_code,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

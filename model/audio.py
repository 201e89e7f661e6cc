"""The audio front end: any audio (a file, an upload, raw PCM, stream frames) to float32 mono
samples at 16 kHz, the same way for the service and the trainer.

One rule on every path, so that what ``lass train evaluate`` measures is what the service
serves: channels are averaged (their mean), then resampled to 16 kHz with swresample
(PyAV), by :class:`MonoConverter`, which keeps the filter state from chunk to chunk; the
result is clipped to [-1, 1]. swresample was measured faster than
``torchaudio.functional.resample`` for 22.05/44.1/48 kHz input (docs/benchmarks.md), and
it works chunk by chunk, which streams need.

Entry points:

- :func:`decode_audio`: an upload or file's bytes; :func:`decode_file`: a path (the trainer);
- :func:`decode_pcm`: raw interleaved s16le; :class:`PcmConverter`: a stream's raw frames
  (s16le, f32le, G.711 mu-law / A-law) as they arrive, with :class:`PcmFormat` describing them;
- :func:`resample`: one mono signal to another rate.

Why an allow-list of containers: FFmpeg picks a demuxer by probing the bytes, and some
demuxers open other things: a concat list (``ffconcat``) or an HLS playlist opens the files
it names, an SDP description binds UDP ports. Input is therefore opened with one explicit
demuxer from :data:`ALLOWED_CONTAINERS`, chosen by sniffing the first bytes (names and
content types are only hints), reading only the bytes given, with no protocol allowed for
nested opens (``_DEMUXER_OPTIONS``); error messages never carry FFmpeg's text about files
(docs/reliability.md). Sample rates outside 8-192 kHz, non-finite samples and input longer
than ``max_duration`` are refused.

Errors are :class:`AudioError` subclasses; each carries a ``code`` (a stable name for
what went wrong) and ``param`` (the input it concerns) but no transport detail: the service
maps them to HTTP statuses and stream close codes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import av
import numpy as np
import soundfile as sf

from model.config import SAMPLE_RATE

MAX_CHANNELS = 64  # channels of a container's audio stream
MAX_PCM_CHANNELS = 8  # channels of raw PCM (REST bodies and streams)
# Sample rates accepted, files and raw PCM alike: telephone (8 kHz) to studio (192 kHz).
# Outside it a tiny file becomes a huge job: a 3.6 KB WAV declaring 1 Hz is 1 799 s of
# 16 kHz audio; a 312 KB FLAC of silence at 384 kHz decoded for 94 s into 3.7 GB.
MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 192_000
# libsndfile's frame count when the header does not say (SF_COUNT_MAX), e.g. a FLAC
# written to a pipe, whose STREAMINFO holds 0 samples.
_UNKNOWN_FRAMES = 2**63 - 1
_EMPTY = np.zeros(0, dtype=np.float32)

# ---------------------------------------------------------------------------- errors


class AudioError(ValueError):
    """Audio that cannot be used, and why.

    ``message`` says what is wrong without naming any path (the service sends it to
    clients); ``path`` is the file when one was read by path (:func:`decode_file`), and
    ``str()`` then starts with it. ``code`` names the kind of problem, ``param`` the input
    it concerns (``"file"``, ``"sample_rate"``, ...).
    """

    code = "invalid_audio"

    def __init__(
        self, message: str, *, param: str | None = "file", path: Path | str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.path = Path(path) if path is not None else None

    @property
    def problem(self) -> str:
        """What is wrong, without the path (the trainer's reports name the file apart)."""
        return self.message

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path is not None else self.message


class EmptyAudioError(AudioError):
    """No bytes, or no samples once decoded."""

    code = "empty_file"


class UnsupportedAudioError(AudioError):
    """Not audio we can decode: unknown container, no audio stream, corrupt header, a sample
    rate or channel count out of range, raw PCM that is not whole frames."""

    code = "unsupported_audio"


class InvalidAudioError(AudioError):
    """Audio that decodes but holds values no microphone makes: NaN or infinite."""

    code = "invalid_audio"


class InvalidAudioParameterError(AudioError):
    """A declared property of raw audio is out of range (``param`` names it)."""

    code = "invalid_value"


class AudioTooLongError(AudioError):
    """Longer than the caller's duration limit."""

    code = "audio_too_long"


def _check_rate(rate: int) -> None:
    """UnsupportedAudioError unless ``rate`` is within the supported range."""
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise UnsupportedAudioError(
            f"unsupported sample rate {rate} Hz: lass reads {MIN_SAMPLE_RATE} to "
            f"{MAX_SAMPLE_RATE} Hz"
        )


def _too_long(seconds: float, max_duration: float) -> AudioTooLongError:
    return AudioTooLongError(
        f"audio is longer than the limit of {max_duration:g} s (at least {seconds:.1f} s)"
    )


def _check_duration(frames: int, rate: int, max_duration: float | None) -> None:
    if max_duration is not None and frames > max_duration * rate:
        raise _too_long(frames / rate, max_duration)


# ---------------------------------------------------------------------------- downmix + resample


class MonoConverter:
    """Channels -> their mean -> ``target`` Hz, chunk by chunk: the one downmix and
    resampler of every path (files, raw PCM, stream frames, the trainer).

    swresample keeps its filter state between chunks, so a signal cut into chunks gives the
    samples of the whole signal converted at once; :meth:`flush` releases what the filter
    still holds. ``block``: input frames gathered before converting (files: fewer, larger
    calls, at most ``block`` frames of input held; streams: 0, each chunk converted on
    arrival). ``target`` None keeps the input rate. NaN or infinite samples raise
    InvalidAudioError naming the time of the first one. Output is clipped to [-1, 1].
    """

    def __init__(
        self, rate: int, channels: int, target: int | None = SAMPLE_RATE, block: int = 0
    ) -> None:
        self.rate = rate
        self.channels = channels
        self.target = rate if target is None else target
        self.frames = 0  # input frames taken, at ``rate``
        self._converted = 0  # input frames downmixed so far
        self._block = block
        self._pending: list[np.ndarray] = []
        self._pending_frames = 0
        self._weights = np.full(channels, 1.0 / channels, dtype=np.float32)
        self._resampler = (
            None
            if self.target == rate
            else av.AudioResampler(format="flt", layout="mono", rate=self.target)
        )

    def add(self, chunk: np.ndarray) -> np.ndarray:
        """``chunk``: float32 [C, n] at ``rate`` (any strides) -> float32 [m] at ``target``;
        ``m`` may be 0 while input is gathered or fills the resampler's filter."""
        if chunk.ndim != 2 or chunk.shape[0] != self.channels:
            raise ValueError(f"expected [{self.channels}, n] samples, got {list(chunk.shape)}")
        self.frames += chunk.shape[1]
        self._pending.append(chunk)
        self._pending_frames += chunk.shape[1]
        if self._pending_frames >= self._block:
            return self._convert()
        return _EMPTY

    def flush(self) -> np.ndarray:
        """The rest: gathered input and the resampler's filter tail, float32 [m] (end of
        input; the converter is done after it)."""
        out = self._convert()
        if self._resampler is None or not self._converted:
            return out
        tail = self._join(self._resampler.resample(None))
        return np.concatenate([out, tail]) if out.size else tail

    def _convert(self) -> np.ndarray:
        if not self._pending:
            return _EMPTY
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
            out = np.array(mono, dtype=np.float32)  # a copy: ``mono`` may view the input
            return np.clip(out, -1.0, 1.0, out=out)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(mono, dtype=np.float32)[None, :], format="flt", layout="mono"
        )
        frame.sample_rate = self.rate
        return self._join(self._resampler.resample(frame))

    @staticmethod
    def _join(frames: Sequence[av.AudioFrame]) -> np.ndarray:
        if not frames:
            return _EMPTY
        out = np.concatenate([f.to_ndarray()[0] for f in frames]).astype(np.float32, copy=False)
        return np.clip(out, -1.0, 1.0, out=out)


def resample(samples: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 [T] at ``rate`` -> float32 [T'] at ``target``, clipped to [-1, 1]
    (:class:`MonoConverter`: what every decoder here uses)."""
    converter = MonoConverter(rate, 1, target)
    mono = np.asarray(samples, dtype=np.float32)[None, :]
    head = converter.add(mono)
    return np.concatenate([head, converter.flush()])


# ---------------------------------------------------------------------------- decoded audio


@dataclass(frozen=True)
class DecodedAudio:
    """Decoded audio ready for the model.

    ``samples``: float32 [T] at ``sample_rate`` (16 kHz unless asked otherwise), mono (mean
    of the input channels), in [-1, 1]; ``duration`` = T / ``sample_rate`` seconds.
    """

    samples: np.ndarray
    duration: float
    original_rate: int
    channels: int
    format: str
    codec: str
    sample_rate: int = SAMPLE_RATE


def _finish(
    converter: MonoConverter, pieces: list[np.ndarray], fmt: str, codec: str
) -> DecodedAudio:
    if converter.frames == 0:
        raise EmptyAudioError("the file contains no audio samples")
    pieces.append(converter.flush())
    samples = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
    rate = converter.target
    return DecodedAudio(
        samples, samples.size / rate, converter.rate, converter.channels, fmt, codec, rate
    )


# ---------------------------------------------------------------------------- containers

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


def sniff_source(source: BinaryIO) -> tuple[bytes, str | None]:
    """(first bytes, ``sniff_format`` of a seekable input), reading past an ID3 tag when it
    is longer than the first 64 bytes (tags may hold cover art); leaves ``source`` at 0."""
    head = source.read(64)
    fmt = sniff_format(head)
    tag = _id3_size(head)
    if tag is not None and tag > len(head) - 4:
        source.seek(tag)
        after = sniff_format(source.read(16))
        fmt = after if after in ("aac", "flac") else "mp3"
    source.seek(0)
    return head, fmt


def _ffmpeg_reason(exc: Exception) -> str:
    """FFmpeg's reason without the file name PyAV appends (it names nothing of ours, but
    an error must never echo a path)."""
    reason = getattr(exc, "strerror", None)
    return str(reason) if isinstance(reason, str) and reason else "invalid data"


def open_container(source: BinaryIO, fmt: str) -> av.container.InputContainer:
    """Open a seekable input with the one demuxer ``ALLOWED_CONTAINERS[fmt]``, nested opens
    refused; UnsupportedAudioError when FFmpeg cannot read it as that."""
    try:
        return av.open(
            source,
            mode="r",
            format=ALLOWED_CONTAINERS[fmt],
            options=_DEMUXER_OPTIONS,
            metadata_errors="ignore",
        )
    except (av.FFmpegError, ValueError, OSError, EOFError) as exc:
        raise UnsupportedAudioError(
            f"could not read the file as {fmt}: {_ffmpeg_reason(exc)}"
        ) from exc


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
    source: BinaryIO, fmt: str, max_duration: float | None, target: int | None
) -> DecodedAudio | None:
    """WAV/FLAC through libsndfile; None when libsndfile cannot (PyAV gets a try)."""
    pieces: list[np.ndarray] = []
    try:
        with sf.SoundFile(source) as f:
            rate, channels, subtype = f.samplerate, f.channels, f.subtype
            if rate <= 0 or not 0 < channels <= MAX_CHANNELS:
                return None
            _check_rate(rate)
            if f.frames != _UNKNOWN_FRAMES:  # from the header, before reading
                _check_duration(f.frames, rate, max_duration)
            mono = MonoConverter(rate, channels, target, block=rate)
            # Headers can misstate the length (truncated or streamed files): count as we go.
            # (f.read stops at the real end; f.blocks would pad to the header's length.)
            while (block := f.read(1 << 16, dtype="float32", always_2d=True)).size:
                pieces.append(mono.add(block.T))  # [T, C] -> [C, T] view
                _check_duration(mono.frames, rate, max_duration)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError):
        return None
    codec = "flac" if fmt == "flac" else _SF_CODECS.get(subtype, subtype.lower())
    return _finish(mono, pieces, fmt, codec)


def _decode_pyav(
    source: BinaryIO, fmt: str, max_duration: float | None, target: int | None
) -> DecodedAudio:
    """A container of ``ALLOWED_CONTAINERS`` through FFmpeg, with that container's demuxer
    only; stops as soon as ``max_duration`` is passed."""
    with open_container(source, fmt) as container:
        if not container.streams.audio:
            raise UnsupportedAudioError("the file has no audio stream")
        stream = container.streams.audio[0]
        if stream.codec_context is None or stream.codec_context.codec is None:  # no decoder
            raise UnsupportedAudioError(f"the {fmt} file holds audio in an unsupported codec")
        codec = stream.codec_context.codec.canonical_name  # "mp3", not decoder "mp3float"
        if stream.codec_context.sample_rate:  # 0: the header does not say; frames will
            _check_rate(stream.codec_context.sample_rate)
        if max_duration is not None and container.duration is not None:
            declared = container.duration / av.time_base
            if declared > max_duration + 1.0:  # metadata is approximate: 1 s grace
                raise _too_long(declared, max_duration)
        # Decode to float planar at the input's rate and layout; the downmix is ours
        # (swresample's stereo->mono matrix scales each channel by 1/sqrt(2): not a mean).
        planar: av.AudioResampler | None = None
        mono: MonoConverter | None = None
        pieces: list[np.ndarray] = []
        layout = ""
        try:
            for frame in container.decode(stream):
                if mono is None:
                    channels = len(frame.layout.channels)
                    if not 0 < channels <= MAX_CHANNELS:
                        raise UnsupportedAudioError(f"unsupported audio: {channels} channels")
                    _check_rate(frame.sample_rate)
                    mono = MonoConverter(
                        frame.sample_rate, channels, target, block=frame.sample_rate
                    )
                    layout = frame.layout.name
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
                    pieces.append(mono.add(out.to_ndarray()))  # [C, n]
                _check_duration(mono.frames, mono.rate, max_duration)
            if planar is not None and mono is not None:
                for out in planar.resample(None):
                    pieces.append(mono.add(out.to_ndarray()))
        except AudioError:
            raise
        except (av.FFmpegError, ValueError, EOFError) as exc:
            # A file cut short mid-stream keeps what decoded (like ffmpeg does); one that
            # yields nothing is not audio we can read. (ValueError: a mid-stream layout
            # change, which PyAV's resampler and MonoConverter refuse.)
            if mono is None or mono.frames == 0:
                raise UnsupportedAudioError(
                    f"could not decode the {fmt} audio: {_ffmpeg_reason(exc)}"
                ) from exc
    if mono is None:
        raise EmptyAudioError("the file contains no audio samples")
    return _finish(mono, pieces, fmt, codec)


def decode_audio(
    data: bytes | BinaryIO,
    filename: str | None = None,
    content_type: str | None = None,
    max_duration: float | None = None,
    target_rate: int | None = SAMPLE_RATE,
) -> DecodedAudio:
    """Decode a whole file to float32 mono [T] at ``target_rate`` (None: the file's own).

    ``data``: the file's bytes, or a seekable binary file (e.g. an ``UploadFile.file``).
    ``filename`` / ``content_type`` only name the format in error messages: the bytes decide.
    Raises EmptyAudioError, UnsupportedAudioError, InvalidAudioError or AudioTooLongError.
    """
    source: BinaryIO = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    head, fmt = sniff_source(source)
    if not head:
        raise EmptyAudioError("the uploaded file is empty")
    try:
        if fmt is None:
            raise UnsupportedAudioError(f"not an audio format lass reads ({_SUPPORTED})")
        if fmt in ("wav", "flac"):
            decoded = _decode_soundfile(source, fmt, max_duration, target_rate)
            if decoded is not None:
                return decoded
            source.seek(0)
        return _decode_pyav(source, fmt, max_duration, target_rate)
    except UnsupportedAudioError as exc:
        hint = ", ".join(_echo(x) for x in (filename, content_type) if x)
        if hint:
            exc.message = f"{exc.message} ({hint})"
            exc.args = (exc.message,)
        raise


def decode_file(
    path: Path | str, max_duration: float | None = None, target_rate: int | None = SAMPLE_RATE
) -> DecodedAudio:
    """:func:`decode_audio` of a file on disk; its AudioError carries ``path``."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return decode_audio(f, max_duration=max_duration, target_rate=target_rate)
    except AudioError as exc:
        exc.path = path
        raise
    except OSError as exc:
        reason = "no such file" if isinstance(exc, FileNotFoundError) else exc.strerror
        raise AudioError(reason or "cannot be read", path=path) from exc


def _echo(text: str, limit: int = 100) -> str:
    """A client-supplied string, cut to ``limit`` characters, for an error message."""
    return text if len(text) <= limit else text[:limit] + "…"


# ---------------------------------------------------------------------------- raw PCM

Encoding = Literal["pcm_s16le", "pcm_f32le", "mulaw", "alaw"]
# Names clients use for the encodings (OpenAI says "pcm16", "pcmu", "pcma").
ENCODINGS: dict[str, Encoding] = {
    "pcm_s16le": "pcm_s16le",
    "pcm16": "pcm_s16le",
    "s16le": "pcm_s16le",
    "linear16": "pcm_s16le",
    "pcm_f32le": "pcm_f32le",
    "f32le": "pcm_f32le",
    "float32": "pcm_f32le",
    "mulaw": "mulaw",
    "pcmu": "mulaw",
    "alaw": "alaw",
    "pcma": "alaw",
}
_DTYPES: dict[Encoding, np.dtype[np.generic]] = {
    "pcm_s16le": np.dtype("<i2"),
    "pcm_f32le": np.dtype("<f4"),
    "mulaw": np.dtype("u1"),
    "alaw": np.dtype("u1"),
}


def _g711_tables() -> dict[str, np.ndarray]:
    """ITU-T G.711 byte -> linear sample in [-1, 1), for mu-law and A-law (256 entries)."""
    byte = np.arange(256)
    u = ~byte & 0xFF  # mu-law bytes are sent inverted
    exponent, mantissa = (u >> 4) & 7, u & 15
    mu = (((mantissa << 3) + 0x84) << exponent) - 0x84
    mu = np.where(u & 0x80, -mu, mu)
    a = byte ^ 0x55  # A-law inverts the even bits
    exponent, mantissa = (a >> 4) & 7, a & 15
    al = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << (exponent - 1))
    al = np.where(a & 0x80, al, -al)
    return {"mulaw": mu.astype(np.float32) / 32768.0, "alaw": al.astype(np.float32) / 32768.0}


_G711 = _g711_tables()


@dataclass(frozen=True)
class PcmFormat:
    """How raw audio is laid out: encoding, rate, interleaved channels."""

    encoding: Encoding = "pcm_s16le"
    sample_rate: int = SAMPLE_RATE
    channels: int = 1

    @classmethod
    def parse(cls, encoding: str, sample_rate: int, channels: int = 1) -> PcmFormat:
        """Validate a client's declaration; InvalidAudioParameterError (``param`` names the
        field) says what is accepted."""
        name = ENCODINGS.get(str(encoding).lower())
        if name is None:
            raise InvalidAudioParameterError(
                f"unsupported encoding {encoding!r}; use one of {', '.join(sorted(ENCODINGS))}",
                param="encoding",
            )
        if (
            not isinstance(sample_rate, int)
            or not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE
        ):
            raise InvalidAudioParameterError(
                f"sample_rate must be an integer from {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} "
                f"Hz, got {sample_rate!r}",
                param="sample_rate",
            )
        if not isinstance(channels, int) or not 1 <= channels <= MAX_PCM_CHANNELS:
            raise InvalidAudioParameterError(
                f"channels must be an integer from 1 to {MAX_PCM_CHANNELS}, got {channels!r}",
                param="channels",
            )
        return cls(name, sample_rate, channels)

    @property
    def frame_bytes(self) -> int:
        """Bytes of one sample frame (all channels)."""
        return _DTYPES[self.encoding].itemsize * self.channels

    def frames(self, num_bytes: int) -> int:
        """Sample frames in ``num_bytes``; UnsupportedAudioError unless a whole number."""
        if num_bytes % self.frame_bytes:
            raise UnsupportedAudioError(
                f"{num_bytes} bytes are not a whole number of {self.encoding} sample frames "
                f"for {self.channels} channel(s) ({self.frame_bytes} bytes each)"
            )
        return num_bytes // self.frame_bytes

    def seconds(self, num_bytes: int) -> float:
        return num_bytes / (self.frame_bytes * self.sample_rate)

    def samples(self, data: bytes) -> np.ndarray:
        """Whole frames of bytes -> float32 [C, n] in [-1, 1] (a strided view for C > 1)."""
        self.frames(len(data))
        raw = np.frombuffer(data, dtype=_DTYPES[self.encoding])
        if self.encoding == "pcm_s16le":
            values = raw.astype(np.float32) / 32768.0
        elif self.encoding in _G711:
            values = _G711[self.encoding][raw]
        else:
            values = raw.astype(np.float32)
        return values.reshape(-1, self.channels).T


class PcmConverter:
    """Raw frames in one :class:`PcmFormat` -> 16 kHz mono float32 as they arrive; the
    resampler's state carries over from one call to the next (:class:`MonoConverter`)."""

    def __init__(self, fmt: PcmFormat, block: int = 0) -> None:
        self.format = fmt
        self._mono = MonoConverter(fmt.sample_rate, fmt.channels, block=block)

    @property
    def frames(self) -> int:
        """Input sample frames taken so far."""
        return self._mono.frames

    def convert(self, data: bytes) -> np.ndarray:
        """Bytes of whole frames -> float32 [n] at 16 kHz (``n`` may be 0 while the
        resampler fills its filter). UnsupportedAudioError when the bytes are not whole
        frames, InvalidAudioError for NaN or infinite float samples."""
        return self._mono.add(self.format.samples(data))

    def flush(self) -> np.ndarray:
        """The samples still inside the resampler's filter (end of stream), float32 [n]."""
        return self._mono.flush()


def decode_pcm(
    data: bytes, sample_rate: int, channels: int = 1, max_duration: float | None = None
) -> DecodedAudio:
    """Raw little-endian signed 16-bit PCM, interleaved channels -> float32 mono [T] at 16 kHz."""
    fmt = PcmFormat.parse("pcm_s16le", sample_rate, channels)
    if not data:
        raise EmptyAudioError("the request body is empty")
    _check_duration(fmt.frames(len(data)), sample_rate, max_duration)
    converter = PcmConverter(fmt, block=sample_rate)
    step = fmt.frame_bytes << 16  # int16 -> float32 a block at a time
    pieces = [converter.convert(data[i : i + step]) for i in range(0, len(data), step)]
    pieces.append(converter.flush())
    samples = np.concatenate(pieces)
    return DecodedAudio(
        samples, samples.size / SAMPLE_RATE, sample_rate, channels, "pcm_s16le", "pcm_s16le"
    )

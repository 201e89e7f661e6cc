"""Streaming transcription: audio frames in, partial and final transcripts out.

- :mod:`service.streaming.pcm`: client frames (16-bit PCM or 32-bit float at any rate) to
  16 kHz float32 samples, with a resampler that keeps its state across frames;
- :mod:`service.streaming.endpointer`: voice-activity probabilities to utterances (a pure
  state machine, no torch);
- :mod:`service.streaming.session`: one stream's utterances through the shared engine
  (partials, finals, language identification), independent of the wire protocol;
- :mod:`service.streaming.registry`: the limits that hold across streams.

The two wire protocols live in ``service/routers/stream.py`` (native) and
``service/routers/realtime.py`` (OpenAI Realtime transcription subset).
"""

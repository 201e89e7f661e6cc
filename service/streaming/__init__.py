"""Streaming transcription: audio frames in, partial and final transcripts out.

- :mod:`service.streaming.endpointer`: voice-activity probabilities to utterances (a pure
  state machine, no torch);
- :mod:`service.streaming.session`: one stream's utterances through the shared engine
  (partials, finals, language identification), independent of the wire protocol;
- :mod:`service.streaming.channel`: one WebSocket's ordered sends and bounded receives,
  and ``StreamRegistry``, the limits that hold across streams.

Client frames become 16 kHz samples through ``model.audio``'s ``PcmConverter``, the
converter behind uploads and the trainer too.

The two wire protocols live in ``service/routers/stream.py`` (native) and
``service/routers/realtime.py`` (OpenAI Realtime transcription subset).
"""

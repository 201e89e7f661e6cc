// AudioWorklet processor: gathers the microphone's 128-sample render quanta into frames of
// about 100 ms (mono Float32) and posts each to the page, which sends it over the
// WebSocket. Frames of ~100 ms keep the message rate low (10 per second) while the
// server's voice-activity detector still sees speech promptly.

const FRAME_SECONDS = 0.1;

class PcmFrames extends AudioWorkletProcessor {
  constructor() {
    super();
    // `sampleRate` is a global of the AudioWorkletGlobalScope: the AudioContext's rate.
    this.size = Math.max(128, Math.round(sampleRate * FRAME_SECONDS));
    this.frame = new Float32Array(this.size);
    this.filled = 0;
    this.running = true;
    this.port.onmessage = (event) => {
      if (event.data === "flush") {
        // The page stops: hand over what is left, then stop being processed.
        if (this.filled > 0) this.post(this.frame.slice(0, this.filled));
        this.filled = 0;
        this.running = false;
        this.port.postMessage("flushed");
      }
    };
  }

  post(frame) {
    this.port.postMessage(frame, [frame.buffer]);
  }

  process(inputs) {
    const channels = inputs[0];
    if (!this.running) return false;
    if (!channels || channels.length === 0) return true; // no input connected yet
    const n = channels[0].length;
    for (let i = 0; i < n; i++) {
      // Down-mix to mono: the stream is declared with one channel.
      let sum = 0;
      for (let c = 0; c < channels.length; c++) sum += channels[c][i];
      this.frame[this.filled++] = sum / channels.length;
      if (this.filled === this.size) {
        this.post(this.frame);
        this.frame = new Float32Array(this.size);
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("pcm-frames", PcmFrames);

// talkmesh live page, experimental audio path (`/?audio=webaudio`, docs/WEB.md): the <video> gets a
// video-only MSE stream and the AAC audio is decoded with WebCodecs and played in an AudioContext
// on the video's clock. Without an audio track Chromium's media pipeline does not wait for its audio
// playback threshold (~200 ms) after every seek or stall. Plain JS, no build step.
//
// The fMP4 is the encoder's hand-written one (services/encoder/fmp4.py, live/fmp4.py before it
// moved): an init segment (ftyp + moov with one trak and one trex per track) and fragments of
// moof {mfhd, traf per track {tfhd, tfdt, trun}} + mdat, several back to back in one message.
"use strict";

(() => {
  const LOUD = 0.02; // a sample above this is sound, not silence (onsetAfter)
  const type = (u8, at) => String.fromCharCode(u8[at + 4], u8[at + 5], u8[at + 6], u8[at + 7]);

  // The boxes between start and end: [{type, start, size, body}] (body: offset past the header).
  function boxes(u8, start = 0, end = u8.length) {
    const dv = new DataView(u8.buffer, u8.byteOffset, u8.byteLength);
    const out = [];
    let at = start;
    while (at + 8 <= end) {
      let size = dv.getUint32(at);
      let head = 8;
      if (size === 1) {
        size = Number(dv.getBigUint64(at + 8));
        head = 16;
      } else if (size === 0) {
        size = end - at;
      }
      if (size < head || at + size > end) throw new Error(`fmp4: bad box at ${at}`);
      out.push({ type: type(u8, at), start: at, size, body: at + head });
      at += size;
    }
    return out;
  }
  const child = (u8, box, name) => boxes(u8, box.body, box.start + box.size).find((b) => b.type === name);
  const concat = (parts) => {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  };
  function boxOf(name, parts) {
    const body = concat(parts);
    const out = new Uint8Array(8 + body.length);
    new DataView(out.buffer).setUint32(0, out.length);
    for (let i = 0; i < 4; i++) out[4 + i] = name.charCodeAt(i);
    out.set(body, 8);
    return out;
  }

  // An MPEG-4 descriptor's length (1-4 bytes of 7 bits): [length, bytes read].
  function descLength(u8, at) {
    let n = 0;
    for (let i = 0; i < 4; i++) {
      const b = u8[at + i];
      n = (n << 7) | (b & 0x7f);
      if (!(b & 0x80)) return [n, i + 1];
    }
    return [n, 4];
  }

  // The AudioSpecificConfig in an esds box (ES_Descriptor > DecoderConfigDescriptor > DecSpecificInfo).
  function audioSpecificConfig(u8, esds) {
    let at = esds.body + 4; // version and flags
    const end = esds.start + esds.size;
    while (at < end) {
      const tag = u8[at];
      const [len, n] = descLength(u8, at + 1);
      const body = at + 1 + n;
      if (tag === 0x03) {
        const flags = u8[body + 2];
        at = body + 3 + (flags & 0x80 ? 2 : 0) + (flags & 0x40 ? 1 + u8[body + 3] : 0) + (flags & 0x20 ? 2 : 0);
      } else if (tag === 0x04) {
        at = body + 13;
      } else if (tag === 0x05) {
        return u8.slice(body, body + len);
      } else {
        at = body + len;
      }
    }
    throw new Error("fmp4: no AudioSpecificConfig in esds");
  }

  // The init segment without its audio track, and the audio track's decoder configuration.
  function splitInit(buffer) {
    const u8 = new Uint8Array(buffer);
    const dv = new DataView(buffer);
    const top = boxes(u8);
    const moov = top.find((b) => b.type === "moov");
    if (!moov) throw new Error("fmp4: no moov in the init segment");
    let audio = null;
    const kept = [];
    for (const b of boxes(u8, moov.body, moov.start + moov.size)) {
      if (b.type === "trak") {
        const mdia = child(u8, b, "mdia");
        const hdlr = child(u8, mdia, "hdlr");
        if (type(u8, hdlr.body + 4) === "soun") {
          const tkhd = child(u8, b, "tkhd");
          const mdhd = child(u8, mdia, "mdhd");
          const v1 = (m) => u8[m.body] === 1;
          const stbl = child(u8, child(u8, mdia, "minf"), "stbl");
          const stsd = child(u8, stbl, "stsd");
          const entry = boxes(u8, stsd.body + 8, stsd.start + stsd.size)[0];
          const esds = boxes(u8, entry.body + 28, entry.start + entry.size).find((x) => x.type === "esds");
          audio = {
            trackId: dv.getUint32(tkhd.body + (v1(tkhd) ? 20 : 12)),
            timescale: dv.getUint32(mdhd.body + (v1(mdhd) ? 20 : 12)),
            channels: dv.getUint16(entry.body + 16),
            sampleRate: dv.getUint32(entry.body + 24) >>> 16,
            codec: entry.type === "mp4a" ? "mp4a.40.2" : entry.type,
            description: esds ? audioSpecificConfig(u8, esds) : null,
          };
          continue;
        }
      }
      kept.push(b);
    }
    if (!audio) return { init: buffer, audio: null };
    const parts = kept.map((b) => {
      if (b.type !== "mvex") return u8.subarray(b.start, b.start + b.size);
      const trex = boxes(u8, b.body, b.start + b.size).filter(
        (x) => !(x.type === "trex" && dv.getUint32(x.body + 4) === audio.trackId));
      return boxOf("mvex", trex.map((x) => u8.subarray(x.start, x.start + x.size)));
    });
    const out = top.map((b) => (b === moov ? boxOf("moov", parts) : u8.subarray(b.start, b.start + b.size)));
    return { init: concat(out).buffer, audio };
  }

  // One track fragment: its samples ({offset in the buffer, size, duration}), decode time, where
  // its trun's data offset field sits.
  function parseTraf(u8, dv, traf, moofStart) {
    let trackId = 0;
    let base = moofStart;
    let defaultDuration = 0;
    let defaultSize = 0;
    let time = 0;
    const samples = [];
    let dataOffsetAt = -1;
    for (const b of boxes(u8, traf.body, traf.start + traf.size)) {
      const flags = dv.getUint32(b.body) & 0xffffff;
      if (b.type === "tfhd") {
        trackId = dv.getUint32(b.body + 4);
        let at = b.body + 8;
        if (flags & 0x1) {
          base = Number(dv.getBigUint64(at));
          at += 8;
        }
        if (flags & 0x2) at += 4;
        if (flags & 0x8) {
          defaultDuration = dv.getUint32(at);
          at += 4;
        }
        if (flags & 0x10) defaultSize = dv.getUint32(at);
      } else if (b.type === "tfdt") {
        time = u8[b.body] === 1 ? Number(dv.getBigUint64(b.body + 4)) : dv.getUint32(b.body + 4);
      } else if (b.type === "trun") {
        if (samples.length) throw new Error("fmp4: one trun per traf is supported");
        const count = dv.getUint32(b.body + 4);
        let at = b.body + 8;
        let offset = 0;
        if (flags & 0x1) {
          dataOffsetAt = at;
          offset = dv.getInt32(at);
          at += 4;
        }
        if (flags & 0x4) at += 4;
        let pos = base + offset;
        for (let i = 0; i < count; i++) {
          let duration = defaultDuration;
          let size = defaultSize;
          if (flags & 0x100) { duration = dv.getUint32(at); at += 4; }
          if (flags & 0x200) { size = dv.getUint32(at); at += 4; }
          if (flags & 0x400) at += 4;
          if (flags & 0x800) at += 4;
          samples.push({ offset: pos, size, duration });
          pos += size;
        }
      }
    }
    return { trackId, time, samples, dataOffsetAt, box: traf };
  }

  // A media message (moof + mdat pairs) split into its video-only fragments and its audio samples
  // ({time, duration in the audio timescale, data}).
  function splitFragments(buffer, audioTrackId) {
    const u8 = new Uint8Array(buffer);
    const dv = new DataView(buffer);
    const video = [];
    const audio = [];
    for (const moof of boxes(u8).filter((b) => b.type === "moof")) {
      const inner = boxes(u8, moof.body, moof.start + moof.size);
      const mfhd = inner.find((b) => b.type === "mfhd");
      const trafs = inner.filter((b) => b.type === "traf").map((t) => parseTraf(u8, dv, t, moof.start));
      const vtrafs = [];
      for (const t of trafs) {
        if (t.trackId !== audioTrackId) {
          vtrafs.push(t);
          continue;
        }
        let time = t.time;
        for (const s of t.samples) {
          audio.push({ time, duration: s.duration, data: u8.slice(s.offset, s.offset + s.size) });
          time += s.duration;
        }
      }
      if (!vtrafs.length) continue;
      const moofSize = 8 + mfhd.size + vtrafs.reduce((n, t) => n + t.box.size, 0);
      const copies = [];
      const datas = [];
      let dataAt = moofSize + 8;
      for (const t of vtrafs) {
        const copy = u8.slice(t.box.start, t.box.start + t.box.size);
        if (t.dataOffsetAt >= 0) new DataView(copy.buffer).setInt32(t.dataOffsetAt - t.box.start, dataAt);
        copies.push(copy);
        const first = t.samples[0];
        const bytes = t.samples.reduce((n, s) => n + s.size, 0);
        if (first) datas.push(u8.subarray(first.offset, first.offset + bytes));
        dataAt += bytes;
      }
      video.push(boxOf("moof", [u8.subarray(mfhd.start, mfhd.start + mfhd.size), ...copies]), boxOf("mdat", datas));
    }
    return { video: video.length ? concat(video).buffer : null, audio };
  }

  // Decodes the AAC samples with WebCodecs and plays them in an AudioContext at the media times of
  // the <video>'s clock (its rVFC mediaTime and expectedDisplayTime). Scheduled audio follows one
  // anchor (media time <-> context time); when the picture's clock leaves it by more than
  // RESYNC seconds (a seek, a skip, a stall, a rate change) everything scheduled is stopped and
  // audio starts again from where the picture is.
  class AudioPath {
    constructor(video, config, stats) {
      this.video = video;
      this.config = config;
      this.stats = stats;
      this.ctx = new AudioContext({ latencyHint: "interactive" });
      this.gain = this.ctx.createGain();
      this.gain.connect(this.ctx.destination);
      this.queue = []; // decoded, not yet scheduled: {t (media s, raw), buffer}
      this.playing = []; // scheduled sources: {t, end, node}
      this.anchor = null; // {media, ctx, rate}
      this.offset = 0; // media time of raw audio time 0 (the page's tm.offset)
      this.end = -Infinity; // raw media time where the decoded audio ends
      this.pushed = { end: -Infinity, duration: 0 }; // the last sample pushed: where it ends, how long
      this.mute = null; // {from, to}: raw media times not heard (after an interrupt's cut, see cut)
      this.history = []; // scheduled chunks, {t, at, stopped} (audioScheduledAfter)
      this.loud = []; // decoded chunks: {t, at: raw time of the first loud sample or null}
      this.decoder = new AudioDecoder({
        output: (data) => this.decoded(data),
        error: (err) => this.stats.errors.push(String(err && err.message ? err.message : err)),
      });
      const cfg = { codec: config.codec, sampleRate: config.sampleRate, numberOfChannels: config.channels };
      if (config.description) cfg.description = config.description;
      this.decoder.configure(cfg);
      this.syncMuted();
    }

    close() {
      this.stopAll();
      try { this.decoder.close(); } catch (_) { /* already closed */ }
      this.ctx.close().catch(() => {});
    }

    syncMuted() {
      this.gain.gain.value = this.video.muted ? 0 : this.video.volume;
      if (!this.video.muted && this.ctx.state === "suspended") this.ctx.resume().catch(() => {});
    }

    // Encoded samples of one message, in order ({time, duration, data} in the audio timescale).
    push(samples) {
      // a decoder that failed (an unsupported configuration: stats.errors says why) takes nothing
      if (this.decoder.state !== "configured") return;
      const scale = this.config.timescale;
      for (const s of samples) {
        const t = s.time / scale;
      // nothing is anchored for a long while (paused, stalled): what is long past is not played
      if (!this.anchor && this.queue.length > 200) this.queue.splice(0, this.queue.length - 200);
        // A sample at or before one already held replaces what follows (like MSE's overlap rule).
        if (this.queue.length && this.queue[this.queue.length - 1].t >= t) this.queue = this.queue.filter((q) => q.t < t);
        this.stats.received += 1;
        this.pushed = { end: t + s.duration / scale, duration: s.duration / scale };
        this.decoder.decode(new EncodedAudioChunk({
          type: "key", timestamp: Math.round(t * 1e6), duration: Math.round((s.duration / scale) * 1e6), data: s.data,
        }));
      }
    }

    decoded(data) {
      const frames = data.numberOfFrames;
      const buffer = this.ctx.createBuffer(data.numberOfChannels, frames, data.sampleRate);
      let loud = -1; // the first sample above LOUD (for onsetAfter)
      const t = data.timestamp / 1e6;
      const rate = data.sampleRate;
      for (let c = 0; c < data.numberOfChannels; c++) {
        const plane = new Float32Array(frames);
        data.copyTo(plane, { planeIndex: c, format: "f32-planar" });
        this.muted(plane, t, rate);
        buffer.copyToChannel(plane, c);
        if (c === 0) loud = plane.findIndex((x) => Math.abs(x) > LOUD);
      }
      this.end = Math.max(this.end, t + frames / rate);
      data.close();
      this.stats.decoded += 1;
      this.loud.push({ t, at: loud >= 0 ? t + loud / rate : null });
      if (this.loud.length > 2000) this.loud.splice(0, 1000);
      this.queue.push({ t, buffer, at: loud >= 0 ? t + loud / rate : null });
      this.schedule();
      if (this.onDecoded) this.onDecoded();
    }

    // The picture's clock, from a painted frame: media time `media` shown at performance time `at`.
    clock(media, at, rate) {
      this.lastClock = { media, at, rate };
      const ts = this.ctx.getOutputTimestamp();
      if (ts.performanceTime == null || !ts.performanceTime) return;
      // context time at which sound made now is heard at performance time `at`
      const ctxAt = ts.contextTime + (at - ts.performanceTime) / 1000;
      const raw = media - this.offset;
      const a = this.anchor;
      if (a) {
        const predicted = a.ctx + (raw - a.media) / a.rate;
        const drift = ctxAt - predicted;
        this.stats.drift = drift;
        if (Math.abs(drift) <= this.config.resync && a.rate === rate) {
          this.schedule();
          return;
        }
        if (Math.abs(drift) <= this.config.resync) {
          // only the rate changed: what is playing plays on at the new rate, the rest is scheduled again
          this.stats.rateChanges += 1;
          this.stopUnstarted(rate);
        } else {
          this.stats.resyncs += 1;
          this.stopAll(true);
        }
      }
      this.anchor = { media: raw, ctx: ctxAt, rate };
      this.schedule();
    }

    // Media time of the first sound at or after `media` - 0.2 s, minus `media` (seconds; null if none
    // decoded yet): where the audio of a turn starts against its first frame.
    onsetAfter(media) {
      const raw = media - this.offset;
      const hit = this.loud.find((c) => c.at !== null && c.at >= raw - 0.2);
      return hit ? hit.at - raw : null;
    }

    // Media time where the decoded audio ends: the picture should not run past it (keepLive).
    edge() {
      return this.end + this.offset;
    }

    // How many scheduled and not stopped chunks have sound at or after `media`.
    scheduledSoundAfter(media) {
      const raw = media - this.offset;
      return this.history.filter((p) => !p.stopped && p.at !== null && p.at >= raw).length;
    }

    // Performance time at which media time `media` is heard (NaN before the first anchor).
    heardAt(media) {
      const a = this.anchor;
      if (!a) return NaN;
      const ts = this.ctx.getOutputTimestamp();
      const ctxT = a.ctx + (media - this.offset - a.media) / a.rate;
      return ts.performanceTime + (ctxT - ts.contextTime) * 1000;
    }

    // The picture stopped (stall, pause): stop the sound, start again at the next painted frame.
    hold() {
      this.stopAll(true);
      this.anchor = null;
    }

    // Interrupt: nothing after the cut (raw media seconds) is heard. The encoder sends the sound
    // ahead of the picture, so what came before the cut was announced reaches up to an AAC frame
    // past it, and its last packet decodes with a tail one frame long (MDCT overlap) into the
    // next one's time: that stretch is muted, whenever it is decoded. (The next turn starts after
    // it: the encoder had fed more than that when it cut, services/encoder/live/session.py.)
    cut(media) {
      const raw = media - this.offset;
      this.mute = { from: raw, to: Math.max(raw, this.pushed.end) + this.pushed.duration };
      const a = this.anchor;
      for (const p of this.playing) {
        if (p.t + 1e-3 >= raw) this.stopNode(p);
        else if (p.end > raw && a) p.node.stop(a.ctx + (raw - a.media) / a.rate); // stops at the cut
      }
      this.playing = this.playing.filter((p) => p.t + 1e-3 < raw);
      this.queue = this.queue.filter((q) => q.t + 1e-3 < raw);
      for (const q of this.queue) {
        for (let c = 0; c < q.buffer.numberOfChannels; c++) this.muted(q.buffer.getChannelData(c), q.t, q.buffer.sampleRate);
      }
    }

    // Zeroes the samples of `plane` (starting at raw media time t) that fall in the muted stretch.
    muted(plane, t, rate) {
      const m = this.mute;
      if (!m || t >= m.to || t + plane.length / rate <= m.from) return;
      const from = Math.max(0, Math.round((m.from - t) * rate));
      const to = Math.min(plane.length, Math.round((m.to - t) * rate));
      plane.fill(0, from, to);
      this.stats.muted += 1;
    }

    stopNode(p) {
      p.stopped = true;
      try { p.node.stop(); } catch (_) { /* not started */ }
      p.node.disconnect();
    }

    // Stops and requeues what has not started; what has plays on at `rate`.
    stopUnstarted(rate) {
      const now = this.ctx.currentTime;
      const later = this.playing.filter((p) => p.startCtx > now);
      for (const p of later) this.stopNode(p);
      for (const p of this.playing) if (p.startCtx <= now) p.node.playbackRate.value = rate;
      this.playing = this.playing.filter((p) => p.startCtx <= now);
      const back = later.map((p) => ({ t: p.t, buffer: p.node.buffer, at: p.at }));
      this.queue = back.concat(this.queue.filter((q) => !back.length || q.t > back[back.length - 1].t));
    }

    // Stops what is scheduled; with `requeue` what is not heard yet goes back to the queue (it is
    // scheduled again on the next anchor).
    stopAll(requeue = false) {
      for (const p of this.playing) this.stopNode(p);
      if (requeue) {
        const now = this.ctx.currentTime;
        const back = this.playing.filter((p) => p.endCtx > now).map((p) => ({ t: p.t, buffer: p.node.buffer, at: p.at }));
        this.queue = back.concat(this.queue.filter((q) => !back.length || q.t > back[back.length - 1].t));
      }
      this.playing = [];
    }

    schedule() {
      const a = this.anchor;
      if (!a) return;
      const now = this.ctx.currentTime;
      this.playing = this.playing.filter((p) => p.endCtx > now);
      const scheduledUpTo = this.playing.length ? this.playing[this.playing.length - 1].end : -Infinity;
      while (this.queue.length) {
        const q = this.queue[0];
        const dur = q.buffer.duration;
        if (q.t + dur <= scheduledUpTo + 1e-4) { this.queue.shift(); continue; } // already scheduled
        const start = a.ctx + (q.t - a.media) / a.rate;
        if (start > now + this.config.horizon) break; // later
        this.queue.shift();
        const endCtx = start + dur / a.rate;
        if (endCtx <= now) {
          this.stats.late += 1; // its time went by before it could be scheduled
          if (q.at !== null) this.stats.lateSound += 1;
          continue;
        }
        const node = this.ctx.createBufferSource();
        node.buffer = q.buffer;
        node.playbackRate.value = a.rate;
        node.connect(this.gain);
        const skip = Math.max(0, (now - start) * a.rate);
        node.start(Math.max(start, now), skip);
        const p = { t: q.t, end: q.t + dur, startCtx: Math.max(start, now), endCtx, node, at: q.at, stopped: false };
        this.playing.push(p);
        this.history.push(p);
        if (this.history.length > 2000) this.history.splice(0, 1000);
        this.stats.scheduled += 1;
      }
    }
  }

  window.TalkmeshAudio = { boxes, splitInit, splitFragments, AudioPath };
})();

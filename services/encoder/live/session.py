"""One live session's timeline: a frame per tick at wall-clock pace, turns, interrupts, idle.

The clock: frame ``n`` is due at ``T0 + n / fps`` (exact fractions, so ten minutes or ten hours
later the media time still equals the wall time). At each tick exactly one frame is encoded and
sent in its own fragment (idle batches aside, see below), with that frame's audio (``MediaClock``:
the samples ``[start(n), start(n + 1))``), silence when idle. The audio track's times come from
sample counts, so audio and video share one clock and cannot drift.

The sound leads the picture while speaking: the AAC encoder sends a frame's packets two frames
later (look-ahead and its 1024-sample delay), so a speaking frame's audio is fed with the audio
after it (``LiveCodecs.audio_lead``, ~67 ms) and its fragment carries all of its sound. The lead
only reaches over what will surely play on the next ticks: the turn's next frames when they are
rendered and their audio is here (a frame that may be late is never led into: an underrun repeats
the previous frame with silence), and silence after the turn's last frame, so a turn starts, and
the session ends, only at a frame the lead does not reach (one or two frames later than without).
Idle ticks feed no lead (their silence costs nothing, see ``LiveCodecs.encode_silence``). An
interrupt drops the speech fed past the cut with the encoder that holds it
(``LiveCodecs.cut_audio``): what was sent reaches at most an AAC frame past the cut, which the
page mutes (docs/WEB.md).

What a tick shows:

* the current turn's next frame, when it is rendered and its audio has arrived (speech audio is
  never sent without its frame, or the frame before it: the lead above);
* a repeat of the previous frame, with silence, when the current turn's next frame is late although
  its audio is there (an *underrun*: the turn moves one frame later, nothing of it is skipped);
* idle otherwise: a short cross-fade from the last speech frame into the idle loop, then the
  loop's pre-encoded frames (no render, no H.264 encode). When the turn is only waiting for more
  text, the avatar idles meanwhile.

Idle batches: while the session idles on the pre-encoded loop with nothing else to do (no current
turn, no queued turn, no pending interrupt, not cross-fading, a spliceable loop), up to
``live.idle_frames_per_fragment`` (K) loop frames go out in one fragment, sent when the first of
them is due; the others ride ahead of the clock (at most K-1 frames, well within the lead speech
may have). A batch never holds a keyframe after its first frame, so every GOP start still starts a
fragment (viewers join there). What the batch sends is final: a turn that becomes ready, or an
interrupt that arrives, meanwhile takes effect at the first frame not yet sent (a turn starts at
most K-1 frames later than with K = 1). The timeline stays gap-free: the next tick is the frame
after the batch. With the default K = 4 and one-second GOPs an idle second costs 7 messages and
timer wake-ups in the encoder and in the gateway instead of 25, which is what an idle session costs.

Turns are played in the order they started; each has its own Render stream, started as soon as
the turn's input arrives, holding at most ``lead`` rendered frames ahead of the clock. An
interrupt is applied the moment it arrives (the tick loop wakes up for it): the stopped turns'
render streams are cancelled, nothing of them is sent afterwards, and the acknowledgement goes out
in order after the last frame that was sent. Events are stamped when they are sent. A text turn's
caption cues (``TurnCaption``: a clause's text and first sample) go out as ``caption`` events right
after the media of the frame that sample is in, as ``speaking_started`` does for its first frame; a
stopped turn's cues not reached go with it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from fractions import Fraction

from services.encoder.backends import open_errors
from services.encoder.backends.base import VideoBackend
from services.encoder.config import EncoderConfig
from services.encoder.fmp4 import FragmentWriter, Sample
from services.encoder.live.idle import IdleLoop, blend_i420
from services.encoder.live.media import LiveCodecs, LiveParams
from services.encoder.metrics import LiveState
from services.encoder.render import FrameRings, FrameSource, RingOffer, unbatched
from talkmesh.common.aio import Chan, TaskSet, wait_event
from talkmesh.common.calls import Stream
from talkmesh.common.clock import MediaClock
from talkmesh.common.errors import InvalidArgument, TalkmeshError
from talkmesh.common.lru import Lru
from talkmesh.common.streams import RequestStream
from talkmesh.common.telemetry import LiveSessionState, Telemetry
from talkmesh.v1 import common_pb2, encoder_pb2, live_pb2, renderer_pb2

log = logging.getLogger(__name__)

#: Frames of cross-fade from the last speech frame into the idle loop (a smooth mouth close).
BLEND_FRAMES = 3
#: Renderer input a turn may hold (the gateway's read-ahead keeps it far below).
TURN_INPUT_CAPACITY = 4096
#: Ids of stopped turns a session remembers (later input for them is dropped, not a new turn).
STOPPED_TURNS_KEPT = 4096


@dataclass
class Turn:
    """A turn's state on the encoder: its audio, its rendered frames, how much of it was played."""

    turn_id: str
    source_rate: int
    clock: MediaClock
    lead: int
    render_in: Chan[renderer_pb2.RenderRequest] = field(init=False)
    frames: collections.deque[tuple[int, bytes, bool]] = field(default_factory=collections.deque)
    room: asyncio.Event = field(default_factory=asyncio.Event)
    audio: bytearray = field(default_factory=bytearray)
    audio_base: int = 0  # turn sample index of audio[0] (audio fed to the encoder is trimmed)
    audio_samples: int = 0  # samples received
    fed: int = 0  # samples handed to the encoder (up to a lead past the last frame played)
    input_done: bool = False
    render_done: bool = False
    played: int = 0
    rendered: int = 0
    stopped: bool = False
    failed: str = ""
    #: the status code of a failure found here (a render failed); 0 when the gateway failed the
    #: turn (``turn_failed``): it has told its client, so no LiveError is sent for it
    failed_code: int = 0
    #: the offending field of that failure, when one is to blame (its LiveError names it)
    failed_field: str = ""
    underrun: bool = False
    stream: Stream | None = None
    seq: int = 1
    ring: RingOffer | None = None  # the turn's frame ring (a renderer on this machine)
    #: a text turn's caption cues not sent yet, in order of their start sample
    captions: collections.deque[encoder_pb2.TurnCaption] = field(default_factory=collections.deque)
    caption_from: int = 0  # the least start sample the next cue may have

    def __post_init__(self) -> None:
        self.render_in = Chan(TURN_INPUT_CAPACITY + 1)  # + the frame ring's offer
        self.room.set()

    @property
    def total_frames(self) -> int | None:
        """Frames of the whole turn, once its input is complete."""
        return self.clock.frames_for(self.audio_samples) if self.input_done else None

    def add_audio(self, chunk: common_pb2.AudioChunk) -> None:
        if chunk.sample_rate and chunk.sample_rate != self.clock.sample_rate:
            raise InvalidArgument("audio.sample_rate", f"{chunk.sample_rate} Hz is not the session's rate")
        if len(chunk.pcm) % 2:
            raise InvalidArgument("audio.pcm", "PCM s16le needs an even number of bytes")
        if chunk.sample_offset != self.audio_samples:
            raise InvalidArgument(
                "audio.sample_offset",
                f"expected {self.audio_samples} for turn {self.turn_id!r}, got {chunk.sample_offset}",
            )
        self.audio += chunk.pcm
        self.audio_samples += len(chunk.pcm) // 2

    def add_caption(self, caption: encoder_pb2.TurnCaption) -> None:
        if caption.start_sample < self.caption_from:
            raise InvalidArgument(
                "caption.start_sample", f"{caption.start_sample} is before {self.caption_from}, the turn's last cue's"
            )
        self.caption_from = caption.start_sample
        self.captions.append(caption)

    def captions_in(self, k: int) -> list[encoder_pb2.TurnCaption]:
        """The cues whose clause starts in the turn's frame ``k`` (just played), or before it; on
        its last frame, every cue left."""
        end = self.clock.start(k + 1)
        last = self.finished()
        out = []
        while self.captions and (last or self.captions[0].start_sample < end):
            out.append(self.captions.popleft())
        return out

    def has_audio_for(self, k: int) -> bool:
        return self.input_done or self.audio_samples >= self.clock.start(k + 1)

    def ready(self) -> bool:
        """The next frame can be played now: rendered, and its audio is here."""
        k = self.played
        return bool(self.frames) and self.frames[0][0] == k and self.has_audio_for(k)

    def can_start(self, buffer_frames: int) -> bool:
        """Frame 0 is ready and enough frames are buffered to absorb jitter (or all of them are).

        The buffer absorbs input arriving in real time (a caller's audio). When the input already
        runs ahead of it (a text turn: the TTS is faster than real time), only the renderer paces
        the turn and it starts with two frames rendered (one frame of slack for the renderer's own
        jitter): the full buffer would only add latency."""
        if not (self.played == 0 and self.ready()):
            return False
        total = self.total_frames
        all_rendered = self.render_done or (total is not None and self.rendered >= total)
        buffered = len(self.frames)
        input_ahead = self.has_audio_for(2 * buffer_frames) and buffered >= min(2, buffer_frames)
        return buffered >= min(buffer_frames, self.lead) or all_rendered or input_ahead

    def finished(self) -> bool:
        total = self.total_frames
        return total is not None and self.played >= total

    def take(self, lead: int) -> tuple[bytes, bool, bytes]:
        """The next frame (raw, inferred) and the audio to feed with it: what is not fed yet up to
        the frame's end, and on up to ``lead`` samples past it as far as the frames after it will
        surely play on the next ticks (see ``_sure_end``). Advances the turn by one frame."""
        k, raw, inferred = self.frames.popleft()
        self.room.set()
        self.played += 1
        end = self.clock.start(k + 1)
        lo, hi = self.fed, max(self.fed, end, self._sure_end(end + lead))
        pcm = bytes(self.audio[2 * (lo - self.audio_base) : 2 * (hi - self.audio_base)])
        pcm += b"\x00" * (2 * (hi - lo) - len(pcm))  # past the end of the turn's audio: silence
        self.fed = hi
        cut = 2 * (hi - self.audio_base)
        if cut > 1 << 16:  # drop what was fed
            del self.audio[:cut]
            self.audio_base = hi
        return raw, inferred, pcm

    def _sure_end(self, limit: int) -> int:
        """How far (at most ``limit``) the audio of the frames after the one taken can be fed now:
        over the frames that will surely play on the next ticks, rendered with their audio here
        (an underrun repeats a frame with silence, so a frame that may be late is never led
        into), and past the turn's last frame (silence: the next turn waits for it, see
        ``LiveSession._current_turn``)."""
        j = self.played
        total = self.total_frames
        for index, _raw, _inferred in self.frames:
            if self.clock.start(j) >= limit or index != j or not self.has_audio_for(j):
                break
            j += 1
        if total is not None and j >= total:
            return limit
        return min(limit, self.clock.start(j))

    def samples_played(self) -> int:
        """The turn's own audio that was sent, in samples at its source rate."""
        return self.clock.played_at(self.played, self.audio_samples, self.source_rate)


@dataclass
class _Output:
    seq: int = 0

    def message(self, **kind: object) -> live_pb2.LiveServerMessage:
        msg = live_pb2.LiveServerMessage(seq=self.seq, **kind)  # type: ignore[arg-type]
        self.seq += 1
        return msg


class LiveSession:
    """The encoder side of a live session; ``run`` yields the messages for the gateway."""

    def __init__(
        self,
        config: EncoderConfig,
        telemetry: Telemetry,
        backend: VideoBackend,
        source: FrameSource,
        live_config: encoder_pb2.LiveEncodeConfig,
        render: renderer_pb2.RenderConfig,
        params: LiveParams,
        loop: IdleLoop,
        timeout: float | None,
        rings: FrameRings | None = None,
    ) -> None:
        self.config = config
        self.rings = rings
        self.telemetry = telemetry
        self.backend = backend
        self.source = source
        self.live_config = live_config
        self.render = render
        self.params = params
        self.loop = loop
        self.timeout = timeout
        self.clock = MediaClock(params.fps, params.sample_rate)
        lead_ms = live_config.lead_ms or config.live.lead_ms
        self.lead = max(1, self.clock.frames_for_seconds(Fraction(lead_ms, 1000)))
        # a turn starts once this much is rendered: input arriving in real time (a caller's audio)
        # then plays without underruns, at the price of this much latency
        self.start_frames = max(1, self.clock.frames_for_seconds(Fraction(config.live.start_buffer_ms, 1000)))
        self.turns: collections.OrderedDict[str, Turn] = collections.OrderedDict()
        self.current: Turn | None = None
        self.stopped_ids: Lru[str, bool] = Lru(STOPPED_TURNS_KEPT)  # input for them is dropped
        #: interrupts read and not applied yet: (turn id, or "" for every turn; the ids of the turns
        #: it stops, fixed when it is read: a turn started after it is not one of them; when
        #: received; why: STOP_REASON_INTERRUPTED (acknowledged), _FAILED (a turn's failure) or
        #: _SESSION_ENDED (the session's end: every turn stops, no acknowledgement))
        self.interrupts: list[tuple[str, list[str], float, int]] = []
        self.wakeup = asyncio.Event()
        self.input_ended = False
        self.tasks = TaskSet(f"live-{live_config.session_id}")
        self.out = _Output()
        # what was shown last, for underruns and blends
        self.last_raw: bytes | None = None
        self.last_kind = "loop"  # "live" (encoded by the session's encoder) or "loop"
        self.loop_pos = 0
        self.blend_target: int | None = None
        self.blend_step = 0
        self._pending_audio: list[Sample] = []
        # idle loop frames per fragment while nothing else is going on (never more than the lead)
        self.idle_batch = max(1, min(config.live.idle_frames_per_fragment, self.lead))
        metrics = telemetry.metrics
        self._underruns = metrics.live_underruns_total.labels(telemetry.service)
        self._lead_gauge = metrics.live_lead_frames.labels(telemetry.service)
        self._lead_reported = 0  # this session's part of the gauge (summed over the sessions)
        # speaking or idle in talkmesh_live_sessions: what divides the lead
        self._state = LiveSessionState(telemetry)
        self._late = metrics.live_late_ticks_total.labels(telemetry.service)

    # -- input --------------------------------------------------------------------------------
    async def _route(self, requests: RequestStream[encoder_pb2.LiveEncodeRequest]) -> None:
        """The gateway's messages: turns and their data, end-of-turn, interrupts (never blocks)."""
        async for req in requests:
            kind = req.WhichOneof("kind")
            tid = req.turn_id
            if kind in ("interrupt", "end_session"):
                # its targets are the turns known now, in order with the input: a turn started
                # right after it (read while the tick loop encodes a frame) is not stopped by it
                if kind == "end_session":
                    self._interrupt("", list(self.turns), why=live_pb2.STOP_REASON_SESSION_ENDED)
                else:
                    self._interrupt(tid, list(self.turns) if not tid else [tid])
                continue
            if tid in self.stopped_ids:
                continue  # a stopped turn's late input: fenced off
            if kind == "turn_start":
                rate = req.turn_start.source_sample_rate or self.params.sample_rate
                if not tid:
                    raise InvalidArgument("turn_id", "must not be empty")
                if tid in self.turns:
                    self.turns[tid].source_rate = rate  # a text turn learns its voice's rate later
                else:
                    self._start_turn(tid, rate)
                continue
            turn = self.turns.get(tid)
            if turn is None:
                raise InvalidArgument("turn_id", f"unknown turn {tid!r} (send turn_start first)")
            if turn.failed:
                continue  # its failure is pending (stopped at the next frame): the rest is dropped
            try:
                self._turn_input(turn, kind, req)
            except InvalidArgument as exc:
                # a mistake in one turn's input fails that turn, not the session
                log.warning("live turn %s failed: %s", tid, exc.message)
                self._fail(turn, exc)
        self.input_ended = True
        self.wakeup.set()

    def _turn_input(self, turn: Turn, kind: str | None, req: encoder_pb2.LiveEncodeRequest) -> None:
        """A message of a started turn (INVALID_ARGUMENT: the turn's input is wrong)."""
        if kind == "audio":
            turn.add_audio(req.audio)
        elif kind == "caption":
            turn.add_caption(req.caption)
        elif kind in ("visemes", "features"):
            # the turn's frame ring, once made, goes ahead of the input (if there is room for both)
            if turn.ring is not None and turn.render_in.qsize() < TURN_INPUT_CAPACITY:
                offer = turn.ring.offer(turn.seq)
                if offer is not None:
                    turn.render_in.send_nowait(offer)
                    turn.seq += 1
            msg = renderer_pb2.RenderRequest(seq=turn.seq)
            turn.seq += 1
            if kind == "visemes":
                msg.visemes.CopyFrom(req.visemes)
            else:
                msg.features.CopyFrom(req.features)
            try:
                turn.render_in.send_nowait(msg)
            except asyncio.QueueFull:
                raise InvalidArgument(kind, f"turn {turn.turn_id!r} sent too far ahead of playback") from None
        elif kind == "end_of_turn":
            turn.input_done = True
            if not turn.render_in.closed:
                try:
                    turn.render_in.send_nowait(renderer_pb2.RenderRequest(seq=turn.seq, end_of_stream=True))
                except asyncio.QueueFull:
                    raise InvalidArgument(
                        "end_of_turn", f"turn {turn.turn_id!r} sent too far ahead of playback"
                    ) from None
                turn.render_in.close()
        elif kind == "turn_failed":
            turn.failed = req.turn_failed or "the turn's input failed"
            self._interrupt(turn.turn_id, [turn.turn_id], why=live_pb2.STOP_REASON_FAILED)

    def _interrupt(self, tid: str, targets: list[str], *, why: int = live_pb2.STOP_REASON_INTERRUPTED) -> None:
        """Stops the turns ``targets`` at the next frame (the tick loop wakes up for it), ``why``
        (a StopReason): an interrupt (acknowledged), a turn that failed, or the session's end."""
        self.interrupts.append((tid, targets, time.perf_counter(), why))
        self.wakeup.set()

    def _fail(self, turn: Turn, exc: TalkmeshError) -> None:
        """A failure found here (the turn's input was wrong, its render failed) stops the turn at
        the next frame, with its LiveError (``failed_code``) ahead of its speaking_stopped."""
        turn.failed = exc.message
        turn.failed_code = exc.code.value[0]
        turn.failed_field = getattr(exc, "field", "")
        self._interrupt(turn.turn_id, [turn.turn_id], why=live_pb2.STOP_REASON_FAILED)

    def _start_turn(self, tid: str, source_rate: int) -> None:
        turn = Turn(tid, source_rate, self.clock, self.lead)
        self.turns[tid] = turn
        config = renderer_pb2.RenderConfig()
        config.CopyFrom(self.render)
        turn.render_in.send_nowait(renderer_pb2.RenderRequest(config=config))
        if self.rings is not None:  # offered by _route ahead of the turn's first input, once made
            turn.ring = self.rings.take(self.params.frame_bytes)
        self.tasks.spawn(self._render_turn(turn), name=f"render-{tid}")

    async def _render_turn(self, turn: Turn) -> None:
        """Pulls the turn's frames from the renderer, at most ``lead`` ahead of playback."""
        if turn.stopped:  # interrupted before this task ran: no Render stream for it
            turn.render_done = True
            return
        stream = self.source.render(turn.render_in, self.timeout)
        turn.stream = stream
        w, h = self.params.width, self.params.height
        frame_bytes = self.params.frame_bytes
        parts: list[bytes] = []
        try:
            async for vf in unbatched(stream):
                if vf.end_of_stream:
                    break
                if vf.width != w or vf.height != h:
                    raise InvalidArgument("render", f"frame is {vf.width}x{vf.height}, the session is {w}x{h}")
                if vf.in_ring:
                    if turn.ring is None:
                        raise InvalidArgument("frame.in_ring", "no frame ring was offered to the renderer")
                    # copied out: the turn keeps its frames until they are played
                    raw = bytes(turn.ring.pixels(vf, w, h, frame_bytes))
                else:
                    parts.append(vf.data)
                    if vf.part_index + 1 < max(1, vf.part_count):
                        continue
                    raw = parts[0] if len(parts) == 1 else b"".join(parts)
                    parts = []
                if turn.ring is not None:
                    turn.ring.release(vf.frame_index + 1)
                if vf.frame_index == 0 and self.rings is not None:  # a ring ready for the next turn
                    self.rings.prepare(frame_bytes)
                turn.frames.append((vf.frame_index, raw, vf.inferred))
                turn.rendered += 1
                while len(turn.frames) >= turn.lead and not turn.stopped:
                    turn.room.clear()
                    await turn.room.wait()
        except asyncio.CancelledError:
            raise
        except TalkmeshError as exc:
            if not turn.stopped:
                self._fail(turn, exc)
        finally:
            turn.render_done = True
            if turn.ring is not None:  # first: nothing below may stop it
                turn.ring.close()
            await stream.cancel()

    # -- the clock ----------------------------------------------------------------------------
    async def run(
        self, requests: RequestStream[encoder_pb2.LiveEncodeRequest]
    ) -> AsyncGenerator[live_pb2.LiveServerMessage, None]:
        # One encoder per live session, reused across its turns and idle stretches. No per-session
        # x264 fallback here: the idle loops spliced into the stream are encoded with the same
        # backend's parameter sets. NVENC's session limit -> RESOURCE_EXHAUSTED.
        with open_errors(self.backend):
            codecs = await asyncio.to_thread(LiveCodecs, self.params, self.backend, self.config.audio)
        writer = FragmentWriter(codecs.init_segment, self.params.fps)
        self.codecs = codecs
        self.writer = writer
        if self.rings is not None:  # a frame ring ready for the first turn
            self.rings.prepare(self.params.frame_bytes)
        fps = self.params.fps
        try:
            self._state.set(LiveState.IDLE)
            self.tasks.spawn(self._route(requests), name="route")
            t0 = time.monotonic()
            unix0 = time.time()
            yield self.out.message(
                started=live_pb2.SessionStarted(
                    session_id=self.live_config.session_id,
                    width=self.params.width,
                    height=self.params.height,
                    fps_numerator=fps.numerator,
                    fps_denominator=fps.denominator,
                    sample_rate=self.params.sample_rate,
                    mime_type=codecs.mime_type,
                    frame0_unix_seconds=unix0,
                    video_encoder=codecs.video_encoder,
                    avatar_id=self.render.avatar_id,
                    request_id=self.live_config.request_id,
                )
            )
            yield self.out.message(media=live_pb2.LiveMedia(data=codecs.init_segment, init_segment=True))
            n = 0
            period = float(self.clock.seconds(1))
            while True:
                if self.tasks.failure is not None:
                    raise self.tasks.failure
                due = t0 + float(self.clock.seconds(n))  # exact media time, rounded once
                while (delay := due - time.monotonic()) > 0:
                    if self.interrupts:
                        for msg in self._apply_interrupts(n):
                            yield msg
                        continue
                    self.wakeup.clear()
                    await wait_event(self.wakeup, delay)
                if time.monotonic() - due > period:  # more than a frame late
                    self._late.inc()
                if self.interrupts:
                    for msg in self._apply_interrupts(n):
                        yield msg
                if self.input_ended and self.current is None and not self.turns and not self._audio_ahead(n):
                    break
                count = self._idle_batch_size()
                if count > 1:
                    yield self._idle_batch(n, count)
                    n += count
                    continue
                for msg in await self._tick(n):
                    yield msg
                n += 1
            # the audio encoder's tail, so the audio track ends with the video track
            tail = await asyncio.to_thread(codecs.flush_audio)
            if tail:  # no frames: it sits at the end of the timeline (frame n, its first sample), covering none
                data = writer.fragment([], [], tail)
                media = live_pb2.LiveMedia(data=data, first_frame=n, first_sample=self.clock.start(n))
                yield self.out.message(media=media)
        finally:
            self._report_lead(0)  # a session that ended has nothing ahead of its clock
            self._state.set(None)
            for turn in self.turns.values():  # first: nothing below may stop it
                if turn.ring is not None:
                    turn.ring.close()
            await self.tasks.aclose()
            for turn in self.turns.values():
                if turn.stream is not None:
                    await turn.stream.cancel()
            await asyncio.to_thread(codecs.close)

    def _report_lead(self, frames: int) -> None:
        self._lead_gauge.inc(frames - self._lead_reported)
        self._lead_reported = frames

    # -- one tick -----------------------------------------------------------------------------
    async def _tick(self, n: int) -> list[live_pb2.LiveServerMessage]:
        events: list[live_pb2.LiveEvent] = []
        turn = self._current_turn(n, events)
        lo, hi = self.clock.start(n), self.clock.start(n + 1)
        silence = b"\x00" * (2 * max(0, hi - self.codecs.fed))  # what the lead has not covered
        label = ""
        repeat = False  # an underrun's repeat: it shows the turn, none of the turn's own media
        if turn is not None and turn.ready():
            k = turn.played
            raw, _inferred, pcm = turn.take(self.codecs.audio_lead)
            turn.underrun = False
            video, key = await asyncio.to_thread(self._encode, raw, n, self.last_kind == "loop", pcm)
            self.last_raw, self.last_kind = raw, "live"
            self.blend_target = None
            label = turn.turn_id
            if k == 0:
                events.append(self._event(n, speaking_started=live_pb2.SpeakingStarted(turn_id=turn.turn_id)))
            for cue in turn.captions_in(k):  # the clauses whose first sound this frame carries
                caption = live_pb2.Caption(turn_id=turn.turn_id, segment_index=cue.segment_index, text=cue.text)
                events.append(self._event(n, caption=caption))
            if turn.finished():
                events.append(self._stopped(turn, n + 1, live_pb2.STOP_REASON_COMPLETED))
                self._drop(turn)
        elif (
            turn is not None
            and self.last_kind == "live"
            and self.last_raw is not None
            and (turn.has_audio_for(turn.played) and self.blend_target is None)
        ):
            # the frame is late although its audio is here: repeat the previous one, with silence
            if not turn.underrun:
                turn.underrun = True
                self._underruns.inc()
                events.append(self._event(n, underrun=live_pb2.Underrun(turn_id=turn.turn_id, turn_frame=turn.played)))
            video, key = await asyncio.to_thread(self._encode, self.last_raw, n, False, silence)
            label = turn.turn_id
            repeat = True
        else:
            video, key = await self._idle(n, silence)
        self._report_lead(len(self.current.frames) if self.current is not None else 0)
        self._state.set(LiveState.IDLE if self.current is None else LiveState.SPEAKING)
        media = live_pb2.LiveMedia(
            data=self._fragment(video, key),
            first_frame=n,
            frame_count=1,
            first_sample=lo,
            sample_count=hi - lo,
            keyframe=key,
            turn_id=label,
            underrun=repeat,
        )
        out = [self.out.message(media=media)]
        now = time.time()
        for ev in events:
            ev.unix_seconds = now
            out.append(self.out.message(event=ev))
        return out

    def _current_turn(self, n: int, events: list[live_pb2.LiveEvent]) -> Turn | None:
        """The turn playing now: the current one, else the first queued one once it can start."""
        if self.current is not None:
            if self.current.finished():
                events.append(self._stopped(self.current, n, live_pb2.STOP_REASON_COMPLETED))
                self._drop(self.current)
            else:
                return self.current
        for turn in self.turns.values():
            if turn.can_start(self.start_frames) and not self._audio_ahead(n):
                self.current = turn
                return turn
            if turn.finished():  # a turn with no audio at all: nothing to play
                events.append(self._stopped(turn, n, live_pb2.STOP_REASON_COMPLETED))
                self._drop(turn)
            return None  # turns play in order: wait for the first one
        return None

    def _idle_batch_size(self) -> int:
        """Loop frames the next fragment may hold: 1 unless the session idles on the pre-encoded
        loop with nothing else to do; a batch ends before the loop's next keyframe."""
        loop = self.loop
        if (
            self.idle_batch <= 1
            or self.current is not None
            or self.turns
            or self.interrupts
            or self.last_kind != "loop"
            or self.blend_target is not None
            or not loop.spliceable
        ):
            return 1
        count = 1
        while count < self.idle_batch and not loop.keyframes[(self.loop_pos + count) % len(loop)]:
            count += 1
        return count

    def _idle_batch(self, n: int, count: int) -> live_pb2.LiveServerMessage:
        """Frames ``n .. n + count - 1`` of the idle loop and their silence, in one fragment."""
        loop = self.loop
        packets: list[bytes] = []
        keys: list[bool] = []
        for _ in range(count):
            pos = self.loop_pos
            packets.append(loop.packets[pos])
            keys.append(loop.keyframes[pos])
            self.loop_pos = (pos + 1) % len(loop)
        lo, hi = self.clock.start(n), self.clock.start(n + count)
        audio = self._take_audio() + self.codecs.encode_silence(max(0, hi - self.codecs.fed))  # cached packets
        media = live_pb2.LiveMedia(
            data=self.writer.fragment(packets, keys, audio),
            first_frame=n,
            frame_count=count,
            first_sample=lo,
            sample_count=hi - lo,
            keyframe=keys[0],
        )
        return self.out.message(media=media)

    async def _idle(self, n: int, silence: bytes) -> tuple[bytes, bool]:
        """An idle frame: the cross-fade into the loop after speech, then the loop's packets."""
        loop = self.loop
        if self.last_kind == "live" and self.last_raw is not None:
            # cross-fade from the last speech frame into the loop, entering it at a GOP start
            if self.blend_target is None:
                self.blend_target = loop.entry_at_or_after(self.loop_pos + BLEND_FRAMES)
                self.blend_step = 0
            self.blend_step += 1
            if self.blend_step <= BLEND_FRAMES:
                weight = self.blend_step / (BLEND_FRAMES + 1)
                raw = blend_i420(self.last_raw, loop.entries[self.blend_target], weight)
                return await asyncio.to_thread(self._encode, raw, n, False, silence)
            self.loop_pos = self.blend_target
            self.blend_target = None
            self.last_raw = None
        if loop.spliceable:
            # after a live frame the loop can only be entered at a GOP start (an IDR)
            pos = self.loop_pos if self.last_kind == "loop" else loop.entry_at_or_after(self.loop_pos)
            self.loop_pos = (pos + 1) % len(loop)
            self.last_kind = "loop"
            self._pending_audio += self.codecs.encode_silence(len(silence) // 2)  # no thread hop
            return loop.packets[pos], loop.keyframes[pos]
        pos = self.loop_pos
        self.loop_pos = (pos + 1) % len(loop)
        video, key = await asyncio.to_thread(self._encode, loop.raw[pos], n, False, silence)
        self.last_kind = "live"
        self.last_raw = None
        return video, key

    def _encode(self, raw: bytes, pts: int, force_keyframe: bool, pcm: bytes) -> tuple[bytes, bool]:
        """Encodes one frame and its audio (blocking: runs in a worker thread)."""
        video, key = self.codecs.video.encode(raw, pts, force_keyframe=force_keyframe)
        self._pending_audio += self.codecs.encode_audio(pcm)
        return video, key

    def _fragment(self, video: bytes, key: bool) -> bytes:
        return self.writer.fragment([video], [key], self._take_audio())

    def _take_audio(self) -> list[Sample]:
        audio, self._pending_audio = self._pending_audio, []
        return audio

    def _audio_ahead(self, n: int) -> bool:
        """The audio fed so far reaches past frame ``n``'s start (a lead fed with the last speaking
        frame): a turn may start, and the session end, only at a frame the lead does not reach."""
        return self.codecs.fed > self.clock.start(n)

    # -- turns ending ---------------------------------------------------------------------------
    def _event(self, n: int, **kind: object) -> live_pb2.LiveEvent:
        return live_pb2.LiveEvent(frame=n, **kind)  # type: ignore[arg-type]

    def _stopped(self, turn: Turn, frame: int, reason: int) -> live_pb2.LiveEvent:
        return self._event(
            frame,
            speaking_stopped=live_pb2.SpeakingStopped(
                turn_id=turn.turn_id,
                reason=reason,  # type: ignore[arg-type]
                samples_played=turn.samples_played(),
                sample_rate=turn.source_rate,
                frames_played=turn.played,
            ),
        )

    def _drop(self, turn: Turn) -> None:
        turn.stopped = True
        turn.room.set()
        self.turns.pop(turn.turn_id, None)
        self.stopped_ids.put(turn.turn_id, True)
        if self.current is turn:
            self.current = None
        if turn.stream is not None:
            self.tasks.spawn(turn.stream.cancel(), name=f"cancel-{turn.turn_id}")
        if turn.ring is not None:  # (also if its render task never ran)
            turn.ring.close()

    def _apply_interrupts(self, n: int) -> list[live_pb2.LiveServerMessage]:
        """Applies the interrupts received so far; the frame ``n`` (not sent yet) is the cut."""
        out: list[live_pb2.LiveServerMessage] = []
        pending, self.interrupts = self.interrupts, []
        for tid, ids, received, why in pending:
            ending = why == live_pb2.STOP_REASON_SESSION_ENDED
            # the session's end stops every turn; an interrupt, the turns known when it was read
            # (those that ended meanwhile are not stopped again)
            targets = list(self.turns.values()) if ending else [self.turns[i] for i in ids if i in self.turns]
            if self.current in targets and self._audio_ahead(n):
                # the speech fed ahead of the picture past the cut is not sent (the packets sent
                # reach at most an AAC frame past it: the page mutes them, docs/WEB.md)
                self._pending_audio += self.codecs.cut_audio()
            events = []
            for turn in targets:
                reason = live_pb2.STOP_REASON_FAILED if turn.failed else why
                events.append(self._stopped(turn, n, reason))
                self._drop(turn)
            failed = [t for t in targets if t.failed]
            now = time.time()
            for turn in failed:
                if turn.failed_code:
                    error = live_pb2.LiveError(
                        code=turn.failed_code, message=turn.failed, field=turn.failed_field, turn_id=turn.turn_id
                    )
                    out.append(self.out.message(error=error))
            for ev in events:
                ev.unix_seconds = now
                out.append(self.out.message(event=ev))
            # (a turn that failed meanwhile stopped for its failure: not listed)
            if why == live_pb2.STOP_REASON_INTERRUPTED:
                ack = self._event(
                    n,
                    interrupt_acknowledged=live_pb2.InterruptAcknowledged(
                        turn_id=tid, stopped_turn_ids=[t.turn_id for t in targets if not t.failed]
                    ),
                )
                ack.unix_seconds = now
                out.append(self.out.message(event=ack))
                self.telemetry.metrics.live_interrupt_seconds.labels(self.telemetry.service).observe(
                    time.perf_counter() - received
                )
        return out

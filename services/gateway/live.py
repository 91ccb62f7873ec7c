"""Live sessions on the gateway: turns in, the encoder's paced stream out (``talkmesh.v1.Live``).

The encoder owns the clock (``services/encoder/live``): it sends one frame per tick, idles
between turns and applies interrupts at the next frame. The gateway owns everything around it:

* the session: its config, its id (which names the owning replica, sealed and signed with the
  replicas' shared secret, so Watch can be forwarded and clients see no pod address),
  the idle timeout, the maximum length, draining, the limit of sessions per replica;
* turns: each text turn goes through TTS (text pieces as they arrive), each audio turn is the
  caller's PCM; both are resampled to the session's rate and go to the feature stage and to the
  encoder (audio, visemes, features; a text turn's clause texts as caption cues, which the
  encoder sends with the frame each clause starts in), one turn after the other, at most
  ``max_audio_ahead_seconds`` ahead of what has been played; each turn's feature stream starts
  from the activity state (noise floor, speech peak) the last turn of its kind ended with, so the
  feature stage's level adaptation does not start over at every turn;
* interrupts: forwarded to the encoder ahead of any queued data (control overtakes media), and
  the turns' upstream work (TTS, features) is cancelled at once; the rest of the input of a turn
  stopped while its input came is discarded, input for a turn that ended with its input complete
  is refused (a turn id fences everything). The client's messages are read as they come: a turn's
  input that finds its queue full is held (bounded) while the reader reads on, so an interrupt
  sent behind a fast upload is not read only once playback has caught up;
* refusals: a text piece or audio chunk is checked before it has any effect: a refused first piece
  starts no turn (the gateway ends it itself: a FAILED speaking_stopped after the error), a refused
  later one ends its turn's input (what it had plays), or, when none of the turn's text or sound had
  come yet (a turn opened by an empty piece, as the web socket opens an audio turn), fails the turn
  (FAILED, after the error); either way later input for that turn id is discarded quietly (the
  client was told once). A turn's text is counted
  here against ``max_text_chars``; a turn that has played all it got and gets nothing new for
  ``live.turn_input_timeout_seconds`` has its input ended (a DEADLINE_EXCEEDED LiveError says so),
  so a dead client or LLM stream cannot hold the queue (nor the idle timeout) for ever;
* viewers: the session's messages are fanned out to Watch streams, which join at a keyframe.

Client mistakes inside a running session (a bad audio chunk, an unknown turn) are answered with a
``LiveError`` message and the session goes on; only a bad first message ends the call. A session
the server ends (idle timeout, maximum length, drain) stops its turns with
STOP_REASON_SESSION_ENDED (the encoder's ``end_session``), not as an interrupt.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry import trace

from services.gateway.audio import Resampler, check_audio
from services.gateway.checks import check_media_options, check_text_format, first_words
from services.gateway.config import MAX_SETTING_SECONDS, GatewayConfig
from services.gateway.downstream import Downstreams
from services.gateway.fields import in_live_terms, live_field
from services.gateway.metrics import LiveState, Queue, TurnEnd
from services.gateway.pipeline import FEATURE_FOR_BACKEND, synthesis_config
from talkmesh.common.aio import (
    Chan,
    ChanClosed,
    TaskSet,
    all_of,
    any_event,
    cancel_and_wait,
    priority_merge,
    wait_event,
)
from talkmesh.common.calls import Stream
from talkmesh.common.clock import MediaClock
from talkmesh.common.enums import short_name
from talkmesh.common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    StageError,
    TalkmeshError,
    Unavailable,
    internal_error,
    renamed_message,
    scrub_live_error,
)
from talkmesh.common.lru import Lru
from talkmesh.common.names import MAX_SESSION_ID_CHARS, check_id, check_text, check_voice_settings
from talkmesh.common.principal import current_principal, restricted
from talkmesh.common.propagation import StageNotes, adopt_request_id
from talkmesh.common.streams import RequestStream
from talkmesh.common.telemetry import LiveSessionState, Telemetry
from talkmesh.v1 import audio_features_pb2 as fpb
from talkmesh.v1 import common_pb2 as cpb
from talkmesh.v1 import encoder_pb2 as epb
from talkmesh.v1 import live_pb2 as lpb
from talkmesh.v1 import renderer_pb2 as rpb
from talkmesh.v1 import tts_pb2 as tpb
from talkmesh.v1 import types_pb2

log = logging.getLogger(__name__)

#: Ids of stopped (or refused) turns a session remembers (later input for them is discarded, not a
#: new turn).
STOPPED_TURNS_KEPT = 4096
#: Voices of turns (SpeakText.voice) a session remembers the sample rate of
TURN_VOICES_KEPT = 64
#: How long a dropped text turn's speaking_stopped waits for the check of the turn's own voice
VOICE_CHECK_WAIT_SECONDS = 0.25
#: The session_ending warning comes ``ending_warning_seconds`` before the end, or this fraction of
#: the limit when that is shorter (a 3 s session is warned 0.75 s before its end, not at once).
ENDING_WARNING_FRACTION = 0.25


# -- session ids that name their owner ----------------------------------------------------------------
class SessionIds:
    """Session ids of the form ``<owner>.<nonce>.<mac>``: the owning replica's address, recoverable
    by any replica that shares the secret and by nobody else (encrypted: a client learns no pod
    address from its id), and signed so a client cannot make a replica connect to an address it
    chose. The address is XORed with a keystream of HMAC-SHA256 blocks over the random nonce
    (under a key derived for that), then the MAC (under another) covers the result and the nonce."""

    def __init__(self, advertise: str, secret: bytes) -> None:
        self.advertise = advertise
        self._enc_key = hmac.new(secret, b"talkmesh session id: owner", hashlib.sha256).digest()
        self._mac_key = hmac.new(secret, b"talkmesh session id: mac", hashlib.sha256).digest()

    def new(self) -> str:
        nonce = secrets.token_hex(8)
        sealed = self._xor(self.advertise.encode(), nonce)
        owner = base64.urlsafe_b64encode(sealed).decode().rstrip("=")
        return f"{owner}.{nonce}.{self._mac(owner, nonce)}"

    def owner(self, session_id: str) -> str | None:
        """The owner's address of a well-formed, correctly signed id; None otherwise."""
        parts = session_id.split(".")
        if len(parts) != 3 or len(session_id) > MAX_SESSION_ID_CHARS:
            return None
        owner, nonce, mac = parts
        if not hmac.compare_digest(mac.encode(), self._mac(owner, nonce).encode()):  # (any characters)
            return None
        try:
            return self._xor(base64.urlsafe_b64decode(owner + "=" * (-len(owner) % 4)), nonce).decode()
        except (ValueError, UnicodeDecodeError):
            return None

    def _xor(self, data: bytes, nonce: str) -> bytes:
        stream = b"".join(
            hmac.new(self._enc_key, f"{nonce}.{i}".encode(), hashlib.sha256).digest()
            for i in range((len(data) + 31) // 32)
        )
        return bytes(a ^ b for a, b in zip(data, stream, strict=False))

    def _mac(self, owner: str, nonce: str) -> str:
        return hmac.new(self._mac_key, f"{owner}.{nonce}".encode(), hashlib.sha256).hexdigest()[:24]


# -- turns -------------------------------------------------------------------------------------
@dataclass
class QueueSizes:
    """The bounded queues of a live session, from the gateway config: the operator's knobs
    (``live.max_pending_turns``, ``live.turn_text_pieces``, ``live.turn_audio_chunks``) and the
    rest derived from them and from ``queue_size`` (the messages between two stages of a request)."""

    pending_turns: int
    turn_text: int
    turn_audio: int
    #: config, a turn start per turn (and its voice's rate, learnt later, per text turn), interrupts
    control: int
    #: data to the encoder, audio to the feature stage, messages to the client: a stream's hop
    stream: int
    #: what a watcher may fall behind before it is dropped
    watcher: int

    @classmethod
    def of(cls, config: GatewayConfig) -> QueueSizes:
        live = config.live
        return cls(
            pending_turns=live.max_pending_turns,
            turn_text=live.turn_text_pieces,
            turn_audio=live.turn_audio_chunks,
            control=2 * live.max_pending_turns + 8,
            stream=2 * config.queue_size,
            watcher=8 * config.queue_size,
        )


@dataclass
class GatewayTurn:
    turn_id: str
    kind: str  # "text" or "audio"
    # A turn's input queue (live.turn_text_pieces, live.turn_audio_chunks); what comes while it is
    # full is held (below), and a client that sends further ahead is held back by flow control.
    text: Chan[str]
    audio: Chan[tuple[int, bytes]]
    source_rate: int = 0
    #: the voice the turn's first piece asked for ("": the session's), for a text turn, and its
    #: id as TTS lists it once checked
    voice: str = ""
    voice_id: str = ""
    input_done: bool = False
    task: asyncio.Task[None] | None = None
    samples_sent: int = 0  # at the session rate
    chars: int = 0  # of the turn's text so far (max_text_chars is the whole turn's limit)
    #: the last input piece or played frame (monotonic); the turn-input timeout counts from it
    quiet_since: float = field(default_factory=time.monotonic)
    frames_played: int = 0
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    span: Any = None
    #: TTS's warnings about the turn's text and the voice it spoke with, once its TTS stream ended
    notes: StageNotes = field(default_factory=StageNotes)
    #: the check of the turn's own voice, started as the turn is queued (its refusal, or None)
    voice_check: asyncio.Task[TalkmeshError | None] | None = None
    #: input that came while the queue was full, in order, with its size (characters, bytes): the
    #: session's reader goes on reading meanwhile (an interrupt is not held behind it); the turn's
    #: feeder moves it into the queue as room frees (LiveSession._hold, _feed)
    held: collections.deque[tuple[Any, int]] = field(default_factory=collections.deque)
    held_size: int = 0
    held_room: asyncio.Event = field(default_factory=asyncio.Event)
    #: when its first text or sound came (monotonic; 0: none yet; an LLM's turn is opened before
    #: its first token), and whether no other turn was playing or queued then: its wait for its
    #: first frame is then the reply latency the avatar adds (talkmesh_live_turn_start_seconds)
    received: float = 0.0
    alone: bool = False
    feeder: asyncio.Task[None] | None = None

    def end_input(self) -> None:
        """No more input: what it has (held input too) still plays."""
        self.input_done = True
        if not self.held:  # else the feeder closes the queue after what is held
            self.text.close()
            self.audio.close()

    def drop_input(self) -> None:
        """No more input, and what is held is dropped (the turn was stopped)."""
        self.input_done = True
        self.held.clear()
        self.held_size = 0
        self.held_room.set()
        self.text.close()
        self.audio.close()


def _check_id(value: str, field_name: str) -> str:
    if not value:
        raise InvalidArgument(field_name, "must not be empty")
    return check_id(field_name, value)


# -- one session -------------------------------------------------------------------------------
class LiveSession:
    def __init__(
        self,
        hub: LiveHub,
        session_id: str,
        config: lpb.LiveConfig,
        request_id: str,
        ends_at: float | None,
        voice: tuple[str, int] = ("", 0),
    ) -> None:
        self.hub = hub
        self.ds = hub.ds
        self.cfg = hub.config.live
        self.gateway_config = hub.config
        self.telemetry = hub.telemetry
        self.session_id = session_id
        self.config = config
        self.request_id = request_id
        #: when the client's deadline ends (monotonic; None: no deadline); each call gets what is left
        self.ends_at = ends_at
        self.rate = self.cfg.sample_rate
        self.clock = MediaClock.of(hub.config.fps, self.rate)
        self.backend = config.renderer_backend or hub.config.default_renderer_backend
        self.turns: collections.OrderedDict[str, GatewayTurn] = collections.OrderedDict()
        # turns that ended -> whether the client had ended their input (more of it is then refused;
        # else it is discarded: an LLM stream still sending when its turn was interrupted)
        self.stopped: Lru[str, bool] = Lru(STOPPED_TURNS_KEPT)
        #: turns whose input was refused (a first piece: no turn; a later one: input ended); later
        #: input for them is discarded quietly
        self.refused: Lru[str, bool] = Lru(STOPPED_TURNS_KEPT)
        #: turns refused for want of room at a first piece that was not their last: the rest of
        #: that input (an LLM stream the client sends on until it reads the refusal) is discarded
        #: quietly, even if room frees meanwhile (the turn would start in mid-reply), until it ends
        #: (a final piece, EndOfTurn, an interrupt naming it); then the id may be sent again
        self.refused_for_room: Lru[str, bool] = Lru(STOPPED_TURNS_KEPT)
        #: the session voice's listed id and rate once known (from the check at the start; the rate
        #: also from TTS's first answer): text turns count samples_played in the rate, even one
        #: stopped before its own TTS answered, and name the voice in their SpeakingStopped
        self.voice_id, self.voice_rate = voice
        #: (id, rate) of the voices text turns asked for (SpeakText.voice, as spelt), checked once each
        self.voice_rates: Lru[str, tuple[str, int]] = Lru(TURN_VOICES_KEPT)
        #: until when dropped turns' speaking_stopped may wait for their voice checks (monotonic)
        self.voice_wait_until = 0.0
        #: where the feature stage's level-adaptive activity (noise floor, speech peak) stands at the
        #: end of the last turn of each kind ("text": the TTS voice, "audio": the caller's
        #: recording): the next turn of that kind starts from it, so it is voiced from its first
        #: speech frame (at most the floor window's levels each; gone with the session)
        self.activity_states: Lru[str, fpb.ActivityState] = Lru(TURN_VOICES_KEPT + 2)
        #: the next session frame not sent yet (LiveEvent.frame of the gateway's own events)
        self.next_frame = 0
        self.sizes = sizes = QueueSizes.of(hub.config)
        self.control: Chan[epb.LiveEncodeRequest] = Chan(sizes.control)
        self.data: Chan[epb.LiveEncodeRequest] = Chan(sizes.stream)
        out_depth = self.telemetry.queue_gauge(Queue.LIVE_TO_CLIENT)
        self.out: Chan[lpb.LiveServerMessage] = Chan(sizes.stream, gauge=out_depth)
        self.tasks = TaskSet(f"live-{session_id[-8:]}", on_error=self.out.close)
        #: turns started and not yet taken by _run_turns, in order (a subset of ``turns``, so bounded
        #: by max_pending_turns: a turn stopped before it was taken leaves at once, and never holds
        #: the reader back while the turn ahead waits for its input)
        self.waiting: collections.OrderedDict[str, GatewayTurn] = collections.OrderedDict()
        self.turn_waiting = asyncio.Event()
        self.last_message = time.monotonic()  # last client message, or the end of the last speech
        self.started_at = time.monotonic()
        self.idle_timeout = config.idle_timeout_seconds or self.cfg.idle_timeout_seconds
        self.max_seconds = config.max_session_seconds or self.cfg.max_session_seconds
        self.client_closed = False
        self.ending: lpb.SessionEnding | None = None
        #: set once ``started`` went out: nothing else is sent before it (live.proto)
        self.started = asyncio.Event()
        #: no new turns (the session drains or is closing); a max-length warning does not refuse them
        self.refusing_turns = False
        #: turns whose failure the client was told of (the encoder's own report of it is dropped)
        self.reported_failed: Lru[str, bool] = Lru(STOPPED_TURNS_KEPT)
        self.end_requested = asyncio.Event()
        self.speaking = False
        #: speaking or idle in talkmesh_live_sessions (counted from its start: LiveHub.session)
        self.state = LiveSessionState(hub.telemetry)
        #: the turns left open were told they failed (_ended_by_failure)
        self.failure_told = False
        # for watchers: what a late joiner needs first
        self.started_msg: lpb.LiveServerMessage | None = None
        self.init_msg: lpb.LiveServerMessage | None = None
        self.watchers: set[Chan[lpb.LiveServerMessage]] = set()
        #: the session is over and its watchers closed: a new watcher is refused
        self.closed = False
        self.span: Any = None

    # -- the run -----------------------------------------------------------------------------
    async def run(self, stream: RequestStream[Any]) -> AsyncIterator[lpb.LiveServerMessage]:
        tracer = self.telemetry.tracer
        self.span = tracer.start_span("gateway.live_session", attributes={"talkmesh.session_id": self.session_id})
        encoder: Stream | None = None
        try:
            await self.control.send(epb.LiveEncodeRequest(config=self._encode_config()))
            encoder = self.ds.live(self._encoder_requests(), self._time_left())
            self.tasks.spawn(self._pump_encoder(encoder), name="encoder")
            self.tasks.spawn(self._read_client(stream), name="client")
            self.tasks.spawn(self._run_turns(), name="turns")
            self.tasks.spawn(self._watch_lifetime(), name="lifetime")
            seq = 0
            try:
                async for msg in self.out:
                    msg.seq = seq  # watchers get their own numbered copies (LiveHub.watch)
                    seq += 1
                    yield msg
            except StageError:  # a stage failed (not the client's own mistake): its status says which
                self.refusing_turns = True
                await self.tasks.aclose()  # nothing starts or stops a turn any more
                for msg in self._ended_by_failure():
                    msg.seq = seq
                    seq += 1
                    yield msg
                raise
        finally:
            self.span.end()
            await self.tasks.aclose()
            for turn in self.turns.values():  # (the client left, or a stage failed: never stopped)
                if not self.failure_told:
                    self._count_end(lpb.STOP_REASON_SESSION_ENDED)
                await cancel_and_wait(turn.task)
            if encoder is not None:
                await encoder.cancel()
            self.closed = True
            for w in self.watchers:
                w.close()
            self.control.close()
            self.data.close()
            self.out.discard()  # a client that left with messages waiting: no stale queue depth

    def _ended_by_failure(self) -> list[lpb.LiveServerMessage]:
        """The session cannot go on (its encoder stream failed, say): still, as when the server
        ends it, a last session_ending (END_REASON_FAILED, 0 s left) and, for each turn playing or
        queued, its one speaking_stopped (FAILED, with what of it was sent), before the call's
        status names what failed. To watchers too. Nothing before ``started`` (a refused start)."""
        if not self.started.is_set():
            return []
        now = time.time()
        ending = lpb.SessionEnding(reason=lpb.END_REASON_FAILED, seconds_left=0.0)
        events = [lpb.LiveEvent(unix_seconds=now, frame=self.next_frame, session_ending=ending)]
        for turn in self.turns.values():
            rate = turn.source_rate or self.voice_rate or self.rate
            body = lpb.SpeakingStopped(
                turn_id=turn.turn_id,
                reason=lpb.STOP_REASON_FAILED,
                samples_played=self.clock.played_at(turn.frames_played, turn.samples_sent, rate),
                sample_rate=rate,
                frames_played=turn.frames_played,
            )
            self._count_end(body.reason)
            events.append(lpb.LiveEvent(unix_seconds=now, frame=self.next_frame, speaking_stopped=body))
        self.failure_told = True  # (those turns are not counted again as left by the client)
        messages = [lpb.LiveServerMessage(event=event) for event in events]
        for msg in messages:
            self._to_watchers(msg)
        return messages

    def _time_left(self) -> float | None:
        """The timeout of a call made now: what is left of the client's deadline."""
        return None if self.ends_at is None else max(0.001, self.ends_at - time.monotonic())

    def _encode_config(self) -> epb.LiveEncodeConfig:
        c = self.config
        return epb.LiveEncodeConfig(
            session_id=self.session_id,
            request_id=self.request_id,
            render=rpb.RenderConfig(
                request_id=self.request_id,
                avatar_id=c.avatar_id,
                backend=self.backend,
                size=c.size,
                session_id=self.session_id,
                idle_motion=c.idle_motion,
            ),
            fps=self.gateway_config.fps,
            sample_rate=self.rate,
            audio_codec=c.audio_codec,
        )

    def _encoder_requests(self) -> AsyncIterator[epb.LiveEncodeRequest]:
        """Control messages (config, turn starts, interrupts) overtake queued data."""
        return priority_merge(self.control, self.data)

    async def _send(self, msg: lpb.LiveServerMessage) -> None:
        """To the client and every watcher (a watcher that cannot keep up is dropped)."""
        kind = msg.WhichOneof("kind")
        if kind != "started" and not self.started.is_set():
            # live.proto: `started` is the first message; a message made before it (an error, a
            # lifetime event) waits for it (or for the end, if the session fails before it starts)
            await self._started_or_closed()
            if self.out.closed:
                return
        if kind == "error":
            msg = _scrubbed(msg)
            _in_live_terms(msg.error)
        if kind == "started":
            self.started_msg = msg
            self.started.set()
        elif kind == "media" and msg.media.init_segment:
            self.init_msg = msg
        self._to_watchers(msg)
        if not self.out.closed:  # after the end (or a failure) nothing more goes out
            await self.out.send(msg)

    def _to_watchers(self, msg: lpb.LiveServerMessage) -> None:
        """To every watcher; one that cannot keep up is dropped (told so)."""
        for w in list(self.watchers):
            try:
                w.send_nowait(msg)
            except asyncio.QueueFull:
                w.close(ResourceExhausted("watcher: fell too far behind the live stream", retry_after=1.0))
                self.watchers.discard(w)
            except ChanClosed:
                self.watchers.discard(w)

    async def _started_or_closed(self) -> None:
        await any_event(self.started, self.out.closed_event)

    async def _error(self, exc: TalkmeshError, turn_id: str = "") -> None:
        in_live_terms(exc)  # a stage's `config.settings.rate` is the caller's `config.voice_settings.rate`
        await self._send(
            lpb.LiveServerMessage(
                error=lpb.LiveError(
                    code=exc.code.value[0], message=exc.message, field=getattr(exc, "field", ""), turn_id=turn_id
                )
            )
        )

    # -- encoder output ----------------------------------------------------------------------
    async def _pump_encoder(self, encoder: Stream) -> None:
        async for msg in encoder:
            kind = msg.WhichOneof("kind")
            if kind == "media":
                self.next_frame = max(self.next_frame, msg.media.first_frame + msg.media.frame_count)
                turn = self.turns.get(msg.media.turn_id) if msg.media.turn_id else None
                if turn is not None and not msg.media.underrun:  # a repeat plays none of the turn
                    turn.frames_played += msg.media.frame_count
                    turn.quiet_since = time.monotonic()
                    turn.progress.set()
            elif kind == "event":
                ev = msg.event
                which = ev.WhichOneof("kind")
                if which == "speaking_started":
                    self._set_speaking(True)
                    started = self.turns.get(ev.speaking_started.turn_id)
                    if started is not None and started.alone:
                        started.alone = False
                        self.telemetry.metrics.live_turn_start_seconds.labels(self.telemetry.service).observe(
                            time.monotonic() - started.received
                        )
                elif which == "speaking_stopped":
                    self._set_speaking(False)
                    body = ev.speaking_stopped
                    self._count_end(body.reason)
                    stopped = self.turns.get(body.turn_id)
                    if stopped is not None and stopped.kind == "text":
                        await self._voice_checked(stopped)
                        if not body.samples_played and stopped.source_rate:
                            body.sample_rate = stopped.source_rate  # dropped before the encoder learnt it
                        body.warnings.extend(stopped.notes.warnings)
                        # the voice spoken with, as listed: from TTS, else from the voice checks (a
                        # turn cut while its TTS stream was still open); none for a failed turn
                        checked = stopped.voice_id if stopped.voice else self.voice_id
                        failed = body.reason == lpb.STOP_REASON_FAILED
                        body.voice = "" if failed else stopped.notes.voice or checked
                    self._turn_over(body.turn_id)
            elif kind == "started":
                msg.started.max_text_chars = self.gateway_config.max_text_chars  # the gateway's limits
                msg.started.max_pending_turns = self.sizes.pending_turns
                self.span.add_event("started", {"talkmesh.width": msg.started.width})
            elif kind == "error" and msg.error.turn_id in self.reported_failed:
                continue  # a turn the gateway failed: the client was told once, with its code
            await self._send(msg)
        self.out.close()

    async def _voice_checked(self, turn: GatewayTurn) -> None:
        """Waits a little for the check of a dropped turn's own voice (a ListVoices, a millisecond
        or two), so its speaking_stopped names the voice and counts in its rate. A TTS too slow for
        that holds the session's media at most VOICE_CHECK_WAIT_SECONDS, however many turns an
        interrupt dropped at once: they share one wait."""
        if turn.voice_check is None or turn.voice_check.done():
            return
        now = time.monotonic()
        if self.voice_wait_until < now:
            self.voice_wait_until = now + VOICE_CHECK_WAIT_SECONDS
        await asyncio.wait([turn.voice_check], timeout=self.voice_wait_until - now)

    def _count_end(self, reason: int) -> None:
        """talkmesh_live_turns_total: one more turn ended with ``reason`` (a StopReason)."""
        name = short_name(lpb.StopReason, reason)
        if name in TurnEnd.__members__.values():
            self.telemetry.metrics.live_turns_total.labels(self.telemetry.service, name).inc()

    def _set_speaking(self, speaking: bool) -> None:
        if speaking == self.speaking:
            return
        self.speaking = speaking
        self.last_message = time.monotonic()  # the idle clock starts when speech ends
        self.state.set(LiveState.SPEAKING if speaking else LiveState.IDLE)

    def _turn_over(self, turn_id: str) -> None:
        """The turn ended on the encoder (its speaking_stopped), whatever the reason: its sending
        stops too (an interrupt or a failure stopped it there, or all it sent has played), or it
        would wait for playback that never comes and hold every later turn."""
        turn = self.turns.pop(turn_id, None)
        self.waiting.pop(turn_id, None)
        input_ended = turn is None or turn.input_done
        if turn is not None:
            if turn.span is not None:
                turn.span.end()
            turn.progress.set()
            turn.drop_input()  # wakes its feeder and a reader waiting to hold more of its input
            if turn.task is not None:
                turn.task.cancel()
        self._fence(turn_id, input_ended=input_ended)
        self.end_requested.set()

    def _fence(self, turn_id: str, *, input_ended: bool) -> None:
        if turn_id not in self.stopped:  # the first end says how the input stood (an interrupt ends it)
            self.stopped.put(turn_id, input_ended)

    # -- client input ------------------------------------------------------------------------
    async def _read_client(self, stream: RequestStream[Any]) -> None:
        async for msg in stream:
            self.last_message = time.monotonic()
            tid = _turn_of(msg)
            new_turn = bool(tid) and tid not in self.turns and not self._ended(tid)
            turn = self.turns.get(tid) if tid else None
            try:
                await self._client_message(msg)
            except TalkmeshError as exc:
                if exc.code not in _IN_SESSION_REFUSALS:
                    raise
                # (decided now: while the error waits for room, the pump may end other turns)
                never_taken = new_turn and tid in self.refused
                if (
                    turn is not None
                    and not turn.received
                    and not turn.input_done  # (a piece after its end is refused alone: the turn stands)
                    and tid in self.refused
                    and self.turns.get(tid) is turn
                ):
                    await self._fail(turn, exc)  # refused before any of its input came: nothing to play
                    continue
                await self._error(exc, tid)
                if never_taken:
                    await self._never_taken(tid)
        self.client_closed = True
        for turn in self.turns.values():
            turn.end_input()  # what was sent is all there will be
        self.end_requested.set()

    async def _never_taken(self, turn_id: str) -> None:
        """A turn whose first message was refused ends like every other turn, with one
        speaking_stopped (FAILED, nothing played, at the session's rate), after its LiveError: a
        client waiting for each turn's end needs no second rule for it."""
        body = lpb.SpeakingStopped(turn_id=turn_id, reason=lpb.STOP_REASON_FAILED, sample_rate=self.rate)
        self._count_end(body.reason)
        event = lpb.LiveEvent(unix_seconds=time.time(), frame=self.next_frame, speaking_stopped=body)
        await self._send(lpb.LiveServerMessage(event=event))

    def _ended(self, turn_id: str) -> bool:
        """A turn that was stopped, played, or refused: later input naming it is discarded."""
        return turn_id in self.stopped or turn_id in self.refused

    async def _client_message(self, msg: Any) -> None:
        kind = msg.WhichOneof("kind")
        if kind == "keep_alive":
            return
        if kind in ("interrupt", "end_of_turn"):
            # a turn id never seen is NOT_FOUND for both; one that ended (or was refused) is fine
            body = getattr(msg, kind)
            tid = body.turn_id
            if tid and self.refused_for_room.pop(tid):
                return  # the end of input refused for want of room: the id is free again
            turn = self.turns.get(tid)
            if turn is None and (tid or kind == "end_of_turn") and not self._ended(tid):
                raise NotFound(f"{kind}.turn_id", tid, "turn")
            if kind == "interrupt":
                await self._interrupt(tid)
            elif turn is not None:
                turn.end_input()
            return
        if kind not in ("text", "audio"):
            raise InvalidArgument("kind", "expected text, audio, end_of_turn, interrupt or keep_alive")
        body = getattr(msg, kind)
        tid = _check_id(body.turn_id, f"{kind}.turn_id")
        if tid in self.refused:
            return  # input for a refused turn: discarded
        if tid in self.refused_for_room:
            if body.final:
                self.refused_for_room.pop(tid)
            return  # the rest of input refused for want of room: discarded
        if self.stopped.get(tid):  # its input had ended before: a new turn with an old id
            self.refused.put(tid, True)  # (told once: more of it is discarded)
            raise InvalidArgument(f"{kind}.turn_id", f"turn {tid!r} has ended: a new turn needs a new id")
        if tid in self.stopped:
            return  # input for a turn stopped while its input came (an interrupted LLM stream): discarded
        turn = self.turns.get(tid)
        try:
            # a refused message has no effect: checked before a turn exists
            self._check_piece(kind, tid, body, turn)
        except TalkmeshError:
            self.refused.put(tid, True)
            if turn is not None and turn.received:
                turn.end_input()  # it plays what it had (one that had nothing fails: _read_client)
            raise
        if turn is None:
            try:
                turn = await self._new_turn(tid, kind, body)
            except ResourceExhausted:
                if not body.final:  # more of it is on its way: see refused_for_room
                    self.refused_for_room.put(tid, True)
                raise
        turn.quiet_since = time.monotonic()
        if not turn.received and (body.text if kind == "text" else body.pcm):
            turn.received = turn.quiet_since
            turn.alone = all(other is turn for other in self.turns.values())
        if kind == "text":
            if body.text:
                turn.chars += len(body.text)
                await self._hold(turn, body.text, len(body.text))
        elif body.pcm:
            await self._hold(turn, (body.sample_rate, body.pcm), len(body.pcm))
        if body.final:
            turn.end_input()

    def _held_limit(self, turn: GatewayTurn) -> int:
        """What a turn may hold beyond its queue: a text turn, its whole text (max_text_chars, which
        the pieces were checked against); an audio turn, as many seconds of audio as its queue
        takes chunks (a chunk is at most one second: the queue's own largest size, once more)."""
        if turn.kind == "text":
            return self.gateway_config.max_text_chars
        return self.sizes.turn_audio * 2 * max(turn.source_rate, 1)

    async def _hold(self, turn: GatewayTurn, item: Any, size: int) -> None:
        """A piece of a turn's input into its queue, or, while the queue is full, held for the
        turn's feeder: the reader goes on reading, so an interrupt (or any message) sent behind a
        turn's input is handled at once, and an interrupted turn's held input is dropped. Only a
        turn holding more than ``_held_limit`` makes the reader wait (gRPC flow control then holds
        the client back)."""
        chan: Chan[Any] = turn.text if turn.kind == "text" else turn.audio
        if not turn.held and not chan.full():
            chan.send_nowait(item)
            return
        while turn.held and turn.held_size + size > self._held_limit(turn):
            if turn.input_done or self.turns.get(turn.turn_id) is not turn:
                return  # stopped meanwhile: the piece goes with the rest of its input
            turn.held_room.clear()
            await turn.held_room.wait()  # set as the feeder makes room, and when the turn is over
        if turn.input_done or self.turns.get(turn.turn_id) is not turn:
            return
        turn.held.append((item, size))
        turn.held_size += size
        if turn.feeder is None:
            turn.feeder = self.tasks.spawn(self._feed(turn, chan), name=f"feed-{turn.turn_id[:16]}")

    async def _feed(self, turn: GatewayTurn, chan: Chan[Any]) -> None:
        """Moves a turn's held input into its queue, in order, as the turn makes room; then closes
        the queue if the input has ended meanwhile. A turn that is over (stopped, failed, its
        session ending) drops what it held."""
        try:
            while turn.held:
                if self.turns.get(turn.turn_id) is not turn:
                    turn.drop_input()
                    return
                await chan.send(turn.held[0][0])  # ChanClosed once the turn is over (drop_input)
                _, size = turn.held.popleft()
                turn.held_size -= size
                turn.held_room.set()
            if turn.input_done:
                chan.close()
        except ChanClosed:
            turn.drop_input()  # stopped: what was held goes
        finally:
            turn.feeder = None

    def _check_piece(self, kind: str, tid: str, body: Any, turn: GatewayTurn | None) -> None:
        if turn is not None and turn.kind != kind:
            raise InvalidArgument(f"{kind}.turn_id", f"turn {tid!r} is a {turn.kind} turn")
        if turn is not None and turn.input_done:
            raise InvalidArgument(f"{kind}.turn_id", f"turn {tid!r} has already ended its input")
        if kind == "audio":
            check_audio(body.sample_rate, body.pcm, first=turn is None or not turn.received)
            if turn is not None and body.sample_rate != turn.source_rate:
                raise InvalidArgument(
                    "audio.sample_rate", f"{body.sample_rate} Hz differs from the turn's {turn.source_rate} Hz"
                )
            return
        if body.voice and turn is not None and body.voice != turn.voice:
            raise InvalidArgument("text.voice", f"turn {tid!r}'s voice is set by its first piece; leave it empty after")
        if turn is None and body.voice:
            check_id("text.voice", body.voice)
        limit = self.gateway_config.max_text_chars
        check_text("text.text", body.text, limit, allow_empty=True)
        total = len(body.text) + (turn.chars if turn is not None else 0)
        if total > limit:  # TTS would fail the whole turn at its end; refused now, at the gateway
            raise InvalidArgument(
                "text.text", f"the turn's text would be {total} characters, over the limit of {limit}"
            )

    async def _turn_voice(self, turn: GatewayTurn) -> TalkmeshError | None:
        """The voice a text turn asks for, checked as the turn is queued (in a task of its own:
        the client's reader never waits on TTS), so a turn dropped before it started still reports
        its voice and counts in its rate: NOT_FOUND on ``text.voice`` (returned, the turn raises
        it when it starts) if TTS has none such; else the turn learns the voice's id and rate, and
        the encoder the rate. Asked of TTS once per voice per session (unless TTS could not
        answer: the turn's own TTS call then says what is wrong; turns queued with the same voice
        before it answered each ask)."""
        known = self.voice_rates.get(turn.voice)
        if known is None:
            try:
                known = await self.hub.listed_voice(turn.voice, "text.voice")
            except TalkmeshError as exc:
                return exc
            except Exception as exc:  # a defect fails the turn (INTERNAL), never the session
                log.exception("checking the voice of live turn %s failed", turn.turn_id)
                return internal_error(exc)
            if known is None:
                return None
            self.voice_rates.put(turn.voice, known)
        turn.voice_id, turn.source_rate = known
        if turn.turn_id not in self.stopped:  # (a stopped turn's rate is set in its speaking_stopped)
            with contextlib.suppress(ChanClosed):  # the session is ending
                await self._to_encoder_control(_turn_start(turn.turn_id, known[1]))
        return None

    async def _new_turn(self, tid: str, kind: str, body: Any) -> GatewayTurn:
        if self.refusing_turns:  # (before the room check: no "retry in 1 s" from a session that is ending)
            # for good (the id cannot come again): it ends with its speaking_stopped (_never_taken)
            self.refused.put(tid, True)
            raise FailedPrecondition("the session is ending: no new turns")
        limit = self.sizes.pending_turns
        if len(self.turns) >= limit:
            raise ResourceExhausted(
                f"{kind}.turn_id: {limit} turns are waiting to play or playing (live.max_pending_turns); "
                "send it again later",
                retry_after=1.0,
                quota="live.max_pending_turns: turns waiting per live session",
                subject="session",
                field=f"{kind}.turn_id",
            )
        turn = GatewayTurn(tid, kind, text=Chan(self.sizes.turn_text), audio=Chan(self.sizes.turn_audio))
        if kind == "audio":
            turn.source_rate = body.sample_rate
        else:
            turn.voice = body.voice
            known = self.voice_rates.get(body.voice) if body.voice else None
            if known is not None:
                turn.voice_id, turn.source_rate = known
            else:
                turn.source_rate = 0 if body.voice else self.voice_rate
        self.turns[tid] = turn
        # The encoder learns of every turn at once, in order: an interrupt then covers queued turns
        # too, and each turn ends with exactly one speaking_stopped.
        await self._to_encoder_control(_turn_start(tid, turn.source_rate))
        turn.span = self.telemetry.tracer.start_span(
            "gateway.live_turn",
            context=trace.set_span_in_context(self.span),
            attributes={"talkmesh.turn_id": tid, "talkmesh.turn_kind": kind},
        )
        if turn.voice and known is None:
            turn.voice_check = self.tasks.spawn(self._turn_voice(turn), name=f"voice-{tid[:16]}")
        self.waiting[tid] = turn
        self.turn_waiting.set()
        return turn

    @staticmethod
    def _activity_key(turn: GatewayTurn) -> str:
        """Turns that share a level history: the caller's recordings, or one voice's speech."""
        return f"text:{turn.voice_id or turn.voice}" if turn.kind == "text" else turn.kind

    async def _to_encoder_control(self, msg: epb.LiveEncodeRequest) -> None:
        """A control message for the encoder, unless the session is already closing its stream."""
        if not self.control.closed:
            await self.control.send(msg)

    async def _interrupt(self, turn_id: str, *, end_session: bool = False) -> None:
        """Forward first (it overtakes queued data), then stop the turns' upstream work. With
        ``end_session`` every turn stops for the session's end (STOP_REASON_SESSION_ENDED)."""
        if end_session:
            await self._to_encoder_control(epb.LiveEncodeRequest(end_session=True))
        else:
            await self._to_encoder_control(epb.LiveEncodeRequest(turn_id=turn_id, interrupt=True))
        targets = list(self.turns.values()) if not turn_id else [t for t in self.turns.values() if t.turn_id == turn_id]
        for turn in targets:
            self._fence(turn.turn_id, input_ended=turn.input_done)
            turn.drop_input()
            if turn.task is not None:
                turn.task.cancel()
        self.span.add_event("interrupt", {"talkmesh.turn_id": turn_id})

    # -- turn pipelines ----------------------------------------------------------------------
    async def _run_turns(self) -> None:
        """Turns one after the other: each turn's input reaches the encoder in full before the
        next one starts sending (the encoder starts rendering the next turn as it arrives). Each
        runs in its own task, which an interrupt cancels."""
        current: asyncio.Task[None] | None = None
        try:
            while True:
                while not self.waiting:
                    self.turn_waiting.clear()
                    await self.turn_waiting.wait()
                _, turn = self.waiting.popitem(last=False)
                if turn.turn_id in self.stopped:
                    continue
                turn.quiet_since = time.monotonic()  # the input timeout counts from its start, not its queueing
                current = turn.task = asyncio.create_task(self._turn(turn), name=f"live-turn-{turn.turn_id[:16]}")
                await asyncio.wait([current])
                turn.task = current = None
        finally:
            await cancel_and_wait(current)

    async def _turn(self, turn: GatewayTurn) -> None:
        try:
            await self._run_turn(turn)
        except ChanClosed:
            return  # the session is ending: its encoder stream is closed
        except Exception as err:  # a turn's failure, whatever it is, fails that turn alone
            if isinstance(err, TalkmeshError):
                exc = err
                log.info("live turn %s failed: %s", turn.turn_id, exc.message)
            else:  # a defect: the turn fails (INTERNAL) and the session plays on
                log.exception("live turn %s failed", turn.turn_id)
                exc = internal_error(err)
            if turn.voice:  # TTS's `config.voice` is this turn's voice: SpeakText.voice
                exc.rename_field(lambda f: "text.voice" if f == "config.voice" else None)
            await self._fail(turn, exc)

    async def _fail(self, turn: GatewayTurn, exc: TalkmeshError) -> None:
        """Fails a turn the encoder knows: its LiveError (with its code and field), then its one
        speaking_stopped (FAILED) from the encoder, which ends (cancels) the turn's task."""
        self._fence(turn.turn_id, input_ended=turn.input_done)
        self.reported_failed.put(turn.turn_id, True)
        await self._error(exc, turn.turn_id)  # the client is told first
        await self._to_encoder_control(epb.LiveEncodeRequest(turn_id=turn.turn_id, turn_failed=exc.message))

    async def _run_turn(self, turn: GatewayTurn) -> None:
        if turn.voice_check is not None:
            # shielded: an interrupt cancels the turn, not the check its speaking_stopped reports
            refused = await asyncio.shield(turn.voice_check)
            if refused is not None:
                raise refused
        features_in: Chan[fpb.FeatureRequest] = Chan(self.sizes.stream)
        feature_config = fpb.FeatureConfig(
            request_id=self.request_id,
            feature_type=FEATURE_FOR_BACKEND[self.backend],
            fps=self.gateway_config.fps,
            # one answer per audio chunk, as in Speak: fewer messages on every hop
            batch_frames=True,
        )
        state = self.activity_states.get(self._activity_key(turn))
        if state is not None:  # the previous turn's noise floor and peak carry on
            feature_config.activity_state.CopyFrom(state)
        features_in.send_nowait(fpb.FeatureRequest(config=feature_config))
        features = self.ds.extract(features_in, self._time_left())
        tts: Stream | None = None

        async def feed() -> None:  # the turn's audio, to the feature stage and to the encoder
            nonlocal tts
            if turn.kind == "text":
                # a turn with no words at all (an LLM reply of white space, or of only Markdown's
                # marks) is silent, not a failure: it ends at once, as an audio turn without audio does
                markdown = self.config.text_format == types_pb2.TEXT_FORMAT_MARKDOWN
                words, found = await first_words(turn.text, markdown=markdown)
                if found:
                    tts = self.ds.synthesize_stream(self._text_pieces(turn, words), self._time_left())
                    await self._pump_tts(turn, tts, features_in)
            else:
                await self._pump_audio(turn, features_in)
            await features_in.send(fpb.FeatureRequest(end_of_stream=True))
            features_in.close()

        try:
            # either side failing fails the turn at once (the other is cancelled): a feature stage
            # that fails mid-turn reads no more audio, and a feed left waiting for it would hold
            # every later turn
            await all_of(feed(), self._pump_features(turn, features))
            await self.data.send(epb.LiveEncodeRequest(turn_id=turn.turn_id, end_of_turn=True))
        finally:
            features_in.close()
            await features.cancel()
            if tts is not None:
                await tts.cancel()

    async def _text_pieces(self, turn: GatewayTurn, first: str) -> AsyncIterator[tpb.TextPiece]:
        c = self.config
        config = synthesis_config(
            self.gateway_config, self.request_id, turn.voice or c.voice, c.voice_settings, c.text_format
        )
        yield tpb.TextPiece(request_id=self.request_id, config=config)
        yield tpb.TextPiece(request_id=self.request_id, text=first)
        async for text in turn.text:
            yield tpb.TextPiece(request_id=self.request_id, text=text)
        yield tpb.TextPiece(request_id=self.request_id, end_of_stream=True)

    async def _room(self, turn: GatewayTurn) -> None:
        """Waits while the turn's audio sent runs more than the budget ahead of what was played."""
        budget = self.cfg.max_audio_ahead_seconds * self.rate
        while turn.samples_sent - self.clock.start(turn.frames_played) > budget:
            turn.progress.clear()
            await turn.progress.wait()

    async def _send_audio(self, turn: GatewayTurn, pcm: bytes, features_in: Chan[fpb.FeatureRequest]) -> None:
        if not pcm:
            return
        await self._room(turn)
        chunk = cpb.AudioChunk(sample_rate=self.rate, sample_offset=turn.samples_sent, pcm=pcm)
        turn.samples_sent += len(pcm) // 2
        await features_in.send(fpb.FeatureRequest(audio=chunk))
        await self.data.send(epb.LiveEncodeRequest(turn_id=turn.turn_id, audio=chunk))

    async def _pump_tts(self, turn: GatewayTurn, tts: Stream, features_in: Chan[fpb.FeatureRequest]) -> None:
        resampler: Resampler | None = None
        source_rate = 0
        async for chunk in tts:
            turn.quiet_since = time.monotonic()  # speech still coming (a slow TTS is not a quiet input)
            if chunk.sample_rate and resampler is None:
                source_rate = chunk.sample_rate
                resampler = Resampler(source_rate, self.rate)
                turn.source_rate = source_rate
                if not turn.voice and not self.voice_rate:  # queued text turns now count in it too
                    self.voice_rate = source_rate
                    for other in list(self.turns.values()):
                        if other.kind == "text" and other is not turn and not other.voice and not other.source_rate:
                            other.source_rate = source_rate
                            await self._to_encoder_control(_turn_start(other.turn_id, source_rate))
                # now the voice's rate is known: samples played are reported in it
                await self.data.send(_turn_start(turn.turn_id, source_rate))
            if chunk.segment_text and source_rate:  # a clause starts: its caption cue, ahead of its audio
                caption = epb.TurnCaption(
                    start_sample=chunk.sample_offset * self.rate // source_rate,
                    segment_index=chunk.segment_index,
                    text=chunk.segment_text,
                )
                await self.data.send(epb.LiveEncodeRequest(turn_id=turn.turn_id, caption=caption))
            if chunk.visemes and source_rate:
                events = [
                    cpb.VisemeEvent(
                        viseme=v.viseme,
                        start_sample=v.start_sample * self.rate // source_rate,
                        end_sample=v.end_sample * self.rate // source_rate,
                        phoneme=v.phoneme,
                    )
                    for v in chunk.visemes
                ]
                await self.data.send(
                    epb.LiveEncodeRequest(turn_id=turn.turn_id, visemes=rpb.VisemeTrack(events=events))
                )
            if chunk.pcm and resampler is not None:
                await self._send_audio(turn, resampler.push(chunk.pcm), features_in)
            # end_of_stream: read on to the stream's end, TTS's OK and its warnings
        turn.notes = StageNotes.of(await tts.trailers())
        if resampler is not None:
            await self._send_audio(turn, resampler.push(b"", last=True), features_in)

    async def _pump_audio(self, turn: GatewayTurn, features_in: Chan[fpb.FeatureRequest]) -> None:
        resampler = Resampler(turn.source_rate, self.rate)
        async for _rate, pcm in turn.audio:
            await self._send_audio(turn, resampler.push(pcm), features_in)
        await self._send_audio(turn, resampler.push(b"", last=True), features_in)

    async def _pump_features(self, turn: GatewayTurn, features: Stream) -> None:
        async for fc in features:
            if fc.end_of_stream:
                if fc.HasField("activity_state"):  # (an interrupted turn's stream ends without one)
                    self.activity_states.put(self._activity_key(turn), fc.activity_state)
                break
            await self.data.send(epb.LiveEncodeRequest(turn_id=turn.turn_id, features=fc))

    # -- lifetime ----------------------------------------------------------------------------
    async def _watch_lifetime(self) -> None:
        """Idle timeout, maximum length, draining and the client's close, each announced (after
        ``started``). The warning comes ``ending_warning_seconds`` before the end, or a quarter of
        the limit before it when that is shorter; only draining refuses new turns: after a
        max-length warning a turn may still start, and what of it has not played at the end is cut.
        Every end is announced once more with 0 seconds left just before it. Turns whose input
        went quiet are ended here too (``_end_quiet_turns``)."""
        warn_idle = min(self.cfg.ending_warning_seconds, ENDING_WARNING_FRACTION * self.idle_timeout)
        warn_length = min(self.cfg.ending_warning_seconds, ENDING_WARNING_FRACTION * self.max_seconds)
        warned_idle = False
        await self._started_or_closed()
        while True:
            now = time.monotonic()
            if self.hub.draining and self.ending is None:
                self.refusing_turns = True
                if self.turns:  # they get drain_seconds to play out; an idle session ends at once
                    await self._announce(lpb.END_REASON_DRAINING, self.cfg.drain_seconds)
                    await self._sleep_or_done(self.cfg.drain_seconds)
                return await self._finish(lpb.END_REASON_DRAINING)
            if self.client_closed and not self.turns:
                return await self._finish(lpb.END_REASON_CLIENT_CLOSED)
            await self._end_quiet_turns(now)
            idle_left = self.idle_timeout - (now - self.last_message)
            length_left = self.max_seconds - (now - self.started_at)
            if length_left <= 0:
                return await self._finish(lpb.END_REASON_MAX_LENGTH)
            if idle_left <= 0 and not self.speaking:
                return await self._finish(lpb.END_REASON_IDLE_TIMEOUT)
            if length_left <= warn_length and self.ending is None:
                await self._announce(lpb.END_REASON_MAX_LENGTH, max(0.0, length_left))
            elif idle_left <= warn_idle and not warned_idle and not self.speaking:
                warned_idle = True
                await self._announce(lpb.END_REASON_IDLE_TIMEOUT, max(0.0, idle_left), final=False)
            elif idle_left > warn_idle:
                warned_idle = False
            self.end_requested.clear()
            await wait_event(self.end_requested, 0.25)

    async def _end_quiet_turns(self, now: float) -> None:
        """The turn being sent (the head of the queue) that got no input and played nothing for
        ``turn_input_timeout_seconds`` (it has played all it got) ends its input, as if EndOfTurn
        came: what it had plays, and the client gets a DEADLINE_EXCEEDED LiveError for it; later
        input for it is discarded."""
        timeout = self.cfg.turn_input_timeout_seconds
        for turn in list(self.turns.values()):
            if turn.task is None or turn.input_done or now - turn.quiet_since < timeout:
                continue
            self.refused.put(turn.turn_id, True)
            turn.end_input()
            self.span.add_event("turn_input_timeout", {"talkmesh.turn_id": turn.turn_id})
            await self._error(
                DeadlineExceeded(f"no input for {timeout:g} s after all of it played: its input was ended"),
                turn.turn_id,
            )

    async def _sleep_or_done(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.turns and time.monotonic() < deadline:
            self.end_requested.clear()
            if not await wait_event(self.end_requested, max(0.0, deadline - time.monotonic())):
                break

    async def _announce(self, reason: int, seconds_left: float, *, final: bool = True) -> None:
        ending = lpb.SessionEnding(reason=reason, seconds_left=seconds_left)  # type: ignore[arg-type]
        if final:
            self.ending = ending
        event = lpb.LiveEvent(unix_seconds=time.time(), frame=self.next_frame, session_ending=ending)
        await self._send(lpb.LiveServerMessage(event=event))

    async def _finish(self, reason: int) -> None:
        """Announces the end (0 s left), stops every turn for it (STOP_REASON_SESSION_ENDED, no
        interrupt_acknowledged), then closes the encoder stream; the output ends when it does."""
        self.refusing_turns = True
        await self._announce(reason, 0.0)
        if self.turns:
            await self._interrupt("", end_session=True)
        self.control.close()
        self.data.close()


def _in_live_terms(err: lpb.LiveError) -> None:
    """An in-band error of a stage (the encoder's) naming the caller's LiveConfig field."""
    new = live_field(err.field) if err.field else None
    if new is not None and new != err.field:
        err.message = renamed_message(err.message, err.field, new)
        err.field = new


def _scrubbed(msg: lpb.LiveServerMessage) -> lpb.LiveServerMessage:
    """An in-band error as the client may see it: the gateway is the edge, so the scrub of its
    statuses (no internal addresses, paths or exception text) applies to a stream's errors too."""
    message = scrub_live_error(msg.error.code, msg.error.message)
    if message == msg.error.message:
        return msg
    log.info("live error to the client scrubbed; was %d: %s", msg.error.code, msg.error.message)
    out = lpb.LiveServerMessage()
    out.CopyFrom(msg)
    out.error.message = message
    return out


#: Longest wait for TTS's answer to a voice check (seconds; see LiveHub._voice_check_timeout).
VOICE_CHECK_SECONDS = 2.0
#: What a refused client message gets as a LiveError while the session goes on (anything else ends it).
_IN_SESSION_REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,  # too many turns waiting: the turn may be sent again
    }
)


def _turn_start(turn_id: str, source_rate: int) -> epb.LiveEncodeRequest:
    """Tells the encoder a turn starts, or, sent again, the rate its audio came in once learnt
    (0: the session's rate): its speaking_stopped counts ``samples_played`` in that rate."""
    return epb.LiveEncodeRequest(turn_id=turn_id, turn_start=epb.TurnStart(source_sample_rate=source_rate))


def _turn_of(msg: Any) -> str:
    kind = msg.WhichOneof("kind")
    body = getattr(msg, kind, None) if kind else None
    return getattr(body, "turn_id", "") or ""


# -- the sessions of one gateway ------------------------------------------------------------------
class LiveHub:
    """Owns the live sessions of this gateway replica: limits, ids, draining, watchers."""

    def __init__(self, config: GatewayConfig, telemetry: Telemetry, downstreams: Downstreams) -> None:
        self.config = config
        self.telemetry = telemetry
        self.ds = downstreams
        self.sessions: dict[str, LiveSession] = {}
        #: session id -> the name of the API key that started it (with API keys on)
        self.session_keys: dict[str, str] = {}
        self.draining = False
        secret = config.live.session_secret.encode() or secrets.token_bytes(32)
        self.ids = SessionIds(config.live.advertise_address, secret)

    def advertise(self, address: str) -> None:
        """The address other replicas reach this one at (set once the server is bound)."""
        if not self.config.live.advertise_address:
            self.ids.advertise = address

    def _limit(self) -> None:
        if self.draining:
            raise Unavailable("gateway is draining; open the session on another replica", retry_after=0.5)
        if len(self.sessions) >= self.config.live.max_sessions:
            raise ResourceExhausted(
                f"{len(self.sessions)} live sessions on this gateway (limit {self.config.live.max_sessions})",
                retry_after=5.0,
                quota="live sessions per gateway replica",
                subject="gateway",
            )

    async def session(
        self, stream: RequestStream[Any], time_remaining: float | None
    ) -> AsyncIterator[lpb.LiveServerMessage]:
        ends_at = None if time_remaining is None else time.monotonic() + time_remaining
        cfg = stream.config
        self._limit()
        _validate_config(cfg, self.config)
        # the voice and the avatar (a name: to its id, by the renderer) are checked together
        voice, cfg.avatar_id = await all_of(
            self.check_voice(cfg.voice),
            self.ds.avatar_id(cfg.avatar_id, "config.avatar_id", self.config.renderer.timeout_seconds),
        )
        self._limit()  # again: other sessions may have started while the voice was checked
        session_id = self.ids.new()
        request_id = adopt_request_id(cfg.request_id)
        session = LiveSession(self, session_id, cfg, request_id, ends_at, voice)
        self.sessions[session_id] = session
        principal = current_principal.get()
        if principal is not None:
            self.session_keys[session_id] = principal.name
        session.state.set(LiveState.IDLE)
        try:
            async for msg in session.run(stream):
                yield msg
        except TalkmeshError as exc:
            in_live_terms(exc)  # the encoder's (renderer's) `config.backend` is `config.renderer_backend`
            raise
        finally:
            self.sessions.pop(session_id, None)
            self.session_keys.pop(session_id, None)
            session.state.set(None)

    def _voice_check_timeout(self) -> float:
        """A voice check is a lookup that answers in milliseconds: a TTS that has not answered
        within VOICE_CHECK_SECONDS is treated as unable to answer now (the session starts, a turn
        learns its rate from TTS's first answer), not waited for its whole call deadline."""
        return min(self.config.tts.timeout_seconds, VOICE_CHECK_SECONDS)

    async def listed_voice(self, voice: str, field_name: str) -> tuple[str, int] | None:
        """(id, sample rate) of the voice TTS lists for ``voice`` (NOT_FOUND on ``field_name`` if
        it has none such); None when TTS cannot answer now."""
        try:
            listed = await self.ds.list_voices(tpb.ListVoicesRequest(voice=voice), self._voice_check_timeout())
        except TalkmeshError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                raise NotFound(field_name, voice, "voice") from None
            log.warning("could not check the voice %r: %s", voice, exc.message)
            return None
        return (listed.voices[0].id, listed.voices[0].sample_rate) if len(listed.voices) == 1 else None

    async def check_voice(self, voice: str) -> tuple[str, int]:
        """NOT_FOUND on ``config.voice`` before the session starts, not on each turn, if TTS has no
        such voice; else the voice's listed id and sample rate (without ``voice``, those of the one
        TTS lists as its default), so a text turn stopped before TTS answered reports its samples
        in it. ("", 0) when TTS is unreachable now, which does not refuse the session: audio turns
        need no TTS, and text turns report their own errors (the rate is then learnt from TTS's
        first answer)."""
        if voice:
            listed = await self.listed_voice(voice, "config.voice")
            return listed if listed is not None else ("", 0)
        try:
            voices = await self.ds.list_voices(tpb.ListVoicesRequest(), self._voice_check_timeout())
        except TalkmeshError as exc:
            log.warning("could not check the live session's default voice: %s", exc.message)
            return "", 0
        return next(((v.id, v.sample_rate) for v in voices.voices if v.default), ("", 0))

    async def watch(self, session_id: str) -> AsyncIterator[lpb.LiveServerMessage]:
        session = self.sessions.get(session_id)
        if session is None:
            owner = self.ids.owner(session_id)
            if owner is None or owner == self.ids.advertise:
                raise NotFound("session_id", session_id, "live session")
            async for msg in self.ds.watch_remote(owner, session_id):
                yield msg
            return
        # With API keys, only the key that started the session (or an admin key) watches it.
        principal = current_principal.get()
        if restricted(principal) and self.session_keys.get(session_id) != principal.name:
            raise PermissionDenied(f"session_id: live session {session_id!r} belongs to another API key")
        feed: Chan[lpb.LiveServerMessage] = Chan(session.sizes.watcher)
        joined = False
        seq = 0

        def numbered(msg: lpb.LiveServerMessage) -> lpb.LiveServerMessage:
            nonlocal seq
            out = lpb.LiveServerMessage()
            out.CopyFrom(msg)
            out.seq = seq
            seq += 1
            return out

        if session.closed:  # its end closed the watchers already: this one would wait for ever
            raise NotFound("session_id", session_id, "live session")
        session.watchers.add(feed)  # (before the first yield: the session may end meanwhile)
        try:
            for first in (session.started_msg, session.init_msg):
                if first is not None:
                    yield numbered(first)
            async for msg in feed:
                kind = msg.WhichOneof("kind")
                if kind == "started" or (kind == "media" and msg.media.init_segment):
                    continue  # sent above
                if kind == "media" and not joined:
                    if not msg.media.keyframe:
                        continue  # a new decoder starts at a keyframe
                    joined = True
                yield numbered(msg)
        finally:
            session.watchers.discard(feed)

    async def drain(self) -> None:
        """SIGTERM: sessions announce their end and close after drain_seconds (or their turns)."""
        self.draining = True
        for s in list(self.sessions.values()):
            s.end_requested.set()


def _validate_config(cfg: lpb.LiveConfig, config: GatewayConfig) -> None:
    for name in ("request_id", "avatar_id", "voice"):
        check_id(f"config.{name}", getattr(cfg, name))
    check_media_options(
        "config",
        size=cfg.size,
        renderer_backend=cfg.renderer_backend,
        audio_codec=cfg.audio_codec,
        idle_motion=cfg.idle_motion,
    )
    check_text_format("config.text_format", cfg.text_format)
    for name in ("idle_timeout_seconds", "max_session_seconds"):
        value = getattr(cfg, name)
        if not 0 <= value <= MAX_SETTING_SECONDS or value != value:
            raise InvalidArgument(
                f"config.{name}", f"{value:g} is outside 0..{MAX_SETTING_SECONDS} (0 = server default)"
            )
    check_voice_settings("config.voice_settings", cfg.voice_settings)  # as TTS checks them, but at once

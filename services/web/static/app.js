// talkmesh live page: one live session over the /v1/live WebSocket (docs/WEB.md), its fMP4
// stream played through Media Source Extensions near the live edge. Plain JS, no build step.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const video = $("avatar");
  // Playback is kept TARGET_LAG behind the newest buffered media (faster while above it, see
  // keepLive); beyond MAX_LAG it skips forward. (A 150 ms target with a 450 ms skip threshold
  // and 25 % catch-up was tried on the loaded machine: no fewer stalls, a longer distance.)
  // Tunable from the page's URL for experiments (`/?target_lag=0.2&max_lag=0.4&speech_seek=0`).
  const query = new URLSearchParams(location.search);
  const knob = (name, value) => {
    const v = Number.parseFloat(query.get(name) ?? "");
    return Number.isFinite(v) ? v : value;
  };
  const TARGET_LAG = knob("target_lag", 0.12);
  const MAX_LAG = knob("max_lag", 0.3);
  // Playback rate while more than 80 ms above the target (1.1 while 40 to 80 ms above it).
  const FAST_RATE = knob("fast_rate", 1.1);
  // On interrupt, buffered speech beyond the playhead longer than this is skipped by a seek.
  const CUT_SEEK = knob("cut_seek", 0.08);
  // When speech starts, the idle frames still buffered before it are skipped by a seek (1), played
  // at RUSH_RATE (2: no decoder flush, no refill) or played as they are (0).
  const SPEECH_SEEK = knob("speech_seek", 1);
  // ... but only when the first speech frame is further ahead of the playhead than a seek costs:
  // after a seek Chromium plays only once it has buffered a threshold of audio again (200 ms at
  // first, more after underflows), so a seek into a buffer holding one frame takes about that long
  // to paint, while playing on shows the frame after `ahead` seconds. The page measures the cost
  // (speech seek issued -> that turn's first frame painted, averaged) unless
  // `speech_seek_min` fixes the threshold (seconds; 0.08 was the earlier behaviour).
  const SPEECH_SEEK_MIN = knob("speech_seek_min", NaN);
  const RUSH_RATE = knob("rush_rate", 4);
  // Media older than this is removed from the SourceBuffer (a long session stays small).
  const KEEP_SECONDS = 20;
  // Chromium's audio renderer waits for a buffer's worth of audio (200 ms at first, doubled after
  // every underflow) before it plays after a seek or a stall. Where the browser lets a page set it
  // (`latencyHint`, not web-exposed in Chromium 156 without --enable-blink-features=MediaLatencyHint)
  // `?latency_hint=0.05` sets it (seconds).
  const LATENCY_HINT = knob("latency_hint", NaN);
  if (Number.isFinite(LATENCY_HINT) && "latencyHint" in video) video.latencyHint = LATENCY_HINT;
  // `?timing=1`: the edge stamps every JSON message with when it got it (edge_unix_seconds), so
  // the relay's share of speak -> paint can be told apart (docs/WEB.md; `talkmesh bench web`).
  const TIMING = query.get("timing") === "1";
  // The sound (docs/WEB.md): by default (`?audio=webaudio`) the <video> plays a video-only stream
  // and the audio is decoded with WebCodecs and played in an AudioContext on the video's clock
  // (webaudio.js), so Chromium's audio playback threshold no longer holds the picture back.
  // `?audio=mse`, and browsers without WebCodecs' AudioDecoder, play it in the <video> with the
  // picture through MSE.
  const WEBAUDIO = (query.get("audio") ?? "webaudio") === "webaudio" && "AudioDecoder" in window && !!window.TalkmeshAudio;
  const AUDIO_RESYNC = knob("audio_resync", 0.04); // s the sound may drift from the picture
  const AUDIO_HORIZON = knob("audio_horizon", 0.3); // s of sound scheduled ahead
  // A speaking frame's sound comes with the frame (the encoder encodes the speech ahead of the
  // picture), but decoding takes a moment and an underrun's or idle frame's silence still ends
  // short of it: the picture pauses when the decoded sound ends less than AUDIO_FLOOR past the
  // shown frame's end and plays on once AUDIO_RESUME is there (the picture never shows a frame
  // whose sound is missing). A 20 ms floor (the default before the encoder's lead) paused it ~10x
  // as often for no fewer late sounds (BENCHMARKS.md, "The live sound ahead of the picture").
  const AUDIO_FLOOR = knob("audio_floor", 0);
  const AUDIO_RESUME = knob("audio_resume", 0.06);
  // A wall-clock time (ms since the epoch, e.g. the server's unix_seconds) on performance.now()'s
  // clock. Date.now() is read now, not derived from performance.timeOrigin: timeOrigin is fixed when
  // the page loads while the wall clock may be stepped or slewed later (tm.turns[id].clockDrift
  // records the difference; 0-2 ms in the 2-minute bench runs).
  const wallToPerf = (wallMs) => performance.now() - (Date.now() - wallMs);
  // Reconnects: exponential backoff with jitter (the n-th wait is between half and all of
  // retry_base * 2^n, capped at retry_cap; a final status's retry_after is a floor), so a refused
  // or failing edge is not hammered every 2 s. Seconds.
  const RETRY_BASE = knob("retry_base", 1);
  const RETRY_CAP = knob("retry_cap", 30);
  // A picker's (or the motion toggle's) change restarts the session this long after the last one (ms).
  const PICK_SETTLE_MS = 600;
  // ... but a change made by the arrow keys (or type-ahead) on a closed picker, which changes it at
  // each press, applies on Enter, when the picker loses focus, or this long after the last one (ms).
  const KEY_SETTLE_MS = 4000;
  // A motion change waits for the speech in progress to have played, at most this long (ms).
  const MOTION_WAIT_MS = knob("motion_wait", 30) * 1000;
  // The caption of a turn that stopped stays this long (ms), unless another turn's replaces it.
  const CAPTION_LINGER_MS = 3000;
  // A socket whose session has not started this long after it opened is closed and retried (ms).
  const STARTED_WITHIN_MS = knob("started_within", 15) * 1000;
  // The true delay (the frame on screen vs the wall clock, see trueDelay): beyond LAG_WARN s of
  // media arriving late the page says the connection is too slow; beyond CATCHUP s it drops what
  // is in flight (a new session at the live edge) rather than fall further behind.
  const LAG_WARN = knob("lag_warn", 1.5);
  const CATCHUP = knob("catchup", 5);
  // The documented limit of a text turn; `started.max_text_chars` says the server's own.
  const MAX_TEXT = 5000;
  let textLimit = MAX_TEXT; // started.max_text_chars when the server says it

  const tm = {
    // Exposed for tests and `talkmesh bench web`.
    started: null, // SessionStarted
    fps: 25,
    offset: null, // media time of session frame 0
    turns: {}, // turn_id -> {pressed, startFrame, stopFrame, firstPainted, startedEvent}
    interrupts: [], // {pressed, ackAt, cutFrame, idlePainted}
    events: [],
    errors: [],
    uploads: [], // {name, size, progress: [%...], ok: avatar id | false | null while running}
    mics: [], // microphone turns: {turnId, chunks, samples}
    lag: { last: 0, max: 0, samples: [], skips: 0 }, // playhead behind the live edge (s, see keepLive)
    ahead: null, // {seconds, at}: the newest media's frames beyond the one due when it arrived
    painted: 0,
    waiting: 0, // times playback stalled for want of data (the element's `waiting` event)
    lastMediaTime: 0,
    // the Web Audio path's counters (null with `?audio=mse`)
    audio: WEBAUDIO ? { received: 0, decoded: 0, scheduled: 0, late: 0, lateSound: 0, resyncs: 0, rateChanges: 0, drift: 0, holds: 0, muted: 0, errors: [] } : null,
    speakingVisible: false,
    status: null,
    connected: false,
    // the true delay (s): `screen` the frame on screen, `link` the newest media received, both
    // against the server's wall clock (frame n of the session is due at frame0_unix_seconds + n / fps)
    delay: { screen: null, link: null, max: 0, samples: [], clockOffset: null, warned: 0, catchups: 0 },
    connects: [], // {at (performance.now()), wait (s before it), reason}
    alerts: [], // texts shown in the role=alert region
    unsent: [], // turns not sent (no session): {at, text}
  };
  window.talkmesh = tm;

  let ws = null;
  let ms = null;
  let sb = null;
  let appendQueue = [];
  let pendingMedia = null;
  let turnCounter = 0;
  let currentTurn = "";
  let reconnectTimer = null;
  let pickTimer = null; // a picker's (or the motion toggle's) change, until it settles (PICK_SETTLE_MS)
  let quietTimer = null; // a motion change waiting for the speech to end (MOTION_WAIT_MS)
  let untilQuiet = null; // ... its reason
  let quietBy = 0; // ... performance.now() by which it applies even if the avatar still speaks
  let keyPick = false; // a picker was changed by a key press and the change has not applied yet
  let pickPending = false; // a picker was changed and the change has not applied yet (either way)
  let pickRestart = false; // a pick applied: its new session has not started yet (Speak holds the text for it)
  // What was given to say while a pick settled or its session started, in order: the new session
  // says it. {text} of Speak, or {file, samples} of an audio file that finished decoding then.
  let held = [];
  let keepAliveTimer = null;
  let rushTo = null; // media time playback rushes to (speech_seek=2)
  let seekCost = 0.2; // s, the measured cost of a speech seek (see SPEECH_SEEK_MIN)
  let seekingTurn = null; // the turn whose start the last seek went to (its seekedAt is recorded)
  let audioPath = null; // webaudio.js's AudioPath (audio=webaudio)
  let audioTrack = null; // the audio track's id in the stream (audio=webaudio)
  let waitingForSound = false; // the picture is paused until its sound is there (audio=webaudio)
  let attempts = 0; // failed connections in a row (the backoff's exponent)
  let refusal = null; // an `error` before `started`: the old edge's way of refusing a session
  let draining = false; // a session_ending END_REASON_DRAINING arrived: reconnect at once
  let catchingUp = false; // this close is the page's own, to drop media in flight (too slow a link)
  let sessionStartedAt = null; // performance.now() of `started`
  let countdown = null; // the header's "retrying in N s" (or "ends in N s") timer
  let liveHeader = ""; // the header of the session that runs
  let idleEnding = false; // an idle-timeout warning is counting down in the header
  let newestFrameEnd = null; // session frame after the newest frame received
  let slowSince = null; // performance.now() since when the link has been more than LAG_WARN late
  let lastSlowAt = -Infinity; // performance.now() when it last was

  // -- access token (docs/WEB.md "Access tokens") ---------------------------------------------------
  // An edge with web.token_secret_file wants a token on every call. The site that sends its users
  // here puts it in the URL's fragment (`/#access_token=...`: never sent to a server, and removed
  // from the address bar at once); a page that frames this one gives or renews it with
  // postMessage({type: "talkmesh.access_token", token}, origin), and hears of a refusal from
  // a {type: "talkmesh.access_refused", code, message} message. The live WebSocket carries it as a
  // subprotocol (`access_token.<token>`), not in its URL.
  // A token as given (a trailing newline of a fetched one dropped); "" when it is no JWT at all.
  const asToken = (text) => {
    const token = String(text || "").trim();
    return /^[\w-]+\.[\w-]+\.[\w-]*$/.test(token) ? token : "";
  };
  let accessToken = asToken(new URLSearchParams(location.hash.slice(1)).get("access_token"));
  if (new URLSearchParams(location.hash.slice(1)).has("access_token")) {
    history.replaceState(null, "", location.pathname + location.search); // (even a malformed one)
  }
  let accessRefused = null; // the edge's error while the token is refused: nothing connects until a new one
  const withToken = (headers = {}) => (accessToken ? { ...headers, Authorization: `Bearer ${accessToken}` } : headers);
  // The buttons the token does not allow are off (the edge would answer 403).
  function applyScopes() {
    const noSpeak = mayNot("speak");
    if (!downloading) setAvailable($("download"), !noSpeak);
    $("download").title = noSpeak ? "Your access does not include downloads" : "";
  }
  // The edge's error when it refuses the token (401, or 403 naming it), else null.
  async function accessError(resp) {
    if (resp.status !== 401 && resp.status !== 403) return null;
    const err = ((await resp.clone().json().catch(() => ({}))).error) || {};
    return err.field === "access_token" ? err : null;
  }
  // A refusal of the token a request carried: said, unless a new token came meanwhile (start
  // again with it).
  function refusedWith(used, err) {
    if (used !== accessToken) {
      start();
      return;
    }
    refuseAccess(err);
  }
  // What the token allows (its payload read, not checked: the edge checks it), null if unknown.
  function tokenScopes() {
    try {
      const payload = JSON.parse(atob(accessToken.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
      return typeof payload.scope === "string" ? payload.scope.split(/\s+/) : ["speak", "live", "watch"];
    } catch (_) {
      return null;
    }
  }
  const mayNot = (scope) => accessToken && (tokenScopes() || [scope]).indexOf(scope) < 0;
  function refuseAccess(err) {
    accessRefused = err;
    tm.access = err;
    clearTimeout(reconnectTimer);
    clearTimeout(pickTimer);
    pickPending = false; // (the pick applies with the session a new token starts)
    pickRestart = false;
    dropPendingSpeak("access refused");
    setControls(tm.connected);
    if (!tm.connected) { // a running session outlives its token: it plays on (no reconnection after it)
      clearInterval(countdown);
      setControls(false);
      setConnection("Not signed in");
    }
    // (a reload would not help: the link's token left the address bar when the page opened)
    const framed = window.parent !== window;
    const again = framed ? "waiting for the site to sign you in again" : "open it again from the site that sent you here";
    let why = "You do not have access to the avatar (your sign-in is missing or not valid)";
    if (/expired/.test(err.message || "")) why = "Your access to the avatar has expired";
    else if (err.code === "PERMISSION_DENIED") why = "Your access does not include the live avatar";
    showAlert(`${why}: ${again}.`, "session");
    logEvent(`access refused: ${err.message}`);
    if (window.parent !== window) {
      window.parent.postMessage({ type: "talkmesh.access_refused", code: err.code, message: err.message }, "*");
    }
  }
  window.addEventListener("message", (ev) => {
    const data = ev.data || {};
    if (ev.source !== window.parent || window.parent === window) return; // only the framing page
    if (data.type !== "talkmesh.access_token" || !asToken(data.token)) return;
    accessToken = asToken(data.token);
    applyScopes();
    if (accessRefused) {
      accessRefused = null;
      tm.access = null;
      clearAlert();
      if (!tm.connected) start(); // (a session that ran on keeps running)
    }
  });

  // -- events panel ---------------------------------------------------------------------------
  function logEvent(text) {
    const li = document.createElement("li");
    li.textContent = `${new Date().toISOString().slice(11, 23)} ${text}`;
    const list = $("events");
    list.prepend(li);
    while (list.children.length > 60) list.lastChild.remove();
  }
  // A text as the Events list shows it: its first 40 characters, and "…" when it goes on.
  function clip(text, n = 40) {
    const chars = [...text];
    return chars.length > n ? `${chars.slice(0, n).join("")}…` : text;
  }
  function ms_(seconds) {
    return seconds == null ? "–" : `${Math.round(seconds)} ms`;
  }
  // The header says the connection's state (with its countdowns); screen readers hear it only when
  // the state changes, not every second of a countdown (its numbers do not count as a change).
  // `said`: what they hear, when the header's text is technical (a session's id and size).
  let announced = "";
  function setConnection(text, said = text) {
    $("connection").textContent = text;
    const shape = said.replace(/\d+/g, "#");
    if (shape !== announced) {
      announced = shape;
      $("announce").textContent = said;
    }
  }
  // User-facing errors: the role=alert region (the raw message goes to the Events list).
  function showAlert(text, kind = "") {
    tm.alerts.push(text);
    $("alert").dataset.kind = kind;
    if (!$("alert").hidden && $("alert").textContent === text) return; // (a role=alert is read again when rewritten)
    $("alert").textContent = text;
    $("alert").hidden = false;
  }
  function clearAlert() {
    $("alert").textContent = "";
    $("alert").hidden = true;
  }
  // A control that cannot be used right now is aria-disabled rather than disabled: it keeps the
  // keyboard focus (a disabled one drops it to <body>, and the next Enter goes nowhere), screen
  // readers call it unavailable, and a click or key press on it is ignored (the capturing click
  // listener under "wiring").
  function setAvailable(el, on) {
    if (on) el.removeAttribute("aria-disabled");
    else el.setAttribute("aria-disabled", "true");
  }
  // Speak, Interrupt and the audio turns need a session; the badge and the video say there is none.
  // While a pick's new session starts, Speak holds the text for it and Interrupt cancels a held
  // text; the audio turns wait for a pick to apply (they would go to the session its restart cuts).
  function setControls(live) {
    setAvailable($("speak"), live || pickRestart);
    setAvailable($("interrupt"), live || held.length > 0);
    setAvailable($("audio-file"), live && !pickPending);
    if (!mic && !micOpening) setAvailable($("mic"), live && !pickPending);
    video.parentElement.classList.toggle("offline", !live);
    $("state").classList.toggle("offline", !live);
    if (!live) {
      tm.speakingVisible = false;
      $("state").classList.remove("speaking");
      $("state").textContent = ws && ws.readyState === WebSocket.CONNECTING ? "connecting" : "disconnected";
    } else {
      $("state").textContent = tm.speakingVisible ? "speaking" : "idle";
    }
  }
  function resetTimings() {
    for (const id of ["t-ttff", "t-started", "t-ack", "t-idle", "t-delay", "t-lag"]) $(id).textContent = "–";
  }
  // A gRPC status for people (the raw message stays in the Events list): null for OK.
  function friendly(status, inSeconds) {
    const retry = inSeconds == null ? "" : inSeconds <= 0.5 ? "; reconnecting now" : `; reconnecting in ${Math.ceil(inSeconds)} s`;
    const tell = (status.message || "").replace(/^session: /, "");
    switch (status.code) {
      case "OK": return null;
      case "RESOURCE_EXHAUSTED":
        if (status.field) return `Your message was refused: ${tell}`;
        if (/max_sessions_per_subject/.test(tell)) return `The avatar is open in too many of your tabs or windows: close one${retry}`;
        return `The server is full${inSeconds == null ? "" : `, retrying in ${Math.ceil(inSeconds)} s`}`;
      case "MESSAGE_TOO_BIG": return `Your last message was too large for the server${tell ? ` (${tell})` : ""}${retry}`;
      case "UNAVAILABLE": return `The avatar service is unavailable${retry}`;
      case "DEADLINE_EXCEEDED": return `The avatar service did not answer in time${retry}`;
      case "INVALID_ARGUMENT": case "NOT_FOUND": case "FAILED_PRECONDITION": case "OUT_OF_RANGE":
        return `The session was refused: ${tell}${retry}`;
      case "PERMISSION_DENIED": case "UNAUTHENTICATED": return `Not allowed: ${tell}`;
      case "CLOSED": return `The connection to the server was lost${retry}`;
      default: return `Something went wrong on the server${retry}`;
    }
  }
  // retry_after of a final status: seconds as a number, "5s" (a Duration's JSON) or retry_after_seconds.
  function retryAfter(status) {
    const v = status && (status.retry_after_seconds ?? status.retry_after);
    if (v == null) return 0;
    const n = typeof v === "object" ? Number(v.seconds || 0) + Number(v.nanos || 0) / 1e9 : Number.parseFloat(String(v));
    return Number.isFinite(n) && n > 0 ? n : 0;
  }

  // -- media ----------------------------------------------------------------------------------
  function frameTime(frame) {
    return (tm.offset ?? 0) + Number(frame) / tm.fps;
  }

  // The stream's MIME type without its audio codec (audio=webaudio).
  function videoOnly(mime) {
    return mime.replace(/codecs="([^"]*)"/, (_, list) =>
      `codecs="${list.split(",").map((c) => c.trim()).filter((c) => !/^(mp4a|opus|ac-3|ec-3)/.test(c)).join(",")}"`);
  }

  function setupMedia(mime) {
    if (WEBAUDIO) mime = videoOnly(mime);
    // iOS Safari (17.1+) has ManagedMediaSource only, which opens only with remote playback
    // (AirPlay) off: there is no HLS alternative for a live session to hand over.
    const Source = window.MediaSource || window.ManagedMediaSource;
    if (!Source || !Source.isTypeSupported(mime)) {
      showError(`this browser cannot play ${mime}`);
      return;
    }
    if (Source === window.ManagedMediaSource) video.disableRemotePlayback = true;
    ms = new Source();
    appendQueue = [];
    sb = null;
    tm.offset = null;
    video.src = URL.createObjectURL(ms);
    ms.addEventListener("sourceopen", () => {
      URL.revokeObjectURL(video.src);
      sb = ms.addSourceBuffer(mime);
      sb.mode = "segments";
      sb.addEventListener("updateend", pump);
      sb.addEventListener("error", () => showError("the media could not be decoded"));
      pump();
    }, { once: true });
  }

  function pump() {
    if (!sb || sb.updating || !appendQueue.length || ms.readyState !== "open") return;
    const item = appendQueue.shift();
    try {
      if (item.remove) {
        sb.remove(item.remove[0], item.remove[1]);
      } else {
        sb.appendBuffer(item.data);
        if (item.firstOf) {
          const t = item.firstOf;
          t.appendCalledAt = performance.now();
          sb.addEventListener("updateend", () => { t.appendedAt = performance.now(); }, { once: true });
        }
        if (item.head && !item.head.init_segment && tm.offset === null) {
          // The first fragment's media time says where session frame 0 sits on the media timeline.
          const first = Number(item.head.first_frame || 0);
          sb.addEventListener("updateend", () => {
            if (video.buffered.length) tm.offset = video.buffered.start(0) - first / tm.fps;
          }, { once: true });
        }
      }
    } catch (err) {
      if (err.name === "QuotaExceededError") {
        appendQueue.unshift(item);
        trim(true);
      } else {
        showError(`media: ${err.message}`);
      }
    }
  }

  function trim(force) {
    if (!sb || !video.buffered.length) return;
    const start = video.buffered.start(0);
    const keep = force ? 2 : KEEP_SECONDS;
    if (video.currentTime - start > keep + 5) {
      appendQueue.unshift({ remove: [start, video.currentTime - keep] });
      pump();
    }
  }

  // Seconds the newest buffered media runs ahead of the session clock: an idle fragment may carry
  // several frames, sent when its first is due (live.idle_frames_per_fragment on the encoder).
  function riding() {
    const a = tm.ahead;
    return a ? Math.max(0, a.seconds - (performance.now() - a.at) / 1000) : 0;
  }

  // -- the true delay -------------------------------------------------------------------------
  // Session frame n is due at frame0_unix_seconds + n / fps on the server's clock. `started` (a
  // small message first on a fresh socket) and every fragment (sent when its first frame is due)
  // arrive (arrival on this clock) - (server time) = the clocks' offset + the link's delay after
  // the server stamped them: the smallest value seen estimates the offset. Clocks that agree
  // within a second (NTP) are taken as agreeing (offset 0), so the link's latency is not mistaken
  // for an offset; beyond that the estimate is used.
  function dueWall(frame) {
    return Number(tm.started.frame0_unix_seconds) + frame / tm.fps;
  }
  function noteClock(seen) {
    const d = tm.delay;
    d.minSeen = d.minSeen == null ? seen : Math.min(d.minSeen, seen);
    d.clockOffset = Math.abs(d.minSeen) < 1 ? 0 : d.minSeen;
  }
  function noteArrival(head) {
    if (!tm.started || !tm.started.frame0_unix_seconds || !head || head.init_segment) return;
    const first = Number(head.first_frame || 0);
    newestFrameEnd = first + Number(head.frame_count || 1);
    noteClock(Date.now() / 1000 - dueWall(first));
  }
  // Seconds behind live of the frame on screen and of the newest media received (null: unknown).
  function trueDelay() {
    const d = tm.delay;
    if (!tm.started || !tm.started.frame0_unix_seconds || tm.offset === null || d.clockOffset === null) return;
    const now = Date.now() / 1000 - d.clockOffset;
    d.screen = now - dueWall((video.currentTime - tm.offset) * tm.fps);
    // the newest frame received ends at newestFrameEnd; idle frames sent ahead of the clock count as on time
    d.link = Math.max(0, now - dueWall(newestFrameEnd));
    if (tm.painted > 25) {
      d.max = Math.max(d.max, d.screen);
      d.samples.push(d.screen);
      if (d.samples.length > 20000) d.samples.splice(0, 10000);
    }
    $("t-delay").textContent = ms_(d.screen * 1000);
    // The link is slower than the stream: the media itself arrives late (not a stall in this tab,
    // which keepLive skips over). Say so, and past CATCHUP drop what is in flight.
    const late = Math.max(d.link, d.screen);
    if (d.link > LAG_WARN) {
      if (slowSince === null) slowSince = performance.now();
      lastSlowAt = performance.now();
      if (performance.now() - slowSince > 1000) {
        if ($("slow").hidden) d.warned += 1;
        $("slow").textContent = `Your connection is too slow for live video: ${late.toFixed(1)} s behind.`
          + (late > CATCHUP ? " Skipping ahead to live…" : ` The page skips ahead to live beyond ${CATCHUP} s.`);
        $("slow").hidden = false;
      }
      if (late > CATCHUP && tm.painted > 25 && ws && ws.readyState === WebSocket.OPEN) {
        // The media in flight can only be dropped by closing its socket: a new session starts at
        // the live edge (the turn being spoken is lost; the user is told).
        d.catchups += 1;
        catchingUp = true;
        logEvent(`catch up: ${late.toFixed(1)} s behind live, reconnecting at the live edge`);
        ws.close(4000, "catching up");
      }
    } else if (d.link < LAG_WARN / 2 && d.screen < LAG_WARN) {
      slowSince = null;
      // the warning stays up until the stream has kept up for a while (a catch-up's new session
      // starts on time and falls behind again on a link that cannot carry it)
      if (!$("slow").hidden && !catchingUp && performance.now() - lastSlowAt > 10000) $("slow").hidden = true;
      else if (!$("slow").hidden && d.catchups) {
        $("slow").textContent = `Your connection is too slow for live video: skipped ahead to live ${d.catchups}× (the speech in between was dropped).`;
      }
    }
  }

  function keepLive() {
    if (!video.buffered.length) return;
    // the live edge: the newest frame that is due, not the frames that rode ahead of the clock
    let end = video.buffered.end(video.buffered.length - 1) - riding();
    // audio=webaudio: the picture keeps its distance from where both it and its decoded sound are
    // there (the sound may end a little short of the newest frame: decoding, idle silence)
    if (audioPath) end = Math.min(end, audioPath.edge());
    if (video.currentTime < video.buffered.start(0)) video.currentTime = video.buffered.start(0);
    let lag = end - video.currentTime;
    if (tm.painted > 25) {
      // sampled before any correction: the distance the viewer actually had
      tm.lag.max = Math.max(tm.lag.max, lag);
      tm.lag.samples.push(lag);
      if (tm.lag.samples.length > 20000) tm.lag.samples.splice(0, 10000);
    }
    if (lag > MAX_LAG) {
      // Fell behind (a stall, a background tab): skip forward, don't accumulate delay.
      video.currentTime = end - TARGET_LAG;
      tm.lag.skips += 1;
      lag = TARGET_LAG;
    }
    if (rushTo !== null) {
      if (video.currentTime < rushTo && !tm.speakingVisible) return;
      rushTo = null;
    }
    // Behind: play faster until back at the target (pitch kept; no seek, which would flush the
    // decoders and stall playback until they have refilled).
    const rate = lag > TARGET_LAG + 0.08 ? FAST_RATE : lag > TARGET_LAG + 0.04 ? Math.min(1.1, FAST_RATE) : 1.0;
    if (video.playbackRate !== rate) video.playbackRate = rate;
    tm.lag.last = lag;
    if (waitingForSound) soundArrived();
    else if (video.paused && lag > TARGET_LAG / 2) video.play().catch(() => {});
    $("t-lag").textContent = ms_(lag * 1000);
  }

  function liveLag() {
    return video.buffered.length ? video.buffered.end(video.buffered.length - 1) - video.currentTime : 0;
  }

  // Every painted frame: what is visible (speaking or idle), first-frame and idle timings.
  function onFrame(now, meta) {
    tm.painted += 1;
    const t = meta.mediaTime;
    tm.lastMediaTime = t;
    sessionPainted = true;
    showCues(t);
    if (audioPath) {
      audioPath.offset = tm.offset ?? 0;
      audioPath.clock(t, meta.expectedDisplayTime, video.playbackRate);
      holdForSound(t);
    }
    let speaking = false;
    for (const [id, turn] of Object.entries(tm.turns)) {
      if (turn.startFrame == null) continue;
      const start = frameTime(turn.startFrame) - 0.001;
      const stop = turn.stopFrame == null ? Infinity : frameTime(turn.stopFrame) - 0.001;
      if (t >= start && t < stop) {
        speaking = true;
        if (turn.firstPainted == null) {
          turn.firstPainted = now;
          if (audioPath) {
            // lip sync: when this frame's sound is heard minus when the frame is shown (ms)
            turn.avSync = audioPath.heardAt(t) - meta.expectedDisplayTime;
          }
          if (turn.seekAt != null) seekCost = 0.7 * seekCost + 0.3 * Math.min(1, (now - turn.seekAt) / 1000);
          if (turn.pressed != null) {
            turn.ttff = now - turn.pressed;
            $("t-ttff").textContent = ms_(turn.ttff);
            logEvent(`first speaking frame of ${id} painted (${Math.round(turn.ttff)} ms after speak)`);
          }
        }
      }
    }
    for (const cut of tm.interrupts) {
      if (cut.cutFrame != null && cut.idlePainted == null && !cut.stale && t >= frameTime(cut.cutFrame) - 0.001) {
        cut.idlePainted = now;
        cut.toIdle = now - cut.pressed;
        $("t-idle").textContent = ms_(cut.toIdle);
      }
    }
    if (speaking && rushTo !== null) {
      rushTo = null;
      video.playbackRate = 1.0;
    }
    if (speaking !== tm.speakingVisible && tm.connected) { // without a session the badge says so
      tm.speakingVisible = speaking;
      $("state").textContent = speaking ? "speaking" : "idle";
      $("state").classList.toggle("speaking", speaking);
    }
    if (untilQuiet && !speaking && !turnsInFlight()) whenQuiet(untilQuiet); // the speech has played
    video.requestVideoFrameCallback(onFrame);
  }

  // -- the session ----------------------------------------------------------------------------
  // True when the message went out (false: no open session).
  function send(obj) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(obj));
    return true;
  }

  function connect(reason) {
    clearTimeout(reconnectTimer);
    clearInterval(countdown);
    if (ws) {
      ws.onclose = null;
      ws.close();
    }
    tm.connects.push({ at: performance.now(), reason: typeof reason === "string" ? reason : "start" });
    for (const cut of tm.interrupts) if (cut.ackAt == null) cut.stale = true; // the old session's
    if (mic) toggleMic(); // its turn was the old session's
    audioTurnSent = "";
    clearTimeout(pickTimer);
    keyPick = false; // (the new session takes the pickers as they are)
    pickPending = false;
    pickRestart = pickRestart || reason === "picker"; // (until the session starts or fails)
    // (a turn of the old session that had not ended is cut: said in the Events list)
    const cut = Object.entries(tm.turns).filter(([, t]) => t.stopFrame == null).map(([id]) => id);
    if (cut.length && tm.connected) logEvent(`${cut.join(", ")} cut: a new session starts (${tm.connects.at(-1).reason})`);
    clearTimeout(quietTimer); // (the new session takes the toggle as it is)
    untilQuiet = null;
    cues.length = 0; // (the old session's)
    sessionPainted = false;
    if (!captionTimer) showCaption(""); // (the last words of a turn that stopped stay a while)
    tm.turns = {};
    tm.started = null;
    tm.connected = false;
    tm.status = null;
    refusal = null;
    draining = false;
    sessionStartedAt = null;
    newestFrameEnd = null;
    slowSince = null;
    Object.assign(tm.delay, { screen: null, link: null, clockOffset: null, minSeen: null });
    resetTimings();
    if (audioPath) audioPath.close();
    audioPath = null;
    audioTrack = null;
    waitingForSound = false;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const params = new URLSearchParams();
    if (TIMING) params.set("timing", "1");
    const search = params.toString();
    const url = `${scheme}://${location.host}/v1/live${search ? `?${search}` : ""}`;
    // a WebSocket cannot send headers: the token goes as a subprotocol (the edge answers "talkmesh")
    ws = accessToken ? new WebSocket(url, ["talkmesh", `access_token.${accessToken}`]) : new WebSocket(url);
    // (asToken let only JWT characters through: the constructor cannot throw on the token)
    let opened = false;
    ws.binaryType = "arraybuffer";
    setConnection("connecting…");
    setControls(false);
    ws.onopen = () => {
      opened = true;
      // an edge or gateway that accepted the socket but never starts the session (hung): retry
      const socket = ws;
      setTimeout(() => {
        if (ws === socket && !tm.connected && socket.readyState === WebSocket.OPEN) {
          logEvent(`no session ${STARTED_WITHIN_MS / 1000} s after the socket opened: reconnecting`);
          socket.close(4001, "no session started");
        }
      }, STARTED_WITHIN_MS);
      const config = { request_id: `web-${Date.now().toString(36)}` };
      if ($("avatar-select").value) config.avatar_id = $("avatar-select").value;
      if ($("voice-select").value) config.voice = $("voice-select").value;
      config.idle_motion = idleMotion();
      send({ config });
      clearInterval(keepAliveTimer);
      keepAliveTimer = setInterval(() => send({ keep_alive: {} }), 30000);
    };
    ws.onmessage = (ev) => {
      if (typeof ev.data !== "string") {
        const head = pendingMedia;
        pendingMedia = null;
        const item = { data: ev.data, head };
        noteArrival(head);
        if (WEBAUDIO && !splitAudio(item)) return;
        const count = head && !head.init_segment ? Number(head.frame_count || 0) : 0;
        if (count) tm.ahead = { seconds: (count - 1) / tm.fps, at: performance.now() };
        if (head && head.turn_id) {
          // The turn's first fragment: where the time between speak and paint goes (tm.turns).
          const t = turn(head.turn_id);
          if (t.mediaAt == null) {
            t.mediaAt = performance.now();
            t.queuedBefore = appendQueue.length + (sb && sb.updating ? 1 : 0);
            t.firstKey = head.keyframe ? 1 : 0;
            item.firstOf = t;
          }
        }
        appendQueue.push(item);
        pump();
        return;
      }
      onMessage(JSON.parse(ev.data));
    };
    ws.onclose = (ev) => {
      // A handshake refused shows the page only a close (1006): with a token, ask the edge why
      // (the same route as a plain GET: the token is checked before the upgrade would be).
      if (opened || !accessToken) return onClose(ev);
      const socket = ws;
      const used = accessToken;
      fetch("/v1/live", { headers: withToken() })
        .then(accessError, () => null)
        .then((denied) => {
          if (ws !== socket) return; // connected again meanwhile (a new token, an upload)
          if (denied) refusedWith(used, denied);
          else onClose(ev);
        });
    };
  }

  // The session is over: say why (the final status; the old edge's `error` before `started`; the
  // close code) and reconnect after a backoff (at once after a drain or a catch-up).
  function onClose(ev) {
    const lived = sessionStartedAt === null ? 0 : (performance.now() - sessionStartedAt) / 1000;
    tm.connected = false;
    clearTimeout(quietTimer); // the next session takes the motion toggle as it is, after its backoff
    untilQuiet = null;
    clearInterval(keepAliveTimer);
    if (mic) toggleMic();
    cues.length = 0;
    if (!captionTimer) showCaption("");
    if (!catchingUp) { // the slow-link warning was about this session's stream
      $("slow").hidden = true;
      slowSince = null;
    }
    let status = tm.status || refusal;
    // a message too large for the edge: close 1009, with (the documented form) or without a final status
    const tooBig = ev.code === 1009 || (status && status.field === "message" && /large|big|size|bytes/i.test(status.message || ""));
    if (tooBig) {
      status = { code: "MESSAGE_TOO_BIG", message: status ? status.message : "", field: "message", raw: status };
    } else if (!status) {
      if (ev.code === 1013) status = { code: "RESOURCE_EXHAUSTED", message: ev.reason || "try again later" };
      else status = { code: "CLOSED", message: `closed (${ev.code}${ev.reason ? ` ${ev.reason}` : ""})` };
    }
    if (!tm.status) logEvent(`session ended: ${status.code} ${status.message || ""}`);
    pickRestart = false;
    const lost = dropPendingSpeak("the new session did not start");
    let wait;
    if (catchingUp || draining) {
      attempts = 0;
      wait = 0.1 + Math.random() * 0.4; // to the live edge / another replica, at once
    } else {
      // a session that ran for a while was not a failed attempt: start the backoff again
      if (lived > 10 || status.code === "OK" || status.code === "MESSAGE_TOO_BIG") attempts = 0;
      const step = Math.min(RETRY_CAP, RETRY_BASE * 2 ** attempts);
      wait = Math.max(step / 2 + Math.random() * step / 2, retryAfter(status));
      attempts += 1;
    }
    if (accessRefused) { // no new session until a new token comes (the message listener starts one)
      setControls(false);
      setConnection("Not signed in");
      return;
    }
    const reason = catchingUp ? "catch up" : draining ? "drain" : status.code;
    const header = catchingUp
      ? () => "Skipping ahead to live: reconnecting…"
      : draining
        ? () => "This server is restarting: moving to another one…"
        : (left) => friendly(status, left) || `The session ended; reconnecting in ${Math.ceil(left)} s`;
    const text = friendly(status, null);
    if (text && !catchingUp && !draining) showAlert(lost ? `${text}. ${lost}` : text, "session");
    else if (lost) showAlert(lost, "session");
    catchingUp = false;
    const due = performance.now() + wait * 1000;
    const tick = () => setConnection(header(Math.max(0, (due - performance.now()) / 1000)));
    clearInterval(countdown);
    tick();
    countdown = setInterval(tick, 1000);
    setControls(false);
    reconnectTimer = setTimeout(() => connect(reason), wait * 1000);
  }

  // audio=webaudio: the init segment and fragments lose their audio track, which goes to the
  // AudioPath. False when nothing is left for the SourceBuffer.
  function splitAudio(item) {
    const A = window.TalkmeshAudio;
    try {
      if (item.head && item.head.init_segment) {
        const { init, audio } = A.splitInit(item.data);
        item.data = init;
        if (audioPath) audioPath.close();
        audioPath = null;
        audioTrack = audio ? audio.trackId : null;
        if (audio && audio.description) {
          audioPath = new A.AudioPath(video, { ...audio, resync: AUDIO_RESYNC, horizon: AUDIO_HORIZON }, tm.audio);
          audioPath.onDecoded = soundArrived;
        }
        return true;
      }
      if (audioTrack === null) return true;
      const { video: data, audio } = A.splitFragments(item.data, audioTrack);
      if (audioPath && audio.length) audioPath.push(audio);
      item.data = data;
      return data !== null;
    } catch (err) {
      showError(`webaudio: ${err.message}`);
      return true;
    }
  }

  // audio=webaudio: the picture waits at the end of the decoded sound (see AUDIO_FLOOR).
  function holdForSound(mediaTime) {
    // the next frame too must have its sound
    if (waitingForSound || video.paused || audioPath.edge() - mediaTime >= AUDIO_FLOOR + 1 / tm.fps) return;
    waitingForSound = true;
    tm.audio.holds += 1;
    video.pause();
  }
  function soundArrived() {
    if (waitingForSound && audioPath.edge() - video.currentTime >= AUDIO_RESUME) {
      waitingForSound = false;
      video.play().catch(() => {});
    }
  }

  function onMessage(msg) {
    if (msg.media) {
      pendingMedia = msg.media; // its bytes are the next binary frame
      return;
    }
    if (msg.started) {
      const s = msg.started;
      tm.started = s;
      tm.fps = s.fps_numerator / (s.fps_denominator || 1);
      tm.connected = true;
      pickRestart = false;
      sessionStartedAt = performance.now();
      if (s.frame0_unix_seconds) noteClock(Date.now() / 1000 - Number(s.frame0_unix_seconds));
      if (s.max_text_chars) textLimit = Number(s.max_text_chars);
      countText();
      setControls(true);
      if ($("alert").dataset.kind === "session") clearAlert(); // the session is back
      liveHeader = `live: session ${s.session_id.slice(-8)}, ${s.width}×${s.height} at ${tm.fps} fps`;
      setConnection(liveHeader, "Connected"); // (the session's details are in the header, not read out)
      logEvent(`started ${s.width}x${s.height} ${s.mime_type}`);
      setupMedia(s.mime_type);
      const given = held; // given while a pick applied: said with the new pick
      held = [];
      for (const h of given) {
        if (h.file) sendAudioFile(h.file, h.samples).catch((err) => showError(`audio file ${h.file}: ${err.message}`));
        else sendTurn(h.text);
      }
      return;
    }
    if (msg.event) {
      onEvent(msg.event, msg.edge_unix_seconds);
      return;
    }
    if (msg.error) {
      const e = msg.error;
      tm.errors.push(e);
      logEvent(`error ${e.code}: ${e.message}`);
      if (!tm.started) {
        refusal = e; // the old edge refused the session this way (then closed 1013)
        return;
      }
      const what = e.turn_id ? `Turn ${e.turn_id} was not spoken` : "The server refused a message";
      const why = ["UNAVAILABLE", "INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED"].includes(e.code)
        ? "a service behind the avatar failed (details in Events)" : e.message;
      showAlert(`${what}: ${why}`);
      return;
    }
    if (msg.status) {
      tm.status = msg.status;
      logEvent(`session ended: ${msg.status.code} ${msg.status.message || ""}${msg.status.field ? ` (${msg.status.field})` : ""}`);
    }
  }

  function turn(id) {
    if (!tm.turns[id]) tm.turns[id] = {};
    return tm.turns[id];
  }

  function onEvent(ev, edgeUnix) {
    const now = performance.now();
    tm.events.push({ at: now, ev });
    if (tm.events.length > 2000) tm.events.splice(0, 1000);
    const frame = Number(ev.frame || 0);
    if (ev.speaking_started) {
      if (idleEnding) { // speech again: the idle-timeout warning no longer holds
        idleEnding = false;
        clearInterval(countdown);
        setConnection(liveHeader, "Connected");
      }
      const t = turn(ev.speaking_started.turn_id);
      t.startFrame = frame;
      t.startedEvent = now;
      // when the server sent it, on this page's clock (same machine in the bench: one clock)
      if (ev.unix_seconds) {
        t.serverSent = wallToPerf(Number(ev.unix_seconds) * 1000);
        t.clockDrift = Number(ev.unix_seconds) * 1000 - performance.timeOrigin - t.serverSent;
      }
      if (edgeUnix != null) t.edgeReceived = wallToPerf(Number(edgeUnix) * 1000);
      skipIdleBefore(frame, t);
      if (t.pressed != null) $("t-started").textContent = ms_(now - t.pressed);
      logEvent(`speaking_started ${ev.speaking_started.turn_id} at frame ${frame}`);
    } else if (ev.caption) {
      cueCaption(ev.caption, frame); // the clause heard from this frame on
    } else if (ev.speaking_stopped) {
      const s = ev.speaking_stopped;
      const t = turn(s.turn_id);
      t.stopFrame = frame;
      if (!sessionPainted && captionTurn === s.turn_id) lingerCaption(); // (no playhead to wait for)
      t.reason = s.reason;
      logEvent(`speaking_stopped ${s.turn_id} ${s.reason} at frame ${frame}, ${s.samples_played || 0} samples played`);
      for (const w of s.warnings || []) logEvent(`warning for ${s.turn_id}: ${w}`);
      // spoken anyway, but not as written (letters read by name): say why, unless an alert (an
      // error, which matters more) is up
      if ((s.warnings || []).length && $("alert").hidden) {
        showAlert(`Turn ${s.turn_id} was spoken with a warning: ${s.warnings[0]}`);
      }
    } else if (ev.interrupt_acknowledged) {
      const cut = tm.interrupts.find((c) => c.ackAt == null && !c.stale);
      if (cut) {
        cut.ackAt = now;
        cut.cutFrame = frame;
        $("t-ack").textContent = ms_(now - cut.pressed);
      }
      dropAfterCut(frame);
      logEvent(`interrupt_acknowledged at frame ${frame}: ${(ev.interrupt_acknowledged.stopped_turn_ids || []).join(", ")}`);
    } else if (ev.underrun) {
      logEvent(`underrun ${ev.underrun.turn_id} frame ${ev.underrun.turn_frame}`);
    } else if (ev.session_ending) {
      const end = ev.session_ending;
      logEvent(`session_ending ${end.reason} in ${end.seconds_left || 0} s`);
      if (end.reason === "END_REASON_DRAINING") draining = true;
      idleEnding = end.reason === "END_REASON_IDLE_TIMEOUT";
      const says = {
        END_REASON_DRAINING: (left) => `This server is restarting: moving to another one in ${left} s`,
        END_REASON_MAX_LENGTH: (left) => `This session reaches its maximum length in ${left} s; a new one starts then`,
        END_REASON_IDLE_TIMEOUT: (left) => `This session ends in ${left} s (nothing was said for a while); a new one starts then`,
      }[end.reason];
      if (says) { // counted down in the header until the session ends (connect() or the close clears it)
        const due = performance.now() + Number(end.seconds_left || 0) * 1000;
        const tick = () => setConnection(says(Math.ceil(Math.max(0, (due - performance.now()) / 1000))));
        clearInterval(countdown);
        tick();
        countdown = setInterval(tick, 1000);
      }
    }
  }

  // Speech starts on a keyframe (the encoder forces one after idle): the idle frames still buffered
  // before it are skipped, so the answer is seen and heard as early as possible.
  function skipIdleBefore(frame, t) {
    const start = frameTime(frame);
    const ahead = start - video.currentTime;
    t.ahead = ahead * 1000;
    t.seekCost = seekCost * 1000;
    const min = Number.isFinite(SPEECH_SEEK_MIN) ? SPEECH_SEEK_MIN : Math.max(CUT_SEEK, seekCost);
    if (!SPEECH_SEEK || tm.speakingVisible || ahead <= min) {
      // no seek, so no new measurement: let one slow seek's estimate fade back to the default
      seekCost = 0.8 * seekCost + 0.2 * 0.2;
      return;
    }
    t.seekAt = performance.now();
    seekingTurn = t;
    if (SPEECH_SEEK === 2) {
      rushTo = start; // keepLive and onFrame end the rush
      video.playbackRate = RUSH_RATE;
    } else {
      video.currentTime = start;
    }
  }

  // Everything buffered between the playhead and the cut is speech the user interrupted: skip it.
  // (A few frames are quicker to play than a seek, which decodes again from the last keyframe.)
  function dropAfterCut(frame) {
    const cut = frameTime(frame);
    if (audioPath) audioPath.cut(cut);
    if (cut - video.currentTime > CUT_SEEK) video.currentTime = cut;
  }

  // -- controls ---------------------------------------------------------------------------------
  // The text's length against the limit, shown once it is near (the box never cuts what is typed
  // or pasted: Speak refuses a text over the limit and says so).
  function countText() {
    const n = [...$("text").value.trim()].length;
    const count = $("text-count");
    count.textContent = n > textLimit * 0.8 ? `${n} of ${textLimit} characters` : "";
    count.classList.toggle("over", n > textLimit);
    if (n > textLimit) $("text").setAttribute("aria-invalid", "true");
    else $("text").removeAttribute("aria-invalid");
  }

  // The sound button says what it will do; a turn turns the sound on (pressing Speak is the
  // gesture the browser asks for) unless the user turned it off.
  let soundOffByUser = false;
  function setSound(on) {
    video.muted = !on;
    $("unmute").textContent = on ? "Turn sound off" : "Turn sound on";
    if (audioPath) audioPath.syncMuted();
    if (on) video.play().catch(() => {});
  }
  function unmute() {
    if (!soundOffByUser) setSound(true);
  }
  function toggleSound() {
    soundOffByUser = !video.muted;
    setSound(video.muted);
  }

  // The avatar's idle life (blinks, slight head motion: WCAG 2.2.2 Pause, Stop, Hide) is drawn by
  // the server, so "Motion off" is a session setting (LiveConfig.idle_motion, and output.idle_motion
  // of a download): pressed, the avatar is still and only its mouth moves. It starts as the
  // system's prefers-reduced-motion says, and follows that setting's changes until the user
  // presses it; a change starts a new session once it has settled, as the pickers do.
  // The user's own choice is remembered on this device (localStorage, when the page may use it).
  const MOTION_KEY = "talkmesh.motion";
  const remembered = (() => {
    try { return localStorage.getItem(MOTION_KEY); } catch { return null; }
  })();
  const reducedMotion = window.matchMedia("(prefers-reduced-motion: reduce)");
  let motionByUser = remembered === "off" || remembered === "on";
  const motionOff = () => $("motion").getAttribute("aria-pressed") === "true";
  const idleMotion = () => (motionOff() ? "IDLE_MOTION_OFF" : "IDLE_MOTION_ON");
  function setMotionOff(off) {
    $("motion").setAttribute("aria-pressed", String(off));
  }
  setMotionOff(motionByUser ? remembered === "off" : reducedMotion.matches);
  function toggleMotion() {
    setMotionOff(!motionOff());
    // a choice other than the system's is kept; back to the system's, the page follows it again
    motionByUser = motionOff() !== reducedMotion.matches;
    try {
      if (motionByUser) localStorage.setItem(MOTION_KEY, motionOff() ? "off" : "on");
      else localStorage.removeItem(MOTION_KEY);
    } catch { /* not kept */ }
    settledWhenQuiet("motion");
  }
  reducedMotion.addEventListener("change", () => {
    if (motionByUser || reducedMotion.matches === motionOff()) return;
    setMotionOff(reducedMotion.matches);
    settledWhenQuiet("motion");
  });
  // Turns sent or speaking that have not stopped yet.
  const turnsInFlight = () => Object.values(tm.turns).some((t) => t.stopFrame == null);
  // A new session would cut the sentence being spoken: a motion change waits until what was said
  // has played (the player passed the turns' end), at most MOTION_WAIT_MS after the change. Speech
  // that starts while the change settles (Speak right after the toggle) is waited for too.
  function settledWhenQuiet(reason) {
    quietBy = performance.now() + MOTION_WAIT_MS;
    whenQuiet(reason);
  }
  function whenQuiet(reason) {
    clearTimeout(quietTimer);
    const waitMore = () => tm.connected && (tm.speakingVisible || turnsInFlight()) && performance.now() < quietBy;
    if (!waitMore()) {
      untilQuiet = null;
      settled(reason, PICK_SETTLE_MS, () => (waitMore() ? whenQuiet(reason) : connect(reason)));
      return;
    }
    if (untilQuiet == null) logEvent("the motion setting applies once the avatar has finished speaking");
    untilQuiet = reason;
    quietTimer = setTimeout(() => whenQuiet(reason), Math.max(0, quietBy - performance.now()));
  }

  // Without a session a turn is not sent and not queued (it would be spoken late, out of the
  // conversation, by a new session): the user is told and the text stays in the box. Speak while a
  // pick settles applies the pick at once and the new session says the text (the old one would be
  // cut by the restart a moment later); Speak after the pick applied, before its new session has
  // started, holds the text for it too (`held`). The same text again is not held twice: the
  // user is told it is queued. Interrupt cancels what is held; should the new session not start,
  // the user is told.
  function speak() {
    const text = $("text").value.trim();
    if (!text) {
      showAlert("Type something for the avatar to say first.");
      $("text").focus();
      return;
    }
    const limit = textLimit;
    const chars = [...text].length; // (an emoji is one character to the server, two UTF-16 units here)
    if (chars > limit) {
      showAlert(`Not sent: the text is ${chars} characters long, the limit is ${limit}.`);
      logEvent(`speak refused in the page: ${chars} > ${limit} characters`);
      return;
    }
    const live = tm.connected && ws && ws.readyState === WebSocket.OPEN;
    if ((pickRestart || (pickPending && live)) && !accessRefused) {
      // A voice or avatar picked a moment ago (not applied yet): the text would go to the old
      // session, which the pick's restart cuts. The pick applies now, and the new session says it.
      if (pickPending) connect("picker");
      hold(text);
      return;
    }
    if (!live) {
      tm.unsent.push({ at: performance.now(), text });
      showAlert("Not sent: there is no live session right now. Press Speak again once reconnected.");
      logEvent(`NOT sent (no session): ${clip(text)}`);
      return;
    }
    sendTurn(text);
  }

  function sendTurn(text) {
    currentTurn = newTurn("t");
    turn(currentTurn).lagAtPress = liveLag() * 1000;
    turn(currentTurn).text = text;
    send({ text: { turn_id: currentTurn, text, final: true } });
    logEvent(`speak ${currentTurn}: ${clip(text)}`);
  }

  // A text for the session a pick starts: said when it starts (the same text again is queued already).
  function hold(text) {
    if (held.some((h) => h.text === text)) {
      showAlert("Queued already: the avatar says your text once the new voice or avatar is ready.", "queued");
      logEvent(`speak: queued already for the new session: ${clip(text)}`);
      return;
    }
    held.push({ text });
    logEvent(`speak: the voice or avatar just picked applies first, then the new session says: ${clip(text)}`);
    setControls(tm.connected); // (Interrupt can cancel it)
  }

  const heldName = (h) => (h.file ? `audio file ${h.file}` : clip(h.text));

  // What is held for the session a pick starts (`held`), when that session does not come:
  // recorded as not sent (window.talkmesh.unsent) and logged; what to tell the user ("" if nothing).
  function dropPendingSpeak(why) {
    const again = [];
    if (held.some((h) => h.text != null)) again.push("Your text was not sent: press Speak again once reconnected.");
    if (held.some((h) => h.file)) again.push("Your audio file was not sent: choose it again once reconnected.");
    for (const h of held) {
      tm.unsent.push(h.file ? { at: performance.now(), file: h.file } : { at: performance.now(), text: h.text });
      logEvent(`NOT sent (${why}): ${heldName(h)}`);
    }
    held = [];
    return again.join(" ");
  }

  function interrupt() {
    if (held.length) { // held for a pick's new session: it does not say them
      for (const h of held) logEvent(`cancelled (interrupt): ${heldName(h)}`);
      held = [];
      if ($("alert").dataset.kind === "queued") clearAlert(); // ("Queued already…" is not true now)
      setControls(tm.connected);
    }
    if (!tm.connected) return;
    tm.interrupts.push({ pressed: performance.now() });
    for (const job of fileSends) job.stopped = true; // the rest of an interrupted file is not sent
    if (mic) toggleMic(); // (its turn is interrupted: what it still records would go nowhere)
    send({ interrupt: {} });
    logEvent("interrupt");
  }

  // A new turn (text "t…", audio "a…") starts: the alert of an earlier turn (a failed audio file,
  // a refused text) has had its say; one about the session itself stays until the session is back.
  function newTurn(prefix) {
    unmute();
    turnCounter += 1;
    const id = `${prefix}${turnCounter}`;
    turn(id).pressed = performance.now();
    if ($("alert").dataset.kind !== "session") clearAlert();
    return id;
  }

  // The caption under the video: the clause of the text turn being spoken, one cue at a time, each
  // replacing the one before ("" hides it; an audio turn has none). #caption is a polite live
  // region: a screen reader says each cue once. A `caption` event comes with the media of the frame
  // its clause starts in, which plays a moment later (the page plays behind the live edge): it
  // waits in `cues` until that frame is painted (showCues, from onFrame), and is dropped if its
  // turn stopped before that frame (cut); before the session's first painted frame it is shown at
  // once. A turn's last words stay CAPTION_LINGER_MS after its last frame is painted, unless another
  // turn's caption comes.
  let captionTurn = "";
  let captionTimer = null; // the caption of a turn that stopped, until it goes (CAPTION_LINGER_MS)
  const cues = []; // caption events whose frame has not been painted yet, in order
  let sessionPainted = false; // a frame of this session was painted (else there is no playhead to wait for)
  function showCaption(text, turnId = "") {
    clearTimeout(captionTimer);
    captionTimer = null;
    captionTurn = text ? turnId : "";
    const caption = $("caption");
    caption.textContent = text;
    // (a keyboard user scrolling it keeps it, emptied: hidden, it would drop their focus to <body>;
    // it goes when the focus leaves)
    caption.hidden = !text && document.activeElement !== caption;
  }
  $("caption").addEventListener("focusout", () => {
    if (!$("caption").textContent) $("caption").hidden = true;
  });
  function cueCaption(cue, frame) {
    if (sessionPainted) cues.push({ text: cue.text || "", turnId: cue.turn_id, frame });
    else showCaption(cue.text || "", cue.turn_id);
  }
  // Every painted frame (its media time `t`): the cues it reaches, and the linger of a turn that ended.
  function showCues(t) {
    while (cues.length && t >= frameTime(cues[0].frame) - 0.001) {
      const cue = cues.shift();
      const turn = tm.turns[cue.turnId];
      if (turn && (turn.stopFrame == null || cue.frame < turn.stopFrame)) showCaption(cue.text, cue.turnId);
    }
    const shown = captionTurn && tm.turns[captionTurn];
    if (shown && shown.stopFrame != null && t >= frameTime(shown.stopFrame) - 0.001) lingerCaption();
  }
  // The shown turn's last frame has played: its caption goes CAPTION_LINGER_MS later.
  function lingerCaption() {
    if (captionTimer !== null) return;
    const id = captionTurn;
    captionTimer = setTimeout(() => {
      if (captionTurn === id) showCaption("");
    }, CAPTION_LINGER_MS);
  }

  function showError(message) {
    tm.errors.push({ message });
    logEvent(`error: ${message}`);
    showAlert(message.charAt(0).toUpperCase() + message.slice(1));
  }

  // Audio turns: mono s16le PCM chunks of 100 ms after a JSON `audio` message naming the turn.
  const AUDIO_RATE = 16000;
  let audioTurnSent = ""; // the turn the last `audio` message on this socket named (binary frames go to it)
  function sendPcm(turnId, floats, final) {
    const step = AUDIO_RATE / 10;
    if (turnId !== audioTurnSent && send({ audio: { turn_id: turnId, sample_rate: AUDIO_RATE } })) {
      audioTurnSent = turnId; // a file and the microphone (or two files) interleave their chunks
    }
    for (let i = 0; i < floats.length; i += step) {
      const part = floats.subarray(i, Math.min(floats.length, i + step));
      const pcm = new Int16Array(part.length);
      for (let j = 0; j < part.length; j++) pcm[j] = Math.max(-1, Math.min(1, part[j])) * 0x7fff;
      if (ws && ws.readyState === WebSocket.OPEN) ws.send(pcm.buffer);
    }
    if (final) send({ end_of_turn: { turn_id: turnId } });
  }

  // An audio file goes at most AUDIO_AHEAD seconds ahead of real time (its first seconds at once,
  // then as they play): a session's messages are read in order, so audio sent far ahead would hold
  // an interrupt back behind it (README, "Live sessions"). An interrupt stops what is left.
  const AUDIO_AHEAD = knob("audio_ahead", 5);
  const fileSends = new Set(); // {stopped} of the audio files being sent
  async function sendFile(turnId, floats) {
    const step = AUDIO_RATE / 10;
    const socket = ws;
    const began = performance.now();
    const job = { turnId, stopped: false };
    fileSends.add(job);
    try {
      for (let i = 0; i < floats.length; i += step) {
        const ahead = i / AUDIO_RATE - (performance.now() - began) / 1000;
        if (ahead > AUDIO_AHEAD) await new Promise((r) => setTimeout(r, (ahead - AUDIO_AHEAD) * 1000));
        if (job.stopped || ws !== socket) return;
        sendPcm(turnId, floats.subarray(i, Math.min(floats.length, i + step)), false);
      }
      send({ end_of_turn: { turn_id: turnId } });
    } finally {
      fileSends.delete(job);
    }
  }

  function startAudioTurn() {
    if (!tm.connected) throw new Error("not sent: there is no live session right now");
    const id = newTurn("a");
    if (send({ audio: { turn_id: id, sample_rate: AUDIO_RATE } })) audioTurnSent = id;
    return id;
  }

  async function sendAudioFile(name, samples) {
    const id = startAudioTurn();
    logEvent(`audio turn ${id}: ${name}, ${(samples.length / AUDIO_RATE).toFixed(1)} s`);
    await sendFile(id, samples);
  }

  async function audioFile(file) {
    try {
      const bytes = await file.arrayBuffer();
      const decoder = new AudioContext();
      const decoded = await decoder.decodeAudioData(bytes).finally(() => decoder.close());
      const frames = Math.ceil(decoded.duration * AUDIO_RATE);
      const off = new OfflineAudioContext(1, frames, AUDIO_RATE);
      const src = off.createBufferSource();
      src.buffer = decoded;
      src.connect(off.destination);
      src.start();
      const samples = (await off.startRendering()).getChannelData(0);
      const live = tm.connected && ws && ws.readyState === WebSocket.OPEN;
      if ((pickRestart || (pickPending && live)) && !accessRefused) {
        // a voice or avatar picked while the file decoded: as with Speak, the pick applies first
        // and the new session says the file (the old one would be cut by the pick's restart)
        if (pickPending) connect("picker");
        held.push({ file: file.name, samples });
        logEvent(`audio file ${file.name}: the voice or avatar just picked applies first, then the new session says it`);
        setControls(tm.connected); // (Interrupt can cancel it)
        return;
      }
      await sendAudioFile(file.name, samples);
    } catch (err) {
      showError(`audio file ${file.name}: ${err.message}`);
    }
  }

  let mic = null;
  let micOpening = false; // until the microphone is open (or refused)
  async function toggleMic() {
    const button = $("mic");
    if (mic) {
      mic.stop();
      mic = null;
      button.textContent = "Start microphone"; // (the label says what a press does: no aria-pressed too)
      return;
    }
    if (micOpening) return;
    micOpening = true; // (the button keeps the focus: a second press stops the microphone)
    setAvailable(button, false);
    let stream = null;
    let ctx = null;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      ctx = new AudioContext({ sampleRate: AUDIO_RATE });
      const source = ctx.createMediaStreamSource(stream);
      const node = ctx.createScriptProcessor(2048, 1, 1);
      const id = startAudioTurn();
      const record = { turnId: id, chunks: 0, samples: 0, peak: 0 };
      tm.mics.push(record);
      node.onaudioprocess = (e) => {
        const pcm = new Float32Array(e.inputBuffer.getChannelData(0));
        record.chunks += 1;
        record.samples += pcm.length;
        for (const x of pcm) record.peak = Math.max(record.peak, Math.abs(x));
        sendPcm(id, pcm, false);
      };
      source.connect(node);
      node.connect(ctx.destination);
      mic = {
        stop() {
          node.onaudioprocess = null;
          node.disconnect();
          source.disconnect();
          stream.getTracks().forEach((t) => t.stop());
          ctx.close();
          send({ end_of_turn: { turn_id: id } });
        },
      };
      button.textContent = "Stop microphone";
    } catch (err) {
      if (!mic) { // the microphone was opened but the turn could not start: close it again
        if (stream) stream.getTracks().forEach((t) => t.stop());
        if (ctx) ctx.close();
      }
      showError(`microphone: ${err.message}`);
    } finally {
      micOpening = false;
      setAvailable(button, !!mic || (tm.connected && !pickPending));
    }
  }

  // -- pickers and upload -------------------------------------------------------------------------
  async function getJson(url) {
    const used = accessToken;
    const resp = await fetch(url, { headers: withToken() });
    const denied = await accessError(resp);
    if (denied) throw Object.assign(new Error(denied.message), { access: denied, used });
    const body = await resp.json();
    if (!resp.ok) throw new Error(body.error ? body.error.message : resp.statusText);
    return body;
  }

  // The pickers, then the session (not while the access token is refused).
  async function start(selectAvatar) {
    if ((await loadPickers(selectAvatar)) === "again") return start(selectAvatar); // a new token came meanwhile
    if (!accessRefused) connect();
  }

  async function loadPickers(selectAvatar) {
    try {
      const [{ avatars = [] }, { voices = [] }] = await Promise.all([getJson("/v1/avatars"), getJson("/v1/voices")]);
      // "" is whichever avatar the server is set to use (the bundled one is listed as "default")
      fill($("avatar-select"), [{ id: "", label: "(the server's default)" }].concat(
        avatars.map((a) => ({ id: a.id, label: `${(a.names || []).join(", ") || a.name || a.id} (${a.width}×${a.height})` }))), selectAvatar);
      fill($("voice-select"), [{ id: "", label: "(the server's default)" }].concat(
        voices.map((v) => ({ id: v.id, label: `${v.name || v.id} (${v.language || "?"})` }))));
    } catch (err) {
      if (err.access && err.used !== accessToken) return "again";
      if (err.access) refuseAccess(err.access);
      else showError(`lists: ${err.message}`);
    }
  }

  function fill(select, items, selected) {
    const keep = selected ?? select.value;
    select.replaceChildren(...items.map((it) => new Option(it.label, it.id)));
    if (items.some((it) => it.id === keep)) select.value = keep;
    showWhole(select);
  }

  // A long voice or avatar name is cut off in a closed picker: the whole of it is its tooltip.
  function showWhole(select) {
    select.title = select.selectedOptions.length ? select.selectedOptions[0].text : "";
  }

  // What an upload's answer (AvatarInfo as JSON: zero values absent, and the edge's `warnings`
  // and `notes`) tells the user: the avatar's other names (the same file uploaded before under
  // another name: both names work), for a video on how many frames the face was found, the others
  // being shown without lip-sync, the notes (the server framed the picture to the head and
  // shoulders) and the warnings (a face too small to see it speak, as the CLI says it).
  function uploadMessage(avatar, warnings = [], notes = []) {
    const name = avatar.name || avatar.id;
    let text = `avatar “${name}” is ready`;
    const others = (avatar.names || []).filter((n) => n !== name);
    if (others.length) text += ` (also named ${others.map((n) => `“${n}”`).join(", ")})`;
    const face = avatar.face || {};
    const kept = Number(face.frames_kept || 0);
    const rejected = Number(face.frames_rejected || 0);
    if (Number(avatar.frame_count || 0) > 1 && rejected) {
      text += `. The face was found on ${kept} of ${kept + rejected} frames: the ${rejected} frame(s) ` +
        "without a face are shown as they are, without lip-sync (trim them from the video to avoid it).";
    }
    for (const warning of notes.concat(warnings)) {
      text = `${text.replace(/\.$/, "")}. ${warning.charAt(0).toUpperCase()}${warning.slice(1).replace(/\.?$/, ".")}`;
    }
    return text;
  }
  tm.uploadMessage = uploadMessage;

  // A failed upload is said once, by the alert: the status under the drop zone shows it too, hidden
  // from screen readers (it is a live region as well, which would read it a second time).
  function uploadFailed(text) {
    const status = $("upload-status");
    status.classList.add("error");
    const shown = Object.assign(document.createElement("span"), { textContent: text });
    shown.setAttribute("aria-hidden", "true");
    status.replaceChildren(shown);
    showAlert(text, "upload");
  }

  function upload(file) {
    const status = $("upload-status");
    if (mayNot("avatars")) {
      uploadFailed(`Upload failed (${file.name}): your access does not include adding avatars`);
      return;
    }
    const bar = $("upload-progress");
    status.classList.remove("error");
    status.textContent = `uploading ${file.name}…`;
    bar.value = 0;
    const record = { name: file.name, size: file.size, progress: [], ok: null };
    tm.uploads.push(record);
    const form = new FormData();
    form.append("name", file.name.replace(/\.[^.]*$/, ""));
    form.append("framing", $("framing").value);
    form.append("file", file, file.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/avatars");
    if (accessToken) xhr.setRequestHeader("Authorization", `Bearer ${accessToken}`);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) {
        bar.value = (100 * e.loaded) / e.total;
        record.progress.push(bar.value);
      }
    };
    xhr.onload = () => {
      let body = {};
      try {
        body = JSON.parse(xhr.responseText);
      } catch (_) { /* not JSON: described below */ }
      if (xhr.status >= 200 && xhr.status < 300 && body.avatar) {
        bar.value = 100;
        record.ok = body.avatar.id;
        status.textContent = uploadMessage(body.avatar, body.warnings || [], body.notes || []);
        if ($("alert").dataset.kind === "upload") clearAlert(); // an earlier upload's failure
        start(body.avatar.id);
      } else {
        const err = body.error || {};
        record.ok = false;
        // "renderer: data: no face found ..." is said of the file: "Upload failed (me.jpg): no face found ..."
        const reason = (err.message || xhr.statusText || `HTTP ${xhr.status}`).replace(/^renderer: /, "").replace(/^(data|file|meta\.filename): /, "");
        uploadFailed(`Upload failed (${file.name}): ${reason}`);
        bar.value = 0;
      }
    };
    xhr.onerror = () => uploadFailed("Upload failed: the server could not be reached");
    xhr.send(form);
  }

  // The whole utterance as a seekable MP4 (POST /v1/speak), saved by the browser.
  let downloading = false;
  async function download() {
    const button = $("download");
    if (downloading) return;
    downloading = true;
    setAvailable(button, false);
    button.textContent = "Preparing the MP4…";
    const started = performance.now();
    try {
      const body = { text: $("text").value.trim() };
      if ($("avatar-select").value) body.avatar_id = $("avatar-select").value;
      if ($("voice-select").value) body.voice = $("voice-select").value;
      body.output = { idle_motion: idleMotion() };
      const used = accessToken;
      const resp = await fetch("/v1/speak", {
        method: "POST", headers: withToken({ "Content-Type": "application/json" }), body: JSON.stringify(body),
      });
      const denied = await accessError(resp);
      if (denied && resp.status === 401 && used === accessToken) {
        refuseAccess(denied);
        return;
      }
      if (denied && used !== accessToken) throw new Error("your access was renewed meanwhile: press Download again");
      if (denied) throw new Error("your access does not include downloads"); // (403: the token's scope)
      if (!resp.ok) {
        // (a proxy's error page is not JSON)
        const err = ((await resp.json().catch(() => ({}))).error) || {};
        throw new Error(err.message || `the server answered ${resp.status} ${resp.statusText}`.trim());
      }
      const blob = await resp.blob();
      const stages = (resp.headers.get("X-Talkmesh-Stages") || "").split(", ").filter(Boolean);
      const items = [`whole MP4 in ${Math.round(performance.now() - started)} ms`].concat(stages);
      $("stages").replaceChildren(...items.map((text) => Object.assign(document.createElement("li"), { textContent: text })));
      const a = Object.assign(document.createElement("a"), { href: URL.createObjectURL(blob), download: "talkmesh.mp4" });
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    } catch (err) {
      // fetch's own TypeError ("Failed to fetch"): no answer at all
      showError(`download: ${err instanceof TypeError ? "the server could not be reached" : err.message}`);
    } finally {
      downloading = false;
      setAvailable(button, true);
      button.textContent = "Download as MP4";
      applyScopes(); // (a token renewed meanwhile may leave Download out)
    }
  }

  // -- wiring -----------------------------------------------------------------------------------
  // A control that is aria-disabled (setAvailable) ignores clicks, and so Enter and Space on it (a
  // file input's chooser does not open).
  document.addEventListener("click", (e) => {
    if (e.target instanceof Element && e.target.closest('[aria-disabled="true"]')) {
      e.preventDefault();
      e.stopImmediatePropagation();
    }
  }, true);
  $("speak").addEventListener("click", speak);
  $("interrupt").addEventListener("click", interrupt);
  $("download").addEventListener("click", download);
  $("unmute").addEventListener("click", toggleSound);
  $("text").addEventListener("input", countText);
  $("text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) speak();
  });
  // Escape interrupts, from anywhere on the page (an open <select> keeps its own Escape).
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && !e.defaultPrevented && !(e.target instanceof HTMLSelectElement)) interrupt();
  });
  // A picker's choice restarts the session once it has settled (PICK_SETTLE_MS after the last
  // change), not at every step. Arrow keys (Home, End, Page Up/Down, type-ahead) on a closed picker
  // change it at each press, and someone listening to each of 138 voices takes longer than that
  // per step: such a change applies on Enter, when the picker loses focus, or KEY_SETTLE_MS after
  // the last key. (The motion toggle's changes settle as a choice in the open list does.)
  function settled(reason, delay = PICK_SETTLE_MS, then = () => connect(reason)) {
    clearTimeout(pickTimer);
    if (accessRefused) return; // nothing connects until a new token comes
    pickTimer = setTimeout(then, delay);
  }
  for (const select of [$("avatar-select"), $("voice-select")]) {
    let stepping = false; // the last key pressed on it moves the choice
    select.addEventListener("keydown", (e) => {
      stepping = !e.altKey && (/^(Arrow|Home$|End$|Page)/.test(e.key) || (e.key.length === 1 && e.key !== " "));
      if (e.key === "Enter" && keyPick) settled("picker", 0);
    });
    select.addEventListener("change", () => {
      showWhole(select);
      keyPick = stepping;
      pickPending = true;
      setControls(tm.connected); // (the audio turns wait for it to apply)
      settled("picker", stepping ? KEY_SETTLE_MS : PICK_SETTLE_MS);
      stepping = false;
    });
    select.addEventListener("blur", () => {
      stepping = false;
      if (keyPick) settled("picker", 0);
    });
    // a key that moved nothing (an arrow at the end of the list) leaves `stepping` set: a pick
    // with the pointer after it is a pointer's, settled in PICK_SETTLE_MS, not KEY_SETTLE_MS
    for (const type of ["pointerdown", "mousedown"]) select.addEventListener(type, () => (stepping = false));
  }
  $("motion").addEventListener("click", toggleMotion);
  $("audio-file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    e.target.value = ""; // the same file may be chosen again
    if (file) audioFile(file);
  });
  $("mic").addEventListener("click", toggleMic);
  const drop = $("drop");
  const picker = $("avatar-file");
  drop.addEventListener("click", () => picker.click());
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      picker.click();
    }
  });
  picker.addEventListener("change", () => {
    const file = picker.files[0];
    picker.value = ""; // the same file may be chosen again (a fixed one of the same name)
    if (file) upload(file);
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => {
      e.preventDefault(); // this element accepts the drop
      if (e.dataTransfer) e.dataTransfer.dropEffect = "copy";
      drop.classList.add("over");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) upload(file);
    else showError("drop: no file in what was dropped");
  });
  video.addEventListener("waiting", () => {
    tm.waiting += 1;
    if (audioPath) audioPath.hold();
  });
  for (const type of ["seeking", "pause"]) video.addEventListener(type, () => audioPath && audioPath.hold());
  video.addEventListener("volumechange", () => audioPath && audioPath.syncMuted());
  video.addEventListener("seeked", () => {
    if (seekingTurn) seekingTurn.seekedAt = performance.now();
    seekingTurn = null;
  });
  video.addEventListener("error", () => {
    const err = video.error;
    showError(`video: the browser could not play the stream (${err ? err.message || `code ${err.code}` : "unknown"})`);
  });
  tm.upload = upload;
  tm.speak = speak;
  tm.interrupt = interrupt;
  tm.frameTime = frameTime;
  // audio=webaudio: a turn's first sound minus its first frame, in media time (s; null: not known)
  tm.audioScheduledAfter = (media) => (audioPath ? audioPath.scheduledSoundAfter(media) : null);
  tm.audioOnset = (id) => (audioPath && tm.turns[id] && tm.turns[id].startFrame != null
    ? audioPath.onsetAfter(frameTime(tm.turns[id].startFrame)) : null);

  video.requestVideoFrameCallback(onFrame);
  setInterval(() => {
    keepLive();
    trueDelay();
  }, 100);
  setInterval(() => trim(false), 5000);
  applyScopes();
  start();
})();

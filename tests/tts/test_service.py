"""The TTS service through gRPC: streaming, sample-exact output, visemes, streamed input, errors."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

import grpc
import numpy as np
import pytest

from services.tts.backends.base import VoiceSettings
from services.tts.main import create_service, load_config
from services.tts.service import WARMUP_TEXT
from services.tts.text import split_clauses
from talkmesh.common.config import ConfigError
from talkmesh.common.registry import spec
from talkmesh.common.telemetry import Telemetry
from talkmesh.v1 import common_pb2, tts_pb2
from tests.tts.conftest import default_config, pcm_of, serve_tts, visemes_of

SENTENCE = "Bob saw a map of Paris, then Pam baked a pie."


async def collect(call: Any) -> list[common_pb2.AudioChunk]:
    return [c async for c in call]


async def reference(texts: list[str], settings: VoiceSettings | None = None) -> np.ndarray:
    """The same engine settings, driven directly: a fresh service's backend, clause by clause."""
    service = create_service(default_config(), Telemetry("tts-reference"))
    await service.start()
    try:
        backend = service.backends["espeak"]  # type: ignore[attr-defined]
        voice = backend.voice("en-us")
        out = []
        for text in texts:
            async with contextlib.aclosing(backend.synthesize(text, voice, settings or VoiceSettings())) as it:
                out.extend([b.samples async for b in it])
        return np.concatenate(out)
    finally:
        await service.stop()


def check_stream_shape(chunks: list[common_pb2.AudioChunk], rid: str, chunk_samples: int) -> None:
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert all(c.request_id == rid for c in chunks)
    assert chunks[-1].end_of_stream and not any(c.end_of_stream for c in chunks[:-1])
    offset = 0
    for c in chunks:
        assert c.sample_rate == 22050
        assert c.sample_offset == offset  # continuous, no gaps, no overlaps
        assert len(c.pcm) <= 2 * chunk_samples
        offset += len(c.pcm) // 2
    segs = [c.segment_index for c in chunks]
    assert segs == sorted(segs)


async def test_one_sentence_equals_whole_text_synthesis_sample_for_sample(tts: Any) -> None:
    stub, _, _ = tts
    text = "Pam met Max at the bank."
    chunks = await collect(
        stub.Synthesize(tts_pb2.SynthesizeRequest(config=tts_pb2.SynthesisConfig(request_id="r1"), text=text))
    )
    check_stream_shape(chunks, "r1", 882)
    assert len(chunks) > 10  # ~40 ms chunks, streamed
    streamed = pcm_of(chunks)
    whole = await reference([text])
    np.testing.assert_array_equal(streamed, whole)


async def test_clauses_are_synthesized_in_order_and_join_without_gaps(tts: Any) -> None:
    stub, _, _ = tts
    text = "Hello there, Bob! Pam met Max. It is 3.5 degrees; cold."
    clauses = split_clauses(text)
    assert len(clauses) == 5
    chunks = await collect(stub.Synthesize(tts_pb2.SynthesizeRequest(text=text)))
    check_stream_shape(chunks, chunks[0].request_id, 882)
    streamed = pcm_of(chunks)
    # Documented joins: each clause is one eSpeak utterance; the clauses follow each other with no
    # gap on one sample clock, so the stream is the clause-by-clause synthesis sample for sample.
    np.testing.assert_array_equal(streamed, await reference(clauses))
    assert {c.segment_index for c in chunks} == set(range(5))
    # Each join sits in eSpeak's clause-final pause: silence on both sides, no click.
    starts = [next(c.sample_offset for c in chunks if c.segment_index == i) for i in range(1, 5)]
    for s in starts:
        x = streamed.astype(np.int32)
        assert np.abs(x[s - 200 : s + 1]).max() < 300  # the clause before ends in silence
        assert np.abs(np.diff(x[s - 10 : s + 10])).max() < 1000  # no step at the join
    # The first clause was sent before later clauses (streaming order).
    assert chunks[0].segment_index == 0


async def test_viseme_track_covers_audio_in_order_with_closed_lips_on_p_b_m(tts: Any) -> None:
    stub, _, _ = tts
    chunks = await collect(stub.Synthesize(tts_pb2.SynthesizeRequest(text=SENTENCE)))
    total = len(pcm_of(chunks))
    vis = visemes_of(chunks)
    # Tiles [0, total): ordered, contiguous, non-empty.
    assert vis[0].start_sample == 0 and vis[-1].end_sample == total
    for a, b in itertools.pairwise(vis):
        assert a.end_sample == b.start_sample
    assert all(v.end_sample > v.start_sample for v in vis)
    # Each viseme travels with (or before) the chunk its audio starts in.
    sent_at: dict[int, int] = {}
    for c in chunks:
        for v in c.visemes:
            sent_at[v.start_sample] = c.sample_offset
    for v in vis:
        assert sent_at[v.start_sample] <= v.start_sample
    # "Bob saw a map of Paris, then Pam baked a pie." -> b b, m p, p, p m, b, p: 9 closures.
    labials = [v for v in vis if v.phoneme.strip("ˈˌ") in ("p", "b", "m")]
    assert [v.phoneme for v in labials] == ["b", "b", "m", "p", "p", "p", "m", "b", "p"]
    assert all(v.viseme == common_pb2.VISEME_CLOSED for v in labials)
    # Closures really are quiet: the mouth is shut while the lips are closed (stop gap).
    pcm = pcm_of(chunks).astype(np.float64)
    loud = np.sqrt(np.mean(pcm**2))
    quiet = [np.sqrt(np.mean(pcm[v.start_sample : v.end_sample] ** 2)) for v in labials if v.phoneme in ("p", "b")]
    assert np.median(quiet) < loud


async def test_streamed_text_input_speaks_before_the_text_ends() -> None:
    async with serve_tts(default_config(stream_flush_seconds=0.0)) as tts:  # punctuation only here
        await _streamed_text_input_speaks_before_the_text_ends(tts)


async def _streamed_text_input_speaks_before_the_text_ends(tts: Any) -> None:
    stub, _, _ = tts
    pieces: asyncio.Queue[tts_pb2.TextPiece | None] = asyncio.Queue()

    async def requests() -> Any:
        while (p := await pieces.get()) is not None:
            yield p

    call = stub.SynthesizeStream(requests())
    await pieces.put(tts_pb2.TextPiece(seq=0, config=tts_pb2.SynthesisConfig(request_id="llm")))
    for i, tok in enumerate(["Hel", "lo the", "re, my fr"]):
        await pieces.put(tts_pb2.TextPiece(seq=i + 1, text=tok))
    first = await asyncio.wait_for(call.read(), 30)  # hang guard, not a timing assertion
    assert first.request_id == "llm" and first.segment_index == 0 and len(first.pcm) > 0
    # Only now do the last pieces arrive.
    await pieces.put(tts_pb2.TextPiece(seq=4, text="iend. Bye"))
    await pieces.put(tts_pb2.TextPiece(seq=5, text=".", end_of_stream=True))
    await pieces.put(None)
    rest = []
    while (msg := await call.read()) is not grpc.aio.EOF:
        rest.append(msg)
    chunks = [first, *rest]
    check_stream_shape(chunks, "llm", 882)
    assert {c.segment_index for c in chunks} == {0, 1, 2}  # "Hello there," "my friend." "Bye."
    np.testing.assert_array_equal(pcm_of(chunks), await reference(["Hello there,", "my friend.", "Bye."]))


async def test_chunk_size_rate_and_volume_settings(tts: Any) -> None:
    stub, _, _ = tts
    text = "Settings change the sound."

    async def run(**settings: float) -> np.ndarray:
        cfg = tts_pb2.SynthesisConfig(chunk_ms=20, settings=tts_pb2.VoiceSettings(**settings))
        chunks = await collect(stub.Synthesize(tts_pb2.SynthesizeRequest(config=cfg, text=text)))
        check_stream_shape(chunks, chunks[0].request_id, 441)
        return pcm_of(chunks).astype(np.float64)

    normal, fast, quiet = await run(), await run(rate=2.0), await run(volume=0.5)
    assert len(fast) < 0.75 * len(normal)
    assert np.sqrt(np.mean(quiet**2)) < 0.7 * np.sqrt(np.mean(normal**2))


async def test_chunks_grow_to_max_chunk_ms_and_audio_is_unchanged(tts: Any) -> None:
    """max_chunk_ms: 200 ms first, then 400, 800, 800... (a clause's last chunk is its remainder)."""
    stub, _, _ = tts
    text = "A first clause that runs for a while, and a second one that also takes its time to say."
    cfg = tts_pb2.SynthesisConfig(chunk_ms=200, max_chunk_ms=800)
    grown = await collect(stub.Synthesize(tts_pb2.SynthesizeRequest(config=cfg, text=text)))
    # the same text again (a cache replay, through the same assembler) in fixed 200 ms chunks
    fixed = await collect(
        stub.Synthesize(tts_pb2.SynthesizeRequest(config=tts_pb2.SynthesisConfig(chunk_ms=200), text=text))
    )
    check_stream_shape(grown, grown[0].request_id, 17640)
    np.testing.assert_array_equal(pcm_of(grown), pcm_of(fixed))
    assert visemes_of(grown) == visemes_of(fixed)
    sizes = [len(c.pcm) // 2 for c in grown if c.pcm]
    assert sizes[:3] == [4410, 8820, 17640]
    # every chunk is a step of the schedule, or the remainder that ends its clause
    steps = {4410, 8820, 17640}
    audio = [c for c in grown if c.pcm]
    for i, c in enumerate(audio):
        ends_clause = i + 1 == len(audio) or audio[i + 1].segment_index != c.segment_index
        assert len(c.pcm) // 2 in steps or ends_clause
    assert len(audio) < len([c for c in fixed if c.pcm]) / 2


@pytest.mark.parametrize(("max_ms", "longest"), [(100, 4410), (5000, 22050)])
async def test_max_chunk_ms_is_clamped_to_chunk_ms_and_the_service_limit(tts: Any, max_ms: int, longest: int) -> None:
    """Below chunk_ms: fixed 200 ms chunks; above the service's max_chunk_ms (1000): up to 1 s."""
    stub, _, _ = tts
    text = "One long clause that keeps going for quite a while so that the chunks can grow to their limit."
    cfg = tts_pb2.SynthesisConfig(chunk_ms=200, max_chunk_ms=max_ms)
    chunks = await collect(stub.Synthesize(tts_pb2.SynthesizeRequest(config=cfg, text=text)))
    sizes = [len(c.pcm) // 2 for c in chunks if c.pcm]
    assert max(sizes) == longest, sizes


async def test_cache_serves_identical_requests(tts: Any) -> None:
    stub, service, _ = tts
    req = tts_pb2.SynthesizeRequest(text="Cache me if you can.")
    first = await collect(stub.Synthesize(req))
    second = await collect(stub.Synthesize(req))
    audio = lambda cs: [(c.seq, c.sample_offset, c.pcm, c.segment_index, c.end_of_stream) for c in cs]  # noqa: E731
    assert len(first) > 5 and audio(first) == audio(second)
    # A replay knows every viseme up front and sends them with the first chunk (earlier is allowed).
    assert visemes_of(first) == visemes_of(second)
    assert list(second[0].visemes) == visemes_of(second)
    reg = service.telemetry.metrics.registry
    hits = reg.get_sample_value(
        "talkmesh_cache_requests_total", {"service": "tts", "cache": "utterance", "result": "hit"}
    )
    misses = reg.get_sample_value(
        "talkmesh_cache_requests_total", {"service": "tts", "cache": "utterance", "result": "miss"}
    )
    assert (hits, misses) == (1.0, 1.0)
    assert len(service.servicer.cache) == 1


async def test_list_voices(tts: Any) -> None:
    stub, _, _ = tts
    voices = (await stub.ListVoices(tts_pb2.ListVoicesRequest())).voices
    ids = {v.id for v in voices}
    assert {"espeak:en-us", "espeak:de", "espeak:fr-fr"} <= ids
    assert all(v.engine == "espeak" and v.sample_rate == 22050 for v in voices)
    # the voice a request without one speaks with (default_voice) is marked, once, also when asked for
    assert [v.id for v in voices if v.default] == ["espeak:en-us"]
    asked = (await stub.ListVoices(tts_pb2.ListVoicesRequest(voice="espeak:EN_US"))).voices
    assert [(v.id, v.default) for v in asked] == [("espeak:en-us", True)]
    other = (await stub.ListVoices(tts_pb2.ListVoicesRequest(voice="espeak:de"))).voices
    assert [(v.id, v.default) for v in other] == [("espeak:de", False)]


async def test_other_voice_and_ssml_like_text_are_spoken(tts: Any) -> None:
    stub, _, _ = tts
    cfg = tts_pb2.SynthesisConfig(voice="espeak:de")
    de = pcm_of(await collect(stub.Synthesize(tts_pb2.SynthesizeRequest(config=cfg, text="Guten Tag."))))
    assert len(de) > 5000
    tagged = '<speak><prosody rate="x-fast">Hi</prosody> & <break time="9s"/></speak>'
    chunks = await collect(stub.Synthesize(tts_pb2.SynthesizeRequest(text=tagged)))
    assert chunks[-1].end_of_stream and len(pcm_of(chunks)) > 0


@pytest.mark.parametrize(
    ("request_kwargs", "code", "field"),
    [
        ({"text": ""}, grpc.StatusCode.INVALID_ARGUMENT, "text"),
        ({"text": "x" * 5001}, grpc.StatusCode.INVALID_ARGUMENT, "text"),
        ({"text": "ring\x07"}, grpc.StatusCode.INVALID_ARGUMENT, "text"),
        ({"text": "hi", "config": {"voice": "espeak:no-such-voice"}}, grpc.StatusCode.NOT_FOUND, "config.voice"),
        ({"text": "hi", "config": {"voice": "festival:kal"}}, grpc.StatusCode.NOT_FOUND, "config.voice"),
        ({"text": "hi", "config": {"settings": {"rate": 9}}}, grpc.StatusCode.INVALID_ARGUMENT, "config.settings.rate"),
        (
            {"text": "hi", "config": {"settings": {"pitch": float("nan")}}},
            grpc.StatusCode.INVALID_ARGUMENT,
            "config.settings.pitch",
        ),
        (
            {"text": "hi", "config": {"settings": {"volume": -1}}},
            grpc.StatusCode.INVALID_ARGUMENT,
            "config.settings.volume",
        ),
        ({"text": "hi", "config": {"chunk_ms": 100000}}, grpc.StatusCode.INVALID_ARGUMENT, "config.chunk_ms"),
    ],
)
async def test_bad_input(tts: Any, request_kwargs: dict[str, Any], code: grpc.StatusCode, field: str) -> None:
    stub, _, _ = tts
    cfg = request_kwargs.pop("config", {})
    settings = cfg.pop("settings", None)
    config = tts_pb2.SynthesisConfig(**cfg, settings=tts_pb2.VoiceSettings(**(settings or {})))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await collect(stub.Synthesize(tts_pb2.SynthesizeRequest(config=config, **request_kwargs)))
    assert exc.value.code() == code
    assert (exc.value.details() or "").startswith(field)
    # The service is still fine afterwards.
    ok = await collect(stub.Synthesize(tts_pb2.SynthesizeRequest(text="Still here.")))
    assert ok[-1].end_of_stream


async def test_invalid_utf8_names_the_field(tts: Any) -> None:
    _, _, host = tts
    from talkmesh.common.channel import create_channel

    channel = create_channel(host.address)
    try:
        raw = channel.unary_stream(
            "/talkmesh.v1.TTS/Synthesize",
            request_serializer=lambda b: b,
            response_deserializer=common_pb2.AudioChunk.FromString,
        )
        for payload, field in ((b"\x12\x03a\xff\xfe", "text"), (b"\x0a\x04\x12\x02\xc3\x28\x12\x02hi", "config.voice")):
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await collect(raw(payload))
            assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (exc.value.details() or "").startswith(field)
    finally:
        await channel.close()


async def test_stream_errors(tts: Any) -> None:
    stub, _, _ = tts

    async def run(*pieces: tts_pb2.TextPiece) -> grpc.aio.AioRpcError:
        async def gen() -> Any:
            for p in pieces:
                yield p

        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await collect(stub.SynthesizeStream(gen()))
        return exc.value

    cfg = tts_pb2.SynthesisConfig()
    err = await run(tts_pb2.TextPiece(text="no config first"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("config")
    err = await run(tts_pb2.TextPiece(config=cfg), tts_pb2.TextPiece(end_of_stream=True))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("text")
    err = await run(tts_pb2.TextPiece(config=cfg), tts_pb2.TextPiece(text="ok. bad\x1b"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("text")
    err = await run(tts_pb2.TextPiece(config=tts_pb2.SynthesisConfig(voice="espeak:nope")))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_concurrent_requests_are_all_correct(tts: Any) -> None:
    stub, _, _ = tts
    texts = ["One, two.", "Three four five.", "Six, seven, eight."]
    results = await asyncio.gather(
        *(
            collect(stub.Synthesize(tts_pb2.SynthesizeRequest(config=tts_pb2.SynthesisConfig(request_id=t), text=t)))
            for t in texts
        )
    )
    for t, chunks in zip(texts, results, strict=True):
        check_stream_shape(chunks, t, 882)
        assert max(c.segment_index for c in chunks) == len(split_clauses(t)) - 1


def test_config_defaults_and_env_overrides() -> None:
    cfg = load_config(env={})
    assert (cfg.server.port, cfg.server.metrics_port) == spec("tts").ports()
    assert cfg.default_voice == "espeak:en-us"
    assert (cfg.max_text_chars, cfg.chunk_ms) == (5000, 40)
    cfg = load_config(env={"TALKMESH_TTS__CHUNK_MS": "20", "TALKMESH_TTS__PIPER__VOICES_DIR": "/v"})
    assert cfg.chunk_ms == 20 and cfg.piper.voices_dir == "/v"
    with pytest.raises(ConfigError):
        load_config(env={"TALKMESH_TTS__CHUNK_MS": "0"})
    # the engines a voice id may name are the registry's (one list, read by config and docs)
    expected = r"default_voice: must look like <engine>:<name>, the engine one of espeak, piper"
    for voice in ("en-us", "festival:en"):
        with pytest.raises(ConfigError, match=expected):
            load_config(env={"TALKMESH_TTS__DEFAULT_VOICE": voice})
    assert load_config(env={"TALKMESH_TTS__DEFAULT_VOICE": "ESPEAK:en-us"}).default_voice == "ESPEAK:en-us"


async def test_unknown_default_voice_fails_start() -> None:
    service = create_service(default_config(default_voice="espeak:nope"), Telemetry("tts"))
    with pytest.raises(ConfigError):
        await service.start()
    await service.stop()


def test_warmup_text_is_speakable() -> None:
    assert split_clauses(WARMUP_TEXT) == [WARMUP_TEXT]


async def test_cancelled_stream_stops_and_service_keeps_serving(tts: Any) -> None:
    stub, _, _ = tts
    call = stub.Synthesize(tts_pb2.SynthesizeRequest(text=" ".join(["A long sentence, again."] * 40)))
    for _ in range(3):
        await call.read()
    call.cancel()
    chunks = await collect(stub.Synthesize(tts_pb2.SynthesizeRequest(text="Pam met Max at the bank.")))
    assert chunks[-1].end_of_stream and len(pcm_of(chunks)) > 10000

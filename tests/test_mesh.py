"""End-to-end through the five real services (in this process, each on its own gRPC port)."""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess
import urllib.request

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from talkmesh.client import TalkmeshClient
from talkmesh.common.errors import ErrorDetails
from talkmesh.common.registry import GRPC_NAMES
from talkmesh.v1 import encoder_pb2 as epb
from tests.media import probe
from tests.mesh import inprocess_mesh

THREE_SENTENCES = (
    "Good morning, and welcome back. Today we will practise a few sounds together. "
    "Please listen first, then repeat after me."
)


async def test_speak_writes_a_playable_lip_synced_mp4(tmp_path):
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        result = await client.speak_to_file(THREE_SENTENCES, tmp_path / "out.mp4")
    info = probe(tmp_path / "out.mp4")
    assert info.video_codec == "h264"
    assert info.audio_codec == "aac"
    assert info.fps == 25
    assert (info.width, info.height) == (512, 512)
    audio_seconds = result.summary.audio_seconds
    assert audio_seconds > 3.0
    assert abs(info.frames - math.ceil(audio_seconds * 25)) <= 1
    assert result.summary.frames == info.frames
    assert abs(info.audio_seconds - info.video_seconds) <= 0.040
    # 25 fps timestamps with no gaps
    steps = {round(b - a, 3) for a, b in zip(info.video_pts, info.video_pts[1:], strict=False)}
    assert steps == {0.04}
    assert 'codecs="avc1' in result.mime_type


async def test_a_long_utterances_trace_stays_small_and_its_metrics_count_everything(tmp_path):
    """Per-group renderer spans stop after the first TRACED_GROUPS groups of a stream (a minute of
    speech would otherwise add hundreds of spans to one trace); the stage metric times them all."""
    from services.renderer.session import TRACED_GROUPS

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with inprocess_mesh(tmp_path, tracer_provider=provider) as mesh, TalkmeshClient(mesh.gateway) as client:
        await client.speak_to_file(" ".join([THREE_SENTENCES] * 5), tmp_path / "out.mp4")
        timed = mesh.telemetry["renderer"].metrics.registry.get_sample_value(
            "talkmesh_stage_duration_seconds_count", {"service": "renderer", "stage": "compose"}
        )
    composed = [s for s in exporter.get_finished_spans() if s.name == "renderer.compose"]
    assert timed is not None and timed > 2 * TRACED_GROUPS, timed
    assert len(composed) == TRACED_GROUPS


async def test_one_trace_spans_all_five_services(tmp_path):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with inprocess_mesh(tmp_path, tracer_provider=provider) as mesh, TalkmeshClient(mesh.gateway) as client:
        await client.speak_to_file("Hello there. How are you?", tmp_path / "out.mp4", container=epb.CONTAINER_FMP4)
    spans = exporter.get_finished_spans()
    # the encoder's spare session for the next stream opens in a trace of its own (not this request's work)
    (spare,) = [s for s in spans if s.name == "encoder.open_spare"]
    assert spare.parent is None
    spans = [s for s in spans if s is not spare]
    servers = {s.attributes.get("talkmesh.service"): s for s in spans if s.attributes.get("rpc.system") == "grpc"}
    assert set(servers) == set(GRPC_NAMES)
    root = servers["gateway"]
    assert root.parent is None
    assert {s.context.trace_id for s in spans} == {root.context.trace_id}
    # the gateway calls tts, audio_features and the encoder; the encoder pulls frames from the renderer
    parents = {"tts": root, "audio_features": root, "encoder": root, "renderer": servers["encoder"]}
    for name, parent in parents.items():
        assert servers[name].parent is not None
        assert servers[name].parent.span_id == parent.context.span_id, name
    assert "first_fragment" in {e.name for e in root.events}
    assert {"first_frame", "first_fragment"} <= {e.name for e in servers["encoder"].events}
    # stage spans sit under their service's server span
    by_id = {s.context.span_id: s for s in spans}
    stage_spans = [s for s in spans if s.attributes.get("rpc.system") != "grpc"]
    assert stage_spans, "services record a span per stage"
    for s in stage_spans:
        node = s
        while node.parent is not None and node.parent.span_id in by_id:
            node = by_id[node.parent.span_id]
        assert node is root


async def test_metrics_count_the_request_and_streams_return_to_zero(tmp_path):
    async with inprocess_mesh(tmp_path, metrics=True) as mesh, TalkmeshClient(mesh.gateway) as client:
        await client.speak_to_file("Hello there.", tmp_path / "out.mp4", container=epb.CONTAINER_FMP4)
        bodies = {}
        for name, host in mesh.hosts.items():
            url = f"http://127.0.0.1:{host.metrics_port}/metrics"
            bodies[name] = await asyncio.to_thread(lambda u=url: urllib.request.urlopen(u).read().decode())
    for name, body in bodies.items():
        assert f'talkmesh_streams_active{{service="{name}"}} 0.0' in body, name
        ok = [ln for ln in body.splitlines() if ln.startswith("talkmesh_streams_total") and 'code="OK"' in ln]
        # (every method has its OK series from start-up, at 0 until it is called)
        assert any(float(ln.rsplit(" ", 1)[1]) >= 1 for ln in ok), name
        counts = [
            float(ln.rsplit(" ", 1)[1])
            for ln in body.splitlines()
            if ln.startswith("talkmesh_stage_duration_seconds_count")
        ]
        assert counts and max(counts) >= 1, f"{name} recorded no stage durations"
    gw = bodies["gateway"]
    assert "talkmesh_time_to_first_frame_seconds_count" in gw
    promtool = shutil.which("promtool")
    if promtool:
        for name, body in bodies.items():
            res = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True)
            assert res.returncode == 0, f"{name}: {res.stdout}{res.stderr}"


async def test_client_cancel_leaves_no_stream_active(tmp_path):
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        call = client.speak(THREE_SENTENCES * 3)
        got = 0
        async for chunk in call:
            if chunk.WhichOneof("kind") == "media" and not chunk.media.init_segment:
                got += 1
                if got == 2:
                    break
        call.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while loop.time() < deadline and any(mesh.active_streams().values()):
            await asyncio.sleep(0.02)
        assert mesh.active_streams() == dict.fromkeys(mesh.telemetry, 0.0)


@pytest.mark.parametrize(
    ("options", "code", "details"),
    [
        ({"text": ""}, grpc.StatusCode.INVALID_ARGUMENT, "text: must not be empty"),
        ({"text": "x" * 5001}, grpc.StatusCode.INVALID_ARGUMENT, "text: 5001 characters exceed the limit of 5000"),
        # (the gateway resolves the avatar before the stages start: SpeakRequest's own field)
        ({"text": "Hi.", "avatar": "nobody"}, grpc.StatusCode.NOT_FOUND, "avatar_id: avatar 'nobody' not found"),
        ({"text": "Hi.", "voice": "espeak:no-such-voice"}, grpc.StatusCode.NOT_FOUND, "tts: voice: "),
        ({"text": "\u3002\u3002\u3002\uff01\uff1f"}, grpc.StatusCode.INVALID_ARGUMENT, "text: must not be empty"),
        (
            {"text": "\u4eca\u5929\u5929\u6c14\u5f88\u597d"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "tts: voice: 6 of the text's 6 letters are Han script",
        ),
        ({"text": "Hi.", "size": "8k"}, grpc.StatusCode.INVALID_ARGUMENT, "output.size"),
        ({"text": "Hi.", "rate": 99.0}, grpc.StatusCode.INVALID_ARGUMENT, "rate"),
        ({"text": "Hi.", "backend": "sadtalker"}, grpc.StatusCode.INVALID_ARGUMENT, "output.renderer_backend"),
    ],
)
async def test_bad_input_gets_a_clear_status_and_the_mesh_stays_up(tmp_path, options, code, details):
    opts = dict(options)
    text = opts.pop("text")
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.speak_to_file(TalkmeshClient.request(text, **opts), tmp_path / "bad.mp4")
        assert err.value.code() == code
        assert details in err.value.details()
        result = await client.speak_to_file("Still here.", tmp_path / "ok.mp4")
        assert result.summary.frames > 0


async def test_stage_errors_name_the_callers_request_fields(tmp_path):
    """A stage's `config.voice`, `config.settings.rate`, `config.backend` are the SpeakRequest's
    `voice`, `voice_settings.rate`, `output.renderer_backend` in the gateway's status (message and
    BadRequest details alike), for Speak and SpeakStream."""
    cases = [
        ({"voice": "espeak:no-such-voice"}, grpc.StatusCode.NOT_FOUND, "voice"),
        ({"rate": 99.0}, grpc.StatusCode.INVALID_ARGUMENT, "voice_settings.rate"),
        ({"pitch": -1.0}, grpc.StatusCode.INVALID_ARGUMENT, "voice_settings.pitch"),
        ({"size": "8k"}, grpc.StatusCode.INVALID_ARGUMENT, "output.size"),
        ({"backend": "wav2lip"}, grpc.StatusCode.INVALID_ARGUMENT, "output.renderer_backend"),  # not loaded
    ]
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        for options, code, field in cases:
            for streamed in (False, True):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    if streamed:
                        async for _ in client.speak_stream(_words("Hi."), **options):
                            pass
                    else:
                        await client.speak_to_file(TalkmeshClient.request("Hi.", **options), tmp_path / "bad.mp4")
                where = (options, streamed)
                assert err.value.code() == code, where
                assert ErrorDetails.of(err.value).field == field, where
                message = err.value.details()
                assert f"{field}: " in message and "config." not in message, (where, message)


async def _words(text: str):
    yield text


async def test_llm_text_without_punctuation_is_heard_while_the_stream_is_open(tmp_path):
    """SpeakStream through the gateway: unpunctuated words become video before the text ends."""
    more = asyncio.Event()

    async def tokens():
        for word in "so this is what i think about the weather".split():
            yield word + " "
        await more.wait()  # the "LLM" keeps the stream open until video has arrived
        yield "today"

    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        media = 0
        async for chunk in client.speak_stream(tokens(), timeout=60):
            if chunk.WhichOneof("kind") == "media" and not chunk.media.init_segment and chunk.media.data:
                media += 1
                more.set()
            elif chunk.WhichOneof("kind") == "summary":
                summary = chunk.summary
    assert media > 0 and more.is_set()
    assert summary.audio_seconds > 1.0


async def test_the_request_id_in_the_body_comes_back_in_the_trailers(tmp_path):
    """SpeakRequest.request_id wins over x-request-id metadata (the id every stage logs); the
    gateway returns the one it used in its trailers, so a failed call can be found in the logs."""
    from talkmesh.v1 import gateway_pb2 as gpb

    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        md = (("x-request-id", "from-metadata"),)
        call = client.stub.Speak(gpb.SpeakRequest(text="Hi.", request_id="from-body"), metadata=md)
        ids = {c.request_id async for c in call if c.request_id}
        assert ids == {"from-body"}
        assert dict(await call.trailing_metadata())["x-request-id"] == "from-body"
        failed = client.stub.Speak(gpb.SpeakRequest(text=""), metadata=md)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            [c async for c in failed]
        assert dict(err.value.trailing_metadata())["x-request-id"] == "from-metadata"


async def test_ttss_warning_about_the_text_reaches_the_caller_in_the_summary(tmp_path):
    """Text with a few letters the voice reads by name ("Chinese letter") is spoken, and the caller
    is told why it sounds wrong (SpeakSummary.warnings), for Speak and SpeakStream alike; text
    without such letters has no warning."""
    mixed = "I flew from 北京 to 上海 last week."

    async def pieces():
        for piece in ["I flew from 北京 ", "to 上海 last week."]:
            yield piece

    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        warned = await client.save(client.speak(mixed), tmp_path / "mixed.mp4")
        streamed = await client.save(client.speak_stream(pieces()), tmp_path / "streamed.mp4")
        clean = await client.save(client.speak("I flew from Paris to Rome last week."), tmp_path / "clean.mp4")
        # the voice TTS spoke with, as listed: a locale resolved to the voice that has it
        spanish = await client.save(client.speak("Hola, ¿qué tal?", voice="espeak:es-MX"), tmp_path / "es.mp4")
        (listed,) = await client.list_voices("espeak:es-MX")
    for result in (warned, streamed):
        (warning,) = result.summary.warnings
        assert "Han script" in warning and "espeak:cmn" in warning, warning
        assert result.summary.frames > 25
        assert result.summary.voice == "espeak:en-us"  # the default
    assert "4 of the text's 23 letters" in warned.summary.warnings[0]
    assert "4 of the clause's 23 letters" in streamed.summary.warnings[0]  # a stream is checked by clause
    assert list(clean.summary.warnings) == [] and clean.summary.voice == "espeak:en-us"
    assert spanish.summary.voice == listed.id != "espeak:es-MX" and listed.id.startswith("espeak:es")


async def test_an_llms_markdown_reply_is_spoken_as_its_words_in_speak_and_live(tmp_path):
    """`markdown=True` (TEXT_FORMAT_MARKDOWN) reaches TTS from Speak, SpeakStream and a live
    session: the reply lasts as long as its plain words, not as its markup read aloud."""
    from talkmesh.v1 import gateway_pb2 as gpb
    from talkmesh.v1 import live_pb2 as lpb
    from tests.live_helpers import Recorder

    reply = "**Sure!** Pick the `blue` one, see [the map](https://example.com/map) 🎉"
    words = "Sure! Pick the blue one, see the map"

    async def seconds(client, text, **options):  # type: ignore[no-untyped-def]
        chunks = [c async for c in client.speak(text, **options)]
        return chunks[-1].summary.audio_seconds

    async def streamed(client, text):  # type: ignore[no-untyped-def]
        async def pieces():  # type: ignore[no-untyped-def]
            for i in range(0, len(text), 4):
                yield text[i : i + 4]

        chunks = [c async for c in client.speak_stream(pieces(), markdown=True)]
        return chunks[-1].summary.audio_seconds

    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        plain = await seconds(client, words)
        as_markdown = await seconds(client, reply, markdown=True)
        as_written = await seconds(client, reply)
        as_stream = await streamed(client, reply)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await seconds(client, gpb.SpeakRequest(text="Hi.", text_format=9))  # type: ignore[arg-type]
        async with client.live(markdown=True) as live:
            rec = Recorder(live).start()
            tid = await live.say(reply)
            stopped = (await rec.wait_event("speaking_stopped", tid, timeout=30)).msg.event.speaking_stopped
            await live.close()
            await rec.finish()
    assert abs(as_markdown - plain) < 0.1 and abs(as_stream - plain) < 0.15, (plain, as_markdown, as_stream)
    assert as_written > plain + 1.0, "as plain text the markup and the address are read"
    assert stopped.reason == lpb.STOP_REASON_COMPLETED
    assert abs(stopped.samples_played / stopped.sample_rate - plain) < 0.15
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("text_format")


async def test_a_reply_of_only_markdown_marks_is_silent_in_live_and_refused_by_speak_stream(tmp_path):
    """An LLM turn of only markup (an emoji, a fence line, a rule, a bullet) says nothing: in a live
    session it ends silently, as a turn of white space does (not a failed turn); a SpeakStream of it
    is INVALID_ARGUMENT at the gateway, before any stage opens."""
    from talkmesh.v1 import live_pb2 as lpb
    from tests.live_helpers import Recorder

    only_marks = ["👍", "```", "```python", "---", "- ", "<br/>", "[](#)", "| --- |"]
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live(markdown=True) as live:
            rec = Recorder(live).start()
            stops = []
            for text in only_marks:
                tid = await live.say(text)
                stops.append((await rec.wait_event("speaking_stopped", tid, timeout=20)).msg.event.speaking_stopped)
            words = await live.say("```python\nprint(1)\n```")  # a fence with code in it says the code
            spoken = (await rec.wait_event("speaking_stopped", words, timeout=20)).msg.event.speaking_stopped
            await live.close()
            await rec.finish()
        assert not [r.msg.error for r in rec.messages if r.kind == "error"]

        async def pieces():  # type: ignore[no-untyped-def]
            for piece in ("```", "py", "thon\n", "```\n", "👍"):
                yield piece

        def tts_calls() -> float:  # every call TTS served, whatever its end
            registry = mesh.telemetry["tts"].metrics.registry
            return sum(
                sample.value
                for metric in registry.collect()
                if metric.name == "talkmesh_streams"
                for sample in metric.samples
                if sample.name == "talkmesh_streams_total"
            )

        before = tts_calls()
        assert before >= 1
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in client.speak_stream(pieces(), markdown=True):
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == "text: must not be empty (as Markdown it has nothing to say: only markup)"
        assert tts_calls() == before, "no TTS stream was opened"
    assert [(s.reason, s.samples_played) for s in stops] == [(lpb.STOP_REASON_COMPLETED, 0)] * len(only_marks)
    assert spoken.reason == lpb.STOP_REASON_COMPLETED and spoken.samples_played > 0

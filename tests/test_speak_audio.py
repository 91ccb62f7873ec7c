"""The caller's own speech in, video out, rendered as fast as the mesh goes (SpeakStream's audio
pieces; `talkmesh say --audio`; `TalkmeshClient.speak_audio`)."""

from __future__ import annotations

import asyncio
import math
import wave
from pathlib import Path

import av
import grpc
import numpy as np
import pytest

from talkmesh.client import TalkmeshClient, pcm_pieces
from talkmesh.common.channel import create_channel
from talkmesh.speech_file import SpeechFileError, read_speech
from talkmesh.v1 import gateway_pb2 as gpb
from talkmesh.v1 import gateway_pb2_grpc
from talkmesh.v1 import types_pb2 as api
from tests.live_helpers import decode, mouth_openness
from tests.mesh import inprocess_mesh
from tests.test_cli import _cli

FPS = 25


def _speech(rate: int) -> np.ndarray:
    """0.4 s of silence, 1.2 s of syllable-like bursts (on 150 ms, off 100 ms), 0.4 s of silence."""
    t = np.arange(int(rate * 1.2)) / rate
    bursts = np.sin(2 * np.pi * 180 * t) * 9000 * ((t % 0.25) < 0.15)
    quiet = np.zeros(int(rate * 0.4))
    return np.concatenate([quiet, bursts, quiet]).astype("<i2")


def _check_video(path: Path, pcm: np.ndarray, rate: int) -> None:
    """The caller's audio is the video's, in time; the mouth opens on the bursts only."""
    seconds = len(pcm) / rate
    out = decode(path)
    assert len(out.frames) == math.ceil(seconds * FPS)
    assert abs(out.audio_seconds - seconds) <= 1 / FPS
    # the bursts are where they were sent (energy per 40 ms: high from 0.4 s to 1.6 s only)
    hop = out.audio_rate // FPS
    energy = np.array([np.abs(out.audio[i : i + hop]).mean() for i in range(0, len(out.audio) - hop + 1, hop)])
    loud = energy > 0.25 * energy.max()
    assert not loud[: int(0.35 * FPS)].any() and not loud[int(1.65 * FPS) :].any()
    assert loud[int(0.45 * FPS) : int(1.55 * FPS)].mean() > 0.5
    gaps = mouth_openness(out.frames)
    speaking, silent = gaps[int(0.5 * FPS) : int(1.5 * FPS)], np.concatenate([gaps[:8], gaps[-6:]])
    assert speaking.max() > silent.max() + 0.05, "the mouth opens on the caller's speech"


@pytest.mark.parametrize("rate", [8000, 22050, 44100])
async def test_the_callers_speech_becomes_a_lip_synced_video(tmp_path: Path, rate: int) -> None:
    pcm = _speech(rate)
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        result = await client.save(
            client.speak_audio(pcm.tobytes(), rate, container=api.CONTAINER_FMP4), tmp_path / "me.mp4"
        )
    assert result.summary.audio_seconds == pytest.approx(len(pcm) / rate, abs=0.01)
    stages = {s.stage for s in result.summary.stages}  # no TTS timings for speech TTS never saw
    assert "features_first" in stages and not {"tts_first_chunk", "tts_total"} & stages, stages
    # the timings only the encoder sees (it pulls the renderer's frames), reported to the gateway
    reported = {s.stage: s.seconds for s in result.summary.stages}
    assert reported["renderer_first_frame"] > 0 and reported["encoder_first_fragment"] > 0, reported
    assert len(result.fragment_times) > 3  # streamed: fragments as they were encoded
    _check_video(tmp_path / "me.mp4", pcm, rate)


_WEBM = b"\x1aE\xdf\xa3\x9fB\x86\x81" + bytes(200)  # how a browser's MediaRecorder blob begins


def _messages(*items: gpb.SpeakStreamRequest, start: gpb.SpeakRequest | None = None) -> list[gpb.SpeakStreamRequest]:
    return [gpb.SpeakStreamRequest(start=start or gpb.SpeakRequest()), *items]


def _piece(rate: int, samples: int) -> gpb.SpeakStreamRequest:
    return gpb.SpeakStreamRequest(audio=gpb.AudioPiece(sample_rate=rate, pcm=b"\x01\x00" * samples))


@pytest.mark.parametrize(
    ("messages", "field", "message"),
    [
        (_messages(_piece(16000, 100), gpb.SpeakStreamRequest(text="hi")), "audio", "as the first one did"),
        (_messages(gpb.SpeakStreamRequest(text="hi"), _piece(16000, 100)), "text", "as the first one did"),
        (_messages(_piece(16000, 100), _piece(22050, 100)), "audio.sample_rate", "differs from the first"),
        (_messages(_piece(96000, 100)), "audio.sample_rate", "outside 8000..48000"),
        (_messages(_piece(16000, 16001)), "audio.pcm", "more than 1 s of audio"),
        (_messages(_piece(16000, 0), _piece(16000, 0)), "audio.pcm", "no audio"),
        (  # a recording's file sent as its samples (the client checks too; the gateway must)
            _messages(_piece(16000, 0), gpb.SpeakStreamRequest(audio=gpb.AudioPiece(sample_rate=48000, pcm=_WEBM))),
            "audio.pcm",
            "these bytes are a WebM file, not raw PCM",
        ),
        (_messages(*[_piece(16000, 16000)] * 3), "audio", "exceeds the limit of 2 seconds"),
        (  # a sender that knows the recording's length is refused before any stage starts
            _messages(gpb.SpeakStreamRequest(audio=gpb.AudioPiece(sample_rate=16000, total_samples=48000))),
            "audio.total_samples",
            "3.0 seconds, over the limit of 2 seconds",
        ),
        # a voice would change nothing of the caller's own speech: refused, not silently ignored
        (_messages(_piece(16000, 100), start=gpb.SpeakRequest(voice="espeak:fr")), "voice", "spoken as they are"),
        (
            _messages(_piece(16000, 100), start=gpb.SpeakRequest(voice_settings=api.VoiceSettings(rate=0.75))),
            "voice_settings.rate",
            "spoken as they are",
        ),
    ],
)
async def test_bad_audio_pieces_are_refused_naming_the_field(
    tmp_path: Path, messages: list[gpb.SpeakStreamRequest], field: str, message: str
) -> None:
    env = {"TALKMESH_GATEWAY__MAX_AUDIO_SECONDS": "2"}
    async with inprocess_mesh(tmp_path, env=env) as mesh, create_channel(mesh.gateway) as channel:
        call = gateway_pb2_grpc.GatewayStub(channel).SpeakStream(iter(messages), timeout=60)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call:
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith(f"{field}: ") and message in err.value.details()
        await asyncio.sleep(0.2)
        assert mesh.active_streams() == dict.fromkeys(mesh.active_streams(), 0.0)  # nothing left running


async def test_a_whole_recording_over_the_limit_is_refused_before_any_stage_starts(tmp_path: Path) -> None:
    env = {"TALKMESH_GATEWAY__MAX_AUDIO_SECONDS": "2"}
    stage_calls = ("Synthesize", "Extract", "Encode", "Render")

    def calls(mesh) -> float:  # type: ignore[no-untyped-def]
        return sum(
            sample.value
            for name in ("tts", "audio_features", "encoder", "renderer")
            for metric in mesh.telemetry[name].metrics.registry.collect()
            for sample in metric.samples
            if sample.name == "talkmesh_streams_total" and sample.labels["method"].endswith(stage_calls)
        )

    async with inprocess_mesh(tmp_path, env=env) as mesh, TalkmeshClient(mesh.gateway) as client:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in client.speak_audio(b"\x00\x00" * 16000 * 3, 16000):
                pass
        refused_calls = calls(mesh)
        async for _ in client.speak_audio(b"\x00\x00" * 1600, 16000):
            pass
        await asyncio.sleep(0.2)
        spoken_calls = calls(mesh)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("audio.total_samples: the recording is 3.0 seconds"), err.value.details()
    assert refused_calls == 0 and spoken_calls >= 3, "no stage was called for the refused recording"


async def test_a_long_recording_sent_at_once_always_gets_its_refusal_not_a_transport_error(tmp_path: Path) -> None:
    """An 11-minute take (over the default 600 s) was refused at its first message while the client
    was still writing the rest: 3 of 8 tries ended "INTERNAL: Internal error from Core" (grpc's
    failed write) instead of the refusal. The gateway now reads what keeps coming first."""
    pcm = b"\x00\x00" * 16000 * 660
    codes = []
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        for _ in range(6):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in client.speak_audio(pcm, 16000):
                    pass
            codes.append((err.value.code(), err.value.details()[:38]))
    assert set(codes) == {(grpc.StatusCode.INVALID_ARGUMENT, "audio.total_samples: the recording is ")}, codes


async def test_no_audio_at_all_is_refused_as_such(tmp_path: Path) -> None:
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in client.speak_audio(b"", 16000):
                pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "audio.pcm: no audio: every piece was empty"


async def test_the_callers_own_input_errors_are_raised_as_they_are(tmp_path: Path) -> None:
    """Not the CancelledError gRPC reports when a request stream raises."""

    async def mic():
        yield b"\x00\x00" * 1600
        raise RuntimeError("mic died")

    async def llm():
        yield "Hello "
        raise ConnectionError("the model's stream dropped")

    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        with pytest.raises(ValueError, match="odd number of bytes"):
            async for _ in client.speak_audio(b"\x00" * 7, 16000):
                pass
        with pytest.raises(RuntimeError, match="mic died"):
            async for _ in client.speak_audio(mic(), 16000):
                pass
        with pytest.raises(ConnectionError, match="dropped"):
            async for _ in client.speak_stream(llm()):
                pass
        chunks = [c async for c in client.speak_audio(b"\x00\x00" * 1600, 16000)]  # and the mesh goes on
    assert chunks[-1].summary.frames == 3  # 0.1 s: 2.5 frames, the last one whole


async def test_pcm_is_sent_in_whole_samples_at_most_a_second_per_piece() -> None:
    async def collect(chunks: object, rate: int = 1000) -> list[int]:
        return [len(p) async for p in pcm_pieces(chunks, rate)]  # type: ignore[arg-type]

    assert await collect(b"\x00" * 5000) == [400, 2000, 2000, 600]  # 0.2 s first, then 1 s pieces
    assert await collect([b"\x00" * 3, b"\x00" * 3, b"\x00" * 4]) == [2, 4, 4]  # a split sample waits
    assert await collect([b"\x00" * 100, b"", b"\x00" * 100]) == [100, 100]  # live chunks go at once

    async def mic():
        yield b"\x00" * 10
        yield b"\x00" * 20

    assert await collect(mic()) == [10, 20]
    with pytest.raises(ValueError, match="odd number of bytes"):
        await collect(b"\x00" * 7)


async def test_what_cannot_be_pcm_is_refused_before_a_piece_is_sent() -> None:
    """A speech trainer's trial: a whole recording of an odd length started a live turn that
    played 0.1 s before the error; a NumPy array failed with numpy's "truth value of an empty
    array is ambiguous"; a WAV file's bytes in chunks played its header as a click."""
    sent: list[bytes] = []

    async def send(chunks: object) -> None:
        async for piece in pcm_pieces(chunks, 1000):  # type: ignore[arg-type]
            sent.append(piece)

    with pytest.raises(ValueError, match="odd number of bytes"):
        await send(b"\x00" * 9601)
    assert sent == [], "nothing of a whole recording is sent before it is known to be bad"
    wav = b"RIFF" + b"\x00" * 4000
    with pytest.raises(ValueError, match="these bytes are a WAV file, not raw PCM"):
        await send([wav[:1000], wav[1000:]])
    assert sent == []
    m4a = b"\x00\x00\x00\x1cftypM4A " + b"\x00" * 4000  # a phone's voice memo: its kind is at bytes 4..8
    with pytest.raises(ValueError, match=r"these bytes are an MP4 \(M4A\) file, not raw PCM"):
        await send([m4a[:1000], m4a[1000:]])
    assert sent == []
    # NumPy: mono int16 samples are PCM; anything else says what to pass
    await send(np.arange(3000, dtype=np.int16))
    assert b"".join(sent) == np.arange(3000, dtype="<i2").tobytes()
    for bad in (np.zeros(100, np.float32), np.zeros((100, 2), np.int16)):
        with pytest.raises(TypeError, match=r"mono int16 samples"):
            await send(bad)


async def test_a_whole_audio_file_passed_as_pcm_is_refused_saying_so(tmp_path: Path) -> None:
    """Its header would play as samples and its rate and channels be ignored."""
    path = _wav(tmp_path / "me.wav", np.zeros((1600, 1)), 16000, 2)
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        with pytest.raises(ValueError, match=r"pcm: these bytes are a WAV file, not raw PCM"):
            async for _ in client.speak_audio(path.read_bytes(), 16000):
                pass
        with wave.open(str(path)) as w:  # its samples are fine
            chunks = [c async for c in client.speak_audio(w.readframes(w.getnframes()), w.getframerate())]
    assert chunks[-1].summary.frames == 3


def _wav(path: Path, samples: np.ndarray, rate: int, width: int) -> Path:
    """``samples`` (float, -1..1, frames x channels) as integer PCM of ``width`` bytes."""
    scale = {1: 127, 2: 32767, 3: 8388607, 4: 2147483647}[width]
    ints = np.round(samples * scale).astype(np.int64)
    if width == 1:
        raw = (ints + 128).astype(np.uint8).tobytes()
    else:
        raw = b"".join(int(v).to_bytes(width, "little", signed=True) for v in ints.reshape(-1))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(samples.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)
    return path


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_pcm_wav_files_of_any_width_and_channels_read_as_mono_16_bit(tmp_path: Path, width: int) -> None:
    rate = 16000
    t = np.arange(rate // 10) / rate
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([tone, tone], axis=1)  # the same in both: the average is the tone
    pcm, got_rate = read_speech(_wav(tmp_path / "s.wav", stereo, rate, width))
    got = np.frombuffer(pcm, "<i2") / 32767
    assert got_rate == rate and len(got) == len(t)
    assert np.abs(got - tone).max() < (0.02 if width == 1 else 0.001)


def test_other_formats_and_rates_go_through_pyav(tmp_path: Path) -> None:
    rate = 96000  # outside the gateway's rates: resampled to 48 kHz
    t = np.arange(rate // 5) / rate
    path = tmp_path / "float.wav"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_f32le", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray((0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None], "flt", "mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    pcm, got_rate = read_speech(path)
    assert got_rate == 48000 and abs(len(pcm) // 2 - 48000 // 5) <= 64
    with wave.open(str(tmp_path / "empty.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
    with pytest.raises(SpeechFileError, match="holds no audio"):
        read_speech(tmp_path / "empty.wav")
    (tmp_path / "noise.wav").write_bytes(b"RIFF not really")
    undecodable = r"cannot decode it as audio \(Invalid data found when processing input\)$"  # no errno, no path
    with pytest.raises(SpeechFileError, match=undecodable):
        read_speech(tmp_path / "noise.wav")
    (tmp_path / "zero.wav").write_bytes(b"")
    with pytest.raises(SpeechFileError, match="holds no audio"):
        read_speech(tmp_path / "zero.wav")
    (tmp_path / "dir.wav").mkdir()
    with pytest.raises(SpeechFileError, match="is a directory"):
        read_speech(tmp_path / "dir.wav")


def test_a_recording_whose_wav_header_was_never_finished_is_read_whole(tmp_path: Path) -> None:
    """A recorder stopped before it wrote the sizes leaves "0 bytes of data" in the header with the
    samples after it (FFmpeg reads them); an empty WAV still holds no audio."""
    rate = 16000
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(rate // 2) / rate)
    path = _wav(tmp_path / "take.wav", tone[:, None], rate, 2)
    data = path.read_bytes()
    start = data.index(b"data") + 8
    unfinished = data[:4] + (36).to_bytes(4, "little") + data[8 : start - 4] + bytes(4) + data[start:]
    (tmp_path / "unfinished.wav").write_bytes(unfinished)
    pcm, got_rate = read_speech(tmp_path / "unfinished.wav")
    got = np.frombuffer(pcm, "<i2") / 32767
    assert got_rate == rate and len(got) == len(tone)
    assert np.abs(got - tone).max() < 0.001
    (tmp_path / "empty.wav").write_bytes(data[:start - 4] + bytes(4))  # a header and nothing after it
    with pytest.raises(SpeechFileError, match=r"holds no audio$"):
        read_speech(tmp_path / "empty.wav")


def test_an_empty_wav_with_a_chunk_after_its_data_holds_no_audio(tmp_path: Path) -> None:
    """A finished WAV (its RIFF size covers the file) with 0 bytes of data and a LIST chunk after
    them (as some editors write it) holds no audio: the chunk's bytes are not read as samples."""
    header = _wav(tmp_path / "take.wav", np.zeros((0, 1)), 16000, 2).read_bytes()
    info = b"INFOISFT" + (14).to_bytes(4, "little") + b"Lavf58.76.100\x00"
    body = header[8:] + b"LIST" + len(info).to_bytes(4, "little") + info
    (tmp_path / "empty.wav").write_bytes(b"RIFF" + len(body).to_bytes(4, "little") + body)
    with pytest.raises(SpeechFileError, match=r"holds no audio$"):
        read_speech(tmp_path / "empty.wav")


async def test_say_audio_from_the_command_line(tmp_path: Path) -> None:
    rate = 22050
    pcm = _speech(rate)
    path = _wav(tmp_path / "me.wav", (pcm.astype(np.float64) / 32767)[:, None], rate, 2)
    async with inprocess_mesh(tmp_path) as mesh:
        gw = ("--target", mesh.gateway)
        code, out, err = await _cli("say", "--audio", str(path), "-o", str(tmp_path / "me.mp4"), *gw)
        assert code == 0, err
        assert "wrote" in out
        _check_video(tmp_path / "me.mp4", pcm, rate)
        code, _, err = await _cli("say", "Hi.", "--audio", str(path), *gw)
        both = "error: say: give a text to speak, or --audio FILE (your own speech), not both"
        assert (code, err.strip()) == (1, both)
        code, _, err = await _cli("say", "-o", str(tmp_path / "x.mp4"), *gw)  # neither
        assert (code, err.strip()) == (1, 'error: say: nothing to speak: give a text (talkmesh say "Hello.") or '
                                          "--audio FILE (your own speech)")  # fmt: skip
        code, _, err = await _cli("say", "--audio", str(path), "--rate", "0.75", *gw)
        assert code == 1 and "voice_settings.rate: is for text;" in err and "set by --rate" in err, err
        code, _, err = await _cli("say", "--audio", str(tmp_path / "nope.wav"), *gw)
        assert (code, err.strip()) == (1, f"error: {tmp_path / 'nope.wav'}: no such file")


def test_an_m4a_cut_short_before_its_index_was_written_says_so(tmp_path: Path) -> None:
    """A phone's voice memo copied while it was still being written has its samples but not its
    index (the MP4 `moov` box, written last): FFmpeg only says "Invalid data found when processing
    input" (a speech trainer's trial); the file is named as cut short, what to do said."""
    rate = 16000
    path = tmp_path / "memo.m4a"
    with av.open(str(path), "w", format="mp4") as out:  # (moov at the end, as a recorder writes it)
        stream = out.add_stream("aac", rate=rate, layout="mono")
        tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(tone[None], "fltp", "mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    data = path.read_bytes()
    assert data[4:8] == b"ftyp" and data.index(b"moov") > data.index(b"mdat")
    assert read_speech(path)[1] == rate  # whole, it reads
    cut = tmp_path / "cut.m4a"
    cut.write_bytes(data[: data.index(b"moov") - 4])
    with pytest.raises(SpeechFileError) as refused:
        read_speech(cut)
    assert str(refused.value) == (
        f"{cut}: an MP4 (M4A) file without its index (no moov box): the recording was cut short before "
        "the recorder finished writing it; stop the recording, then export or share it again"
    )

"""Backend choice: NVENC when the start-up probe succeeds, x264 otherwise, same muxing for both."""

from __future__ import annotations

from fractions import Fraction

import pytest

from services.encoder.backends import NvencBackend, X264Backend, select_backend
from services.encoder.backends.nvenc import probe_nvenc
from services.encoder.config import VideoConfig
from services.encoder.main import create_service
from talkmesh.common.channel import create_channel
from talkmesh.common.config import replace
from talkmesh.common.telemetry import Telemetry
from talkmesh.testing import serve
from talkmesh.v1 import encoder_pb2_grpc

from .media import SR, decode, frames_for, utterance


class Probe:
    def __init__(self, result: bool) -> None:
        self.result = result
        self.calls: list[int] = []

    def __call__(self, gpu: int) -> bool:
        self.calls.append(gpu)
        return self.result


def backend_metric(telemetry: Telemetry, name: str) -> float | None:
    return telemetry.metrics.registry.get_sample_value(
        "talkmesh_backend_info", {"service": "encoder", "kind": "video_encoder", "name": name}
    )


@pytest.mark.parametrize(("probe_ok", "expected"), [(True, "h264_nvenc"), (False, "libx264")])
async def test_start_up_probe_selects_the_backend(config, probe_ok, expected):
    telemetry = Telemetry("encoder")
    probe = Probe(probe_ok)
    service = create_service(config, telemetry, nvenc_probe=probe)
    async with serve(service):
        assert service.backend.name == expected  # type: ignore[attr-defined]
        assert backend_metric(telemetry, expected) == 1.0
        assert probe.calls == [config.video.nvenc.gpu]
        # NVENC's sessions are a per-GPU budget: no spare session is kept idle on it
        assert service.servicer.spares.keep == (0 if probe_ok else config.spare_sessions)  # type: ignore[attr-defined]


async def test_probe_success_without_a_usable_gpu_falls_back_per_stream(config):
    """The probe says yes (as on a GPU host whose NVENC sessions are all taken): the stream still
    goes through the same muxing code, on x264, and says so."""
    service = create_service(config, Telemetry("encoder"), nvenc_probe=Probe(True))
    if probe_nvenc():
        pytest.skip("a real NVENC is present: the stream would not fall back")
    async with serve(service) as host, create_channel(host.address) as channel:
        out = [m async for m in encoder_pb2_grpc.EncoderStub(channel).Encode(utterance(64, 64, SR // 5))]
    assert out[0].video_encoder == "libx264"
    assert len(decode(b"".join(m.data for m in out)).video_pts) == frames_for(SR // 5)


async def test_x264_mode_never_probes_and_nvenc_mode_requires_it(config):
    probe = Probe(True)
    x264_only = replace(config, video=replace(config.video, encoder="x264"))
    service = create_service(x264_only, Telemetry("encoder"), nvenc_probe=probe)
    await service.start()
    assert service.backend.name == "libx264" and probe.calls == []  # type: ignore[attr-defined]

    nvenc_only = replace(config, video=replace(config.video, encoder="nvenc"))
    service = create_service(nvenc_only, Telemetry("encoder"), nvenc_probe=Probe(False))
    with pytest.raises(RuntimeError, match="nvenc"):
        await service.start()


def test_backend_settings_are_low_latency():
    video = VideoConfig()
    nv = NvencBackend(video).settings(512, 512, Fraction(25))
    assert nv.codec_name == "h264_nvenc"
    assert nv.options["preset"] == "p1" and nv.options["tune"] == "ull"
    assert nv.options["bf"] == "0" and nv.options["zerolatency"] == "1" and nv.options["delay"] == "0"
    assert nv.options["forced-idr"] == "1"  # live sessions splice at forced keyframes: they must be IDRs
    assert nv.gop_size == 50 and nv.bit_rate == 2_500_000
    x = X264Backend(video).settings(512, 512, Fraction(25))
    assert x.codec_name == "libx264"
    assert (x.options["preset"], x.options["tune"], x.options["crf"]) == ("ultrafast", "zerolatency", "27")
    assert "keyint=50" in x.options["x264-params"]
    cbr = X264Backend(replace(video, x264=replace(video.x264, bitrate_kbps=800))).settings(64, 64, Fraction(25))
    assert cbr.bit_rate == 800_000 and "crf" not in cbr.options


def test_select_backend_is_pure():
    video = VideoConfig()
    assert isinstance(select_backend(video, lambda _gpu: True), NvencBackend)
    assert isinstance(select_backend(video, lambda _gpu: False), X264Backend)


def test_start_up_log_says_plainly_that_x264_is_used_without_an_nvidia_encoder(caplog):
    """On a CPU machine the log reads as information, not as an error (errno text only at DEBUG)."""
    import logging

    from services.encoder.backends import select_backend
    from services.encoder.config import VideoConfig

    caplog.set_level(logging.INFO)
    backend = select_backend(VideoConfig(encoder="auto"), lambda gpu: probe_nvenc(gpu))
    if backend.name != "libx264":
        pytest.skip("a real NVENC is present")
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert "no NVIDIA encoder found on this machine: encoding video with x264 on the CPU" in messages
    assert not any("unavailable" in m or "Errno" in m or "not permitted" in m for m in messages), messages
    assert all(r.levelno < logging.WARNING for r in caplog.records)


@pytest.fixture
def nvenc_session_limit(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Opening h264_nvenc fails as on a GeForce card whose NVENC sessions are all taken: FFmpeg's
    "OpenEncodeSessionEx failed: out of memory (10)", an ENOMEM from avcodec_open2."""
    import errno

    import av

    from services.encoder.session import EncodeSession

    real = EncodeSession._open_with
    opened: list[str] = []

    def open_with(self: EncodeSession, backend) -> None:  # type: ignore[no-untyped-def]
        opened.append(backend.name)
        if backend.name == "h264_nvenc":
            raise av.error.MemoryError(errno.ENOMEM, "Cannot allocate memory")
        real(self, backend)

    monkeypatch.setattr(EncodeSession, "_open_with", open_with)
    return opened


async def test_nvenc_session_limit_without_fallback_is_resource_exhausted(config, nvenc_session_limit):
    import grpc
    from google.rpc import error_details_pb2

    from talkmesh.common.calls import CallStream
    from talkmesh.common.errors import StageError

    strict = replace(config, video=replace(config.video, fallback_to_x264=False))
    service = create_service(strict, Telemetry("encoder"), nvenc_probe=Probe(True))

    async def requests():
        for r in utterance(64, 64, SR // 25):
            yield r

    async with serve(service) as host, create_channel(host.address) as channel:
        # Called as the gateway calls the encoder (CallStream): a bare stub whose request iterator is
        # still writing when the status arrives reports grpc's INTERNAL instead (grpc/grpc#36066; the
        # suite's CI hit that once), which is grpc's client behaviour, not the encoder's answer.
        stream = CallStream(encoder_pb2_grpc.EncoderStub(channel).Encode(), requests(), stage="encoder")
        with pytest.raises(StageError) as err:
            [m async for m in stream]
        await stream.cancel()
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "h264_nvenc could not open another encoder session on GPU 0" in str(err.value)
    assert "video.fallback_to_x264" in str(err.value)
    retry = [d for d in err.value.details() if isinstance(d, error_details_pb2.RetryInfo)]
    assert [r.retry_delay.ToNanoseconds() / 1e9 for r in retry] == [1.0]
    quota = [(v.subject, v.description) for d in err.value.details() if isinstance(d, error_details_pb2.QuotaFailure)
             for v in d.violations]  # fmt: skip
    assert quota == [("gpu 0", "concurrent NVENC sessions per GPU")]
    assert nvenc_session_limit == ["h264_nvenc"]


async def test_nvenc_session_limit_falls_back_to_x264_for_that_stream(config, nvenc_session_limit, caplog):
    service = create_service(config, Telemetry("encoder"), nvenc_probe=Probe(True))
    async with serve(service) as host, create_channel(host.address) as channel:
        out = [m async for m in encoder_pb2_grpc.EncoderStub(channel).Encode(utterance(64, 64, SR // 5))]
    assert out[0].video_encoder == "libx264" and nvenc_session_limit == ["h264_nvenc", "libx264"]
    assert any("h264_nvenc failed to open" in r.getMessage() and "this stream uses libx264" in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_only_an_nvenc_enomem_is_a_session_limit():
    import errno

    import av

    from services.encoder.backends.nvenc import is_session_limit

    nv = NvencBackend(VideoConfig())
    enomem = av.error.MemoryError(errno.ENOMEM, "Cannot allocate memory")
    assert is_session_limit(enomem, "h264_nvenc") and not is_session_limit(enomem, "libx264")
    status = nv.open_error(enomem)
    assert status is not None and status.code.name == "RESOURCE_EXHAUSTED"
    assert nv.open_error(av.error.ArgumentError(errno.EINVAL, "Invalid argument")) is None
    assert X264Backend(VideoConfig()).open_error(enomem) is None


def test_live_sessions_and_idle_loops_map_the_session_limit_too():
    """The live path opens its encoders through open_errors (one encoder per live session; the idle
    loop's encoders once per cached loop): an NVENC session limit is RESOURCE_EXHAUSTED there too."""
    import errno

    import av

    from services.encoder.backends import open_errors
    from talkmesh.common.errors import ResourceExhausted

    enomem = av.error.MemoryError(errno.ENOMEM, "Cannot allocate memory")
    with pytest.raises(ResourceExhausted, match="h264_nvenc could not open another encoder session"):
        with open_errors(NvencBackend(VideoConfig())):
            raise enomem
    with pytest.raises(av.error.MemoryError):  # x264 out of memory is not a session limit
        with open_errors(X264Backend(VideoConfig())):
            raise enomem

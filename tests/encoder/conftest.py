from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.encoder.main import create_service, load_config
from talkmesh.common.channel import create_channel
from talkmesh.common.telemetry import Telemetry
from talkmesh.testing import serve
from talkmesh.v1 import encoder_pb2_grpc


def _no_gpu(_gpu: int) -> bool:
    return False


@pytest.fixture
def config():
    return load_config(env={})


@pytest.fixture
async def stub(config) -> AsyncIterator[encoder_pb2_grpc.EncoderStub]:
    service = create_service(config, Telemetry("encoder"), nvenc_probe=_no_gpu)
    async with serve(service) as host, create_channel(host.address) as channel:
        yield encoder_pb2_grpc.EncoderStub(channel)

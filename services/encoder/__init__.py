"""talkmesh encoder service: raw frames + PCM in, H.264 (NVENC or x264) + AAC/Opus out.

Output is fragmented MP4 by default (init segment, then small fragments as soon as they are
complete, for Media Source Extensions), MPEG-TS, or one whole MP4 with the index in front.
Modules: ``config`` (EncoderConfig), ``backends`` (which H.264 encoder, chosen by a start-up
probe), ``session`` (the PyAV encoding and muxing shared by all backends), ``validation``
(request checks), ``boxes`` (MP4 box helpers), ``server`` (gRPC), ``bench`` (latency/throughput).
"""

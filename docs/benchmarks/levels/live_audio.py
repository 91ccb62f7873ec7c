# ruff: noqa  (throwaway repro scripts of a usage trial, not product code)
"""Send a user's recording as a live audio turn, as a developer would: decode with PyAV to mono s16,
chunk into 100 ms, client.say_audio; save the stream; report events, errors, and the output audio.
usage: live_audio.py FILE OUT.mp4 [--rate R] [--whole] [--raw-wav]"""
import argparse, asyncio, sys, time
import numpy as np, av
from talkmesh.client import TalkmeshClient


def decode(path, rate):
    c = av.open(path)
    st = c.streams.audio[0]
    src_rate = st.rate
    rs = av.AudioResampler(format="s16", layout="mono", rate=rate or src_rate)
    out = []
    for f in c.decode(st):
        for g in rs.resample(f):
            out.append(g.to_ndarray().reshape(-1))
    for g in rs.resample(None):
        out.append(g.to_ndarray().reshape(-1))
    c.close()
    return (np.concatenate(out) if out else np.zeros(0, np.int16)).astype(np.int16), rate or src_rate


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file"); ap.add_argument("out")
    ap.add_argument("--rate", type=int, default=0, help="resample to this rate (0 = the file's)")
    ap.add_argument("--whole", action="store_true", help="send the whole file as one chunk")
    ap.add_argument("--raw-wav", action="store_true", help="send the file's bytes as they are (naive)")
    ap.add_argument("--timeout", type=float, default=60)
    a = ap.parse_args()
    if a.raw_wav:
        pcm = open(a.file, "rb").read(); sr = a.rate or 16000
    else:
        try:
            samples, sr = decode(a.file, a.rate)
        except Exception as e:  # noqa
            print(f"DECODE-FAIL {type(e).__name__}: {e}"); return
        pcm = samples.tobytes()
    n = len(pcm) // 2
    print(f"input {a.file}: {n} samples at {sr} Hz = {n / sr:.3f} s")
    chunk = 2 * sr // 10
    chunks = [pcm] if a.whole else [pcm[i:i + chunk] for i in range(0, len(pcm), chunk)]
    t0 = time.time()
    events = []
    async with TalkmeshClient() as client, client.live() as live:
        print("session", live.started.session_id, "rate", live.started.sample_rate)
        async def feed():
            await live.say_audio(chunks, sr)
        feeder = asyncio.create_task(feed())
        with open(a.out, "wb") as out:
            async for msg in live:
                kind = msg.WhichOneof("kind")
                if kind == "media":
                    out.write(msg.media.data)
                elif kind == "event":
                    ev = msg.event.WhichOneof("kind")
                    events.append((ev, msg.event.frame, time.time() - t0))
                    print(f"  event {ev} frame {msg.event.frame} t={time.time() - t0:.2f}", getattr(msg.event, ev) if ev in ("speaking_stopped",) else "")
                    if ev == "speaking_stopped":
                        break
                elif kind == "error":
                    print("  ERROR", msg.error)
                    events.append(("error", msg.error.code, msg.error.message))
                    break
                if time.time() - t0 > a.timeout:
                    print("  TIMEOUT"); break
        try:
            await feeder
        except Exception as e:  # noqa
            print("  feeder:", type(e).__name__, str(e)[:300])
    print("events", [e[:2] for e in events])


asyncio.run(main())

"""Mouth opening in pauses vs bursts of make_audio.py's recordings, measured on the output MP4.

Opening per frame: mean |frame - frame 0| inside BOX (analyze.py's measure; frame 0 is the resting
mouth). The recordings' layout is known (0-0.5 s pause, 0.5-1.5 s speech, 1.5-2.5 s pause,
2.5-3.5 s speech, 3.5-4 s pause), shifted by the frames the live turn starts at (`speaking_started`'s
frame, 4 here); 0.12 s next to each edge is left out (the mouth's attack/release).
usage: mouth_table.py OUT.mp4... [--box x0,y0,x1,y1] [--start-frame 4]
"""

from __future__ import annotations

import argparse

import av
import numpy as np

SPEECH = ((0.5, 1.5), (2.5, 3.5))
PAUSES = ((0.0, 0.5), (1.5, 2.5), (3.5, 4.0))
EDGE = 0.12


def openings(path: str, box: tuple[float, float, float, float]) -> tuple[np.ndarray, float]:
    with av.open(path) as c:
        vs = c.streams.video[0]
        fps = float(vs.average_rate)
        frames = [f.to_ndarray(format="bgr24") for f in c.decode(vs)]
    h, w = frames[0].shape[:2]
    x0, y0, x1, y1 = box
    sl = (slice(int(y0 * h), int(y1 * h)), slice(int(x0 * w), int(x1 * w)))
    rest = frames[0][sl].astype(np.int16)
    return np.array([np.abs(f[sl].astype(np.int16) - rest).mean() for f in frames]), fps


def select(n: int, fps: float, spans: tuple[tuple[float, float], ...], start: int) -> np.ndarray:
    t = (np.arange(n) - start) / fps
    keep = np.zeros(n, bool)
    for a, b in spans:
        keep |= (t >= a + (EDGE if a > 0 else 0)) & (t < b - EDGE)
    return keep


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--box", default="0.38,0.22,0.52,0.36")
    ap.add_argument("--start-frame", type=int, default=4)
    a = ap.parse_args()
    box = tuple(float(v) for v in a.box.split(","))
    print("| file | frames | pauses mean / max | speech mean / max |")
    print("|---|---|---|---|")
    for f in a.files:
        m, fps = openings(f, box)  # type: ignore[arg-type]
        p, s = m[select(len(m), fps, PAUSES, a.start_frame)], m[select(len(m), fps, SPEECH, a.start_frame)]
        print(f"| {f} | {len(m)} | {p.mean():.1f} / {p.max():.1f} | {s.mean():.1f} / {s.max():.1f} |")


if __name__ == "__main__":
    main()

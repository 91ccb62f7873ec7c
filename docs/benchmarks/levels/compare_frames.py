"""Per-frame difference between two renders of the same input (before/after a change): mean
|pixel difference| over the whole frame and inside the mouth box, and the mouth opening (mean |frame -
frame 0| in the box, as mouth_table.py) of each.
usage: compare_frames.py A.mp4 B.mp4 [--box x0,y0,x1,y1]
"""

from __future__ import annotations

import argparse

import av
import numpy as np


def frames(path: str) -> list[np.ndarray]:
    with av.open(path) as c:
        return [f.to_ndarray(format="bgr24").astype(np.int16) for f in c.decode(c.streams.video[0])]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--box", default="0.38,0.22,0.52,0.36")
    args = ap.parse_args()
    a, b = frames(args.a), frames(args.b)
    h, w = a[0].shape[:2]
    x0, y0, x1, y1 = (float(v) for v in args.box.split(","))
    box = (slice(int(y0 * h), int(y1 * h)), slice(int(x0 * w), int(x1 * w)))
    n = min(len(a), len(b))
    whole = np.array([np.abs(a[i] - b[i]).mean() for i in range(n)])
    mouth = np.array([np.abs(a[i][box] - b[i][box]).mean() for i in range(n)])
    open_a = np.array([np.abs(f[box] - a[0][box]).mean() for f in a[:n]])
    open_b = np.array([np.abs(f[box] - b[0][box]).mean() for f in b[:n]])
    print(
        f"frames {len(a)} / {len(b)}; |A-B| whole frame mean {whole.mean():.2f} max {whole.max():.2f}; "
        f"mouth box mean {mouth.mean():.2f} p95 {np.percentile(mouth, 95):.2f} max {mouth.max():.2f}; "
        f"opening A mean {open_a.mean():.1f} B mean {open_b.mean():.1f}; "
        f"frames with mouth diff > 2: {(mouth > 2).sum()}; corr(open A, open B) {np.corrcoef(open_a, open_b)[0, 1]:.3f}"
    )


if __name__ == "__main__":
    main()

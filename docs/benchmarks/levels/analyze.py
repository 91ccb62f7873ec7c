# ruff: noqa  (throwaway repro scripts of a usage trial, not product code)
"""Decode an output MP4: audio duration/RMS per video frame, video frames, and mouth motion.
Mouth motion: mean |frame - previous frame| inside BOX (x0,y0,x1,y1, fractions of the frame).
usage: analyze.py OUT.mp4 [--png DIR --frames 0,30,60] [--box 0.35,0.6,0.65,0.8]"""
import argparse, os
import numpy as np, av, cv2

ap = argparse.ArgumentParser()
ap.add_argument("f"); ap.add_argument("--png", default=""); ap.add_argument("--frames", default="")
ap.add_argument("--box", default="0.3,0.55,0.7,0.85"); ap.add_argument("--quiet", action="store_true")
a = ap.parse_args()
c = av.open(a.f)
vs = c.streams.video[0] if c.streams.video else None
aud = c.streams.audio[0] if c.streams.audio else None
fps = float(vs.average_rate) if vs else 25
frames, samples, sr = [], [], 0
for pkt in c.demux():
    for fr in pkt.decode():
        if isinstance(fr, av.VideoFrame):
            frames.append(fr.to_ndarray(format="bgr24"))
        else:
            sr = fr.sample_rate
            samples.append(fr.to_ndarray().mean(0) if fr.format.is_planar else fr.to_ndarray().reshape(-1, fr.layout.nb_channels if hasattr(fr.layout,'nb_channels') else len(fr.layout.channels)).mean(1))
c.close()
s = np.concatenate(samples) if samples else np.zeros(0)
print(f"{a.f}: video {len(frames)} frames {frames[0].shape[1]}x{frames[0].shape[0]} @ {fps:.0f} = {len(frames)/fps:.2f} s; "
      f"audio {len(s)/sr if sr else 0:.2f} s @ {sr} Hz, peak {np.abs(s).max() if len(s) else 0:.3f}")
h, w = frames[0].shape[:2]
x0, y0, x1, y1 = [float(v) for v in a.box.split(",")]
box = (slice(int(y0*h), int(y1*h)), slice(int(x0*w), int(x1*w)))
spf = int(sr / fps) if sr else 0
rows = []
for i, f in enumerate(frames):
    m = np.abs(f[box].astype(np.int16) - frames[0][box].astype(np.int16)).mean()
    e = np.sqrt(np.mean(s[i*spf:(i+1)*spf]**2)) if spf and i*spf < len(s) else 0.0
    rows.append((i, e, m))
r = np.array(rows)
if len(r) > 2:
    voiced = r[:, 1] > 0.02
    print(f"  mouth motion: voiced frames {voiced.sum()} mean {r[voiced,2].mean() if voiced.any() else 0:.2f}; "
          f"quiet frames {(~voiced).sum()} mean {r[~voiced,2].mean() if (~voiced).any() else 0:.2f}; corr {np.corrcoef(r[:,1], r[:,2])[0,1] if r[:,1].std()>0 else float('nan'):.2f}")
if not a.quiet:
    print("  per 5 frames (i, rms, mouth):", " ".join(f"{int(i)}:{e:.2f}/{m:.1f}" for i, e, m in rows[::5]))
if a.png:
    os.makedirs(a.png, exist_ok=True)
    idx = [int(v) for v in a.frames.split(",")] if a.frames else [0, len(frames)//4, len(frames)//2, 3*len(frames)//4]
    tiles = [frames[min(i, len(frames)-1)] for i in idx]
    th = 360
    tiles = [cv2.resize(t, (int(t.shape[1]*th/t.shape[0]), th)) for t in tiles]
    for t, i in zip(tiles, idx): cv2.putText(t, str(i), (5, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0,0,255), 2)
    cv2.imwrite(os.path.join(a.png, os.path.basename(a.f).rsplit(".",1)[0] + ".png"), np.hstack(tiles))

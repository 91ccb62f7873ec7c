# ruff: noqa  (throwaway repro scripts of a usage trial, not product code)
"""Test recordings as users have them. Speech-like signal: voiced bursts with pauses.
Layout (seconds): 0-0.5 silence, 0.5-1.5 voiced, 1.5-2.5 silence, 2.5-3.5 voiced, 3.5-4 silence."""
import sys, os, numpy as np, av, soundfile as sf

OUT = sys.argv[1] if len(sys.argv) > 1 else "in"
os.makedirs(OUT, exist_ok=True)


def speechlike(sr, dur=4.0, amp=0.3):
    t = np.arange(int(sr * dur)) / sr
    f0 = 140 + 20 * np.sin(2 * np.pi * 0.7 * t)
    ph = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * ph) / k for k in range(1, 12))
    env = 0.5 * (1 + np.sin(2 * np.pi * 4 * t))  # syllables at 4 Hz
    gate = ((t >= 0.5) & (t < 1.5)) | ((t >= 2.5) & (t < 3.5))
    y = amp * x / np.max(np.abs(x)) * env * gate
    return y.astype(np.float32)


def write_av(path, fmt, codec, sr, y, layout="mono"):
    c = av.open(path, "w", format=fmt)
    s = c.add_stream(codec, rate=sr, layout=layout)
    data = y if y.ndim == 2 else y[None, :]
    fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(data.astype(np.float32)), format="fltp", layout=layout)
    fr.sample_rate = sr
    for p in s.encode(fr):
        c.mux(p)
    for p in s.encode(None):
        c.mux(p)
    c.close()


y44 = speechlike(44100)
sf.write(f"{OUT}/stereo44k.wav", np.stack([y44, y44 * 0.8], 1), 44100, subtype="PCM_16")
sf.write(f"{OUT}/mono48k.wav", speechlike(48000), 48000, subtype="PCM_16")
sf.write(f"{OUT}/phone8k.wav", speechlike(8000), 8000, subtype="PCM_16")
sf.write(f"{OUT}/float32_16k.wav", speechlike(16000), 16000, subtype="FLOAT")
sf.write(f"{OUT}/short02.wav", speechlike(16000, 4.0)[8000:11200], 16000, subtype="PCM_16")  # 0.2 s voiced
sf.write(f"{OUT}/silence.wav", np.zeros(16000 * 3, np.float32), 16000, subtype="PCM_16")
sf.write(f"{OUT}/clipped.wav", np.clip(speechlike(16000) * 10, -1, 1), 16000, subtype="PCM_16")
sf.write(f"{OUT}/long5min.wav", np.tile(speechlike(16000), 75), 16000, subtype="PCM_16")
sf.write(f"{OUT}/hires96k.wav", speechlike(96000), 96000, subtype="PCM_16")
write_av(f"{OUT}/voice.mp3", "mp3", "mp3", 44100, y44)
write_av(f"{OUT}/voice.m4a", "mp4", "aac", 44100, y44)
write_av(f"{OUT}/voice.ogg", "ogg", "libopus", 48000, speechlike(48000))
write_av(f"{OUT}/voice.webm", "webm", "libopus", 48000, speechlike(48000))
import shutil
shutil.copy(f"{OUT}/voice.mp3", f"{OUT}/wrongext.wav")
b = open(f"{OUT}/mono48k.wav", "rb").read()
open(f"{OUT}/truncated.wav", "wb").write(b[:len(b) // 3])
open(f"{OUT}/garbage.wav", "wb").write(b"RIFF" + os.urandom(5000))
print(sorted(os.listdir(OUT)))

# room noise, mains hum, a quiet (far-from-mic) speaker, a 15 kHz tone (bandwidth check)
rng = np.random.default_rng(0)
y16 = speechlike(16000)
sf.write(f"{OUT}/noisy.wav", y16 + 0.02 * rng.standard_normal(len(y16)).astype(np.float32), 16000, subtype="PCM_16")
sf.write(f"{OUT}/hum.wav", y16 + 0.05 * np.sin(2 * np.pi * 50 * np.arange(len(y16)) / 16000), 16000, subtype="PCM_16")
sf.write(f"{OUT}/quiet.wav", y16 * 0.08, 16000, subtype="PCM_16")
t = np.arange(2 * 48000) / 48000
sf.write(f"{OUT}/tone15k_48k.wav", (0.2 * np.sin(2 * np.pi * 15000 * t) + 0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 48000, subtype="PCM_16")

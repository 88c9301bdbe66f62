"""Tiny Speech Commands folders in the archive's layout, with real 16-bit wav files.

Each word is a harmonic tone of its own pitch under an envelope and a little noise, so a small
network can tell the words apart; clips are shorter than 1 s by default (the true length
matters to the speed change) and speakers are split between the lists by a hash of their id,
as in the real archive.
"""
import hashlib
import os

import numpy as np

RATE = 16000
PITCH = {"yes": 150, "no": 210, "up": 280, "down": 340, "left": 400, "right": 470, "on": 540,
         "off": 610, "stop": 680, "go": 750, "bed": 820, "cat": 900, "backward": 980}


def speechlike(rng, seconds=1.0, pitch=None, rate=RATE) -> np.ndarray:
    """A voiced-speech-like int16 clip: harmonics of a wavering pitch, a formant-ish tilt, an
    envelope, and a quiet noise floor (a spectrum spanning ~80 dB, like a recording)."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    f0 = (pitch or rng.uniform(100, 300)) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(1, 3) * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(np.sin(k * phase) / k ** 1.5 * (1 + 0.5 * np.sin(2 * np.pi * 0.37 * k * t))
            for k in range(1, 25))
    centre, width = rng.uniform(0.35, 0.65) * seconds, rng.uniform(0.1, 0.25) * seconds
    x = x * np.exp(-((t - centre) / width) ** 2) + rng.normal(0, 3e-4, n)
    x = x / np.abs(x).max() * rng.uniform(0.1, 0.8)
    return np.round(x * 32767).astype(np.int16)


def write_wav(path, samples, rate=RATE):
    import soundfile

    os.makedirs(os.path.dirname(path), exist_ok=True)
    soundfile.write(path, samples, rate, subtype="PCM_16")


def which_set(speaker: str, valid_pct: int, test_pct: int) -> str:
    h = int(hashlib.sha1(speaker.encode()).hexdigest(), 16) % 100
    return "validation" if h < valid_pct else "testing" if h < valid_pct + test_pct else "training"


def write_gsc(root, words=("yes", "no", "up", "bed", "cat"), clips_per_word=12, speakers=6,
              seed=0, seconds=(0.5, 1.0), valid_pct=25, test_pct=25, noise_seconds=(2.3, 1.9)):
    """Write the folder; return {split: {word: count}} (split: training/validation/testing)."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    ids = [f"{rng.integers(1 << 31):08x}" for _ in range(speakers)]
    counts = {s: {} for s in ("training", "validation", "testing")}
    lists = {"validation": [], "testing": []}
    for word in words:
        for k in range(clips_per_word):
            speaker = ids[k % speakers]
            rel = f"{word}/{speaker}_nohash_{k // speakers}.wav"
            clip = speechlike(rng, rng.uniform(*seconds), PITCH.get(word))
            write_wav(os.path.join(root, rel), clip)
            split = which_set(speaker, valid_pct, test_pct)
            counts[split][word] = counts[split].get(word, 0) + 1
            if split in lists:
                lists[split].append(rel)
    for split, name in (("validation", "validation_list.txt"), ("testing", "testing_list.txt")):
        with open(os.path.join(root, name), "w") as f:
            f.write("".join(rel + "\n" for rel in lists[split]))
    for i, seconds_ in enumerate(noise_seconds):
        noise = rng.normal(0, 0.1, int(seconds_ * RATE))
        write_wav(os.path.join(root, "_background_noise_", f"noise_{i}.wav"),
                  np.round(np.clip(noise, -1, 1) * 32767).astype(np.int16))
    with open(os.path.join(root, "README.md"), "w") as f:
        f.write("fake Speech Commands for tests\n")
    return counts

"""The Speech Commands features (docs/datasets.md) as one batch transform that runs on the device.

Train: amplitude, speed, fix to 1 s, STFT, phase-vocoder stretch, frame shift, fix to 32
frames, background noise (a noise row put through the same steps with its own draws), mel dB.
Evaluation ("cs", "test"): fix to 1 s, STFT, mel dB; with ``multi_crop`` the test split gets
4 views per clip (docs/datasets.md), whose softmax the evaluation averages.

Every random number comes from the clip's own seeded generator: 19 uniforms in a fixed layout
(``Draws``), drawn whether or not a step fires, so a clip's augmentation depends on its seed
only — the same for any batch composition, worker count or resume point.
"""
from dataclasses import dataclass

import torch

from utils.run.data import sample_generators

from . import audio_features as af
from .gsc import CLIP

FRAMES = af.frame_count(CLIP)                     # 32
P_FIRE = 0.5                                      # each (p) step of the recipe (docs/datasets.md)
AMPLITUDE = (0.7, 1.1)
MAX_SCALE = 0.2                                   # speed and stretch: 1 + U(−0.2, 0.2)
MAX_SHIFT = 8                                     # randint(−8, 8), inclusive
MAX_NOISE = 0.45
STRETCH_FRAMES = af.max_stretch_frames(FRAMES, 1 - MAX_SCALE)  # 40
N_UNIFORMS = 19
CPU_CHUNK = 8                                     # clips per slice on a CPU (see __call__)


@dataclass
class ChainDraws:
    """The draws of steps 1–7 for one chain (the clip's, or its noise row's), on the CPU."""
    amp_fire: torch.Tensor
    gain: torch.Tensor
    speed_fire: torch.Tensor
    speed_scale: torch.Tensor
    stretch_fire: torch.Tensor
    stretch_rate: torch.Tensor
    shift_fire: torch.Tensor
    shift: torch.Tensor

    @classmethod
    def from_uniforms(cls, u: torch.Tensor) -> "ChainDraws":
        """``u``: B×8 uniforms in [0, 1), float64 (``random.uniform(a, b) = a + (b−a)·u``)."""
        lo, hi = AMPLITUDE
        return cls(u[:, 0] < P_FIRE, lo + (hi - lo) * u[:, 1],
                   u[:, 2] < P_FIRE, -MAX_SCALE + 2 * MAX_SCALE * u[:, 3],
                   u[:, 4] < P_FIRE, 1 + (-MAX_SCALE + 2 * MAX_SCALE * u[:, 5]),
                   u[:, 6] < P_FIRE,
                   (u[:, 7] * (2 * MAX_SHIFT + 1)).floor().long() - MAX_SHIFT)

    def subset(self, rows: torch.Tensor) -> "ChainDraws":
        return ChainDraws(**{k: v[rows] for k, v in vars(self).items()})

    def per_clip(self, i: int) -> dict:
        """Clip ``i``'s draws as Python numbers (for the per-sample reference chain)."""
        return {k: v[i].item() for k, v in vars(self).items()}


@dataclass
class Draws:
    clip: ChainDraws
    noise: ChainDraws
    noise_fire: torch.Tensor
    noise_row: torch.Tensor
    noise_p: torch.Tensor

    @classmethod
    def from_seeds(cls, seeds: torch.Tensor, noise_rows: int) -> "Draws":
        u = torch.stack([torch.rand(N_UNIFORMS, dtype=torch.float64, generator=g)
                         for g in sample_generators(seeds)])
        return cls(ChainDraws.from_uniforms(u[:, 0:8]), ChainDraws.from_uniforms(u[:, 8:16]),
                   u[:, 16] < P_FIRE, (u[:, 17] * noise_rows).floor().long(),
                   MAX_NOISE * u[:, 18])

    def subset(self, rows: slice) -> "Draws":
        return Draws(self.clip.subset(rows), self.noise.subset(rows), self.noise_fire[rows],
                     self.noise_row[rows], self.noise_p[rows])

    def per_clip(self, i: int) -> dict:
        return {"clip": self.clip.per_clip(i), "noise": self.noise.per_clip(i),
                "noise_fire": bool(self.noise_fire[i]), "noise_row": int(self.noise_row[i]),
                "noise_p": float(self.noise_p[i])}


def _on(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A draw (made on the CPU) on the device without waiting for it: a copy from pageable
    memory blocks the host until the GPU has it, one from pinned memory does not."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _rows(fire: torch.Tensor) -> torch.Tensor:
    """The clips a step fires on: the draws are on the CPU, so a step runs on just those
    rows without waiting for the device."""
    return fire.nonzero().flatten()


class GscTransform:
    """``batch_transform(x, seeds, split)`` for the driver (utils/run/data.py): ``x`` is the
    collated ``{"wave": int16 B×W, "length": B}`` of ``datasets.gsc.GscClips``; returns
    B×1×32×32 (mel × frames), or B×4×1×32×32 for the test split with ``multi_crop``."""

    def __init__(self, noise: torch.Tensor, multi_crop: bool = False):
        self.noise_int16 = noise  # rows × 16000, moved to the device on first use
        self.multi_crop = multi_crop
        self.constants = af.Constants()
        self._noise = {}

    def __call__(self, x: dict, seeds: torch.Tensor | None, split: str) -> torch.Tensor:
        wave = x["wave"].float() / 32768  # what librosa.load gives for 16-bit PCM
        # On a CPU, whole-batch intermediates (tens of MB each) fall out of the caches and
        # every op pays fresh page faults: slices of a few clips run up to several times
        # faster. A GPU wants the whole batch at once.
        step = CPU_CHUNK if wave.device.type == "cpu" else len(wave)
        parts = [slice(i, i + step) for i in range(0, len(wave), step)]
        if split == "train":
            if seeds is None:
                raise ValueError("the training transform needs the per-sample seeds")
            draws = Draws.from_seeds(seeds, len(self.noise_int16))
            return torch.cat([self.train(wave[s], x["length"][s], draws.subset(s))
                              for s in parts])
        features = torch.cat([self.evaluate(wave[s]) for s in parts])
        return multi_crop_views(features) if split == "test" and self.multi_crop else features

    def evaluate(self, wave: torch.Tensor) -> torch.Tensor:
        c = self.constants.on(wave.device)
        return af.mel_db(af.stft(af.fix_length(wave, CLIP), c["window"]), c["mel_t"])[:, None]

    def train(self, wave: torch.Tensor, length: torch.Tensor, d: Draws) -> torch.Tensor:
        dev = wave.device
        c = self.constants.on(dev)
        S = self.augment(wave, length, d.clip, c)
        picked = _rows(d.noise_fire)
        if len(picked):  # the noise chain runs on the clips whose noise step fires
            rows = self.noise_rows(dev)[_on(d.noise_row[picked], dev)]
            N = self.augment(rows, torch.full((len(picked),), CLIP, device=dev),
                             d.noise.subset(picked), c)
            at = _on(picked, dev)
            S = S.index_copy(0, at, af.mix(S[at], N, _on(d.noise_p[picked], dev)))
        return af.mel_db(S, c["mel_t"])[:, None]

    @staticmethod
    def augment(wave: torch.Tensor, length: torch.Tensor, d: ChainDraws, c: dict) -> torch.Tensor:
        """Steps 1–7 of the recipe (docs/datasets.md): float32 B×W waves → complex64
        B×32×1025."""
        dev = wave.device
        x = af.amplitude(wave, _on(d.amp_fire, dev), _on(d.gain, dev))
        x16 = af.fix_length(x, CLIP)
        rows = _rows(d.speed_fire)
        if len(rows):
            at = _on(rows, dev)
            fired = af.speed(x[at], length[at], _on(d.speed_scale[rows], dev), CLIP)
            x16 = x16.index_copy(0, at, fired)
        S = af.stft(x16, c["window"])
        shift = _on(torch.where(d.shift_fire, d.shift, 0), dev)
        out = af.shift_frames(S, torch.full((len(wave),), FRAMES, device=dev), shift, FRAMES)
        rows = _rows(d.stretch_fire)
        if len(rows):
            at = _on(rows, dev)
            stretched, count = af.phase_vocoder(S[at], _on(d.stretch_rate[rows], dev),
                                                c["phi_advance"], STRETCH_FRAMES)
            out = out.index_copy(0, at, af.shift_frames(stretched, count, shift[at], FRAMES))
        return out

    def noise_rows(self, device) -> torch.Tensor:
        key = str(device)
        if key not in self._noise:
            self._noise[key] = self.noise_int16.to(device).float() / 32768
        return self._noise[key]


def multi_crop_views(features: torch.Tensor) -> torch.Tensor:
    """B×C×mel×frames → B×4×C×mel×frames: the clip, and three 1-frame crops edge-replicated
    back to full width — shifted by +1 frame (frame t shows t+1), cropped by one frame at both
    ends (centre), shifted by −1 frame."""
    T = features.shape[-1]
    t = torch.arange(T, device=features.device)
    views = [t, (t + 1).clamp(max=T - 1), t.clamp(1, T - 2), (t - 1).clamp(min=0)]
    return torch.stack([features[..., v] for v in views], 1)

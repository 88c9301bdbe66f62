"""Batched audio steps on the device: speed change, STFT, phase vocoder, frame shift, mel dB.

Each function takes a whole batch (B clips) and per-sample parameters and equals, clip by clip,
the numpy/librosa 0.11 call the reference made per sample (the tests compare them step by
step). The precision of each step follows the reference's, because that is what the
equality needs:
- the speed change interpolates in float64, like ``np.interp``;
- the STFT frames are windowed and transformed in float64 and rounded to complex64, like
  ``librosa.stft`` (float64 window × float32 frames); a float32 FFT errs relative to each
  frame's loudest bins, which shows in the quiet mel bands of loud frames (measured: 3·10⁻⁴
  dB on speech-like clips, against 2·10⁻⁵ dB here);
- the phase vocoder's accumulator is float32, rounded at every step like librosa's
  ``phase_acc += …``: the phases grow to ~6·10⁴ rad, where one float32 step is 0.004 rad, so
  an exact float64 sum differs from librosa's output by ~10⁻⁴ overall and ~1 % in the
  highest bins; replaying the rounding brings that to ~10⁻⁵.

On a CPU the FFT runs in numpy (librosa's pocketfft: ~3× faster than torch's there) and the
batch is worked through in slices of a few clips (datasets/gsc_transform.py).
"""
import math

import numpy as np
import torch

N_FFT, HOP = 2048, 512
RATE = 16000
N_MELS = 32
TOP_DB, AMIN = 80.0, 1e-10
TWO_PI = 2.0 * np.pi  # as the reference wrote it: 2.0 * np.pi * round(dphase / (2.0 * np.pi))


def amplitude(x: torch.Tensor, fire: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """``samples * gain`` (float32, the gain rounded to float32 as numpy does) where fired."""
    return torch.where(fire[:, None], x * gain.to(x.dtype)[:, None], x)


def speed(x: torch.Tensor, length: torch.Tensor, scale: torch.Tensor, out_len: int) -> torch.Tensor:
    """``np.interp(np.arange(0, n, 1/(1+scale)), np.arange(n), x[:n])`` cut or zero-padded to
    ``out_len``, per clip: ``n`` is its true length (``x`` is zero-padded beyond it); positions
    past the last sample take it, as np.interp does."""
    step = 1.0 / (1.0 + scale.double())                                   # [B]
    count = torch.ceil(length.double() / step)                            # len(np.arange(...))
    k = torch.arange(out_len, device=x.device)
    pos = k[None].double() * step[:, None]
    last = (length - 1).clamp(min=0)[:, None]
    j = torch.minimum(pos.long(), (last - 1).clamp(min=0)).clamp(max=x.shape[1] - 2)
    x64 = x.double()
    left, right = x64.gather(1, j), x64.gather(1, j + 1)
    inner = (right - left) * (pos - j) + left                             # np.interp's formula
    out = torch.where(pos >= last, x64.gather(1, last), inner)
    return torch.where(k[None] < count[:, None], out, 0.0).to(x.dtype)


def fix_length(x: torch.Tensor, n: int) -> torch.Tensor:
    """Truncate or zero-pad the last axis to ``n``."""
    if x.shape[-1] >= n:
        return x[..., :n]
    return torch.nn.functional.pad(x, (0, n - x.shape[-1]))


class Constants:
    """Per-device tensors computed once: the Hann window, the mel filter bank, the phase
    vocoder's expected phase advance."""

    def __init__(self):
        self._by_device = {}
        self._mel = None

    def mel_basis(self) -> np.ndarray:
        if self._mel is None:
            import librosa  # lazily: its import takes a second; only the filter bank is needed

            # the reference's call: slaney-normalised, 0–sr/2, float32
            self._mel = librosa.filters.mel(sr=RATE, n_fft=N_FFT, n_mels=N_MELS)
        return self._mel

    def on(self, device: torch.device) -> dict:
        key = str(device)
        if key not in self._by_device:
            freqs = np.fft.rfftfreq(n=N_FFT, d=1.0 / TWO_PI)  # librosa's fft_frequencies(sr=2π)
            self._by_device[key] = {
                "window": torch.hann_window(N_FFT, periodic=True, dtype=torch.float64,
                                            device=device),
                "mel_t": torch.from_numpy(self.mel_basis().T.copy()).to(device),
                "phi_advance": torch.from_numpy(HOP * freqs).to(device),
            }
        return self._by_device[key]


# Spectrograms are B×frames×1025 here (librosa's are 1025×frames per clip): one frame of one
# clip is a contiguous row, which makes the per-clip frame gathers and the phase vocoder's
# frame-by-frame accumulation cheap.

def stft(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """``librosa.stft(x, n_fft=2048, hop_length=512, pad_mode="reflect")`` of each clip, as
    B×frames×1025 complex64."""
    padded = torch.nn.functional.pad(x.double()[:, None], (N_FFT // 2, N_FFT // 2),
                                     mode="reflect")[:, 0]
    frames = padded.unfold(-1, N_FFT, HOP) * window
    if frames.device.type == "cpu":  # numpy's FFT (librosa's) is ~3× faster than torch's here
        return torch.from_numpy(np.fft.rfft(frames.numpy()).astype(np.complex64))
    return torch.fft.rfft(frames).to(torch.complex64)


def phase_vocoder(D: torch.Tensor, rate: torch.Tensor, phi_advance: torch.Tensor,
                  frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """librosa 0.11's ``phase_vocoder(D, rate=rate, hop_length=512)`` for each clip with its
    own rate, as B×``frames``×F (zero beyond each clip's ``ceil(T/rate)`` output frames), and
    those counts.

    Output frame t reads input position ``t·rate``: its magnitude interpolates linearly
    between the two neighbouring frames, its phase is the first frame's phase plus the
    wrapped phase advances between the frames at the positions before it."""
    B, T, F = D.shape
    rate = rate.double()
    count = torch.ceil(T / rate).long()  # len(np.arange(0, T, rate))
    steps = torch.arange(frames, dtype=torch.float64, device=D.device)[None] * rate[:, None]
    # positions past the clip read the two zero frames librosa pads with: magnitude 0 there
    j = steps.long().clamp(max=T)
    alpha = (steps - j).float()[..., None]                                # np.mod(step, 1.0)
    padded = torch.nn.functional.pad(D, (0, 0, 0, 2))
    mag_all, ang_all = magnitude(padded), padded.angle()                  # float32, as numpy
    b = torch.arange(B, device=D.device)[:, None]
    mag = torch.lerp(mag_all[b, j], mag_all[b, j + 1], alpha)
    # the advance between input frames k and k+1, computed once per k: the float32
    # difference first, then float64, as numpy evaluates angle1 - angle0 - phi_advance
    dphase = (ang_all[:, 1:] - ang_all[:, :-1]).double() - phi_advance
    dphase = dphase - TWO_PI * torch.round(dphase / TWO_PI)
    advance = (phi_advance + dphase)[b, j]
    phase = torch.empty(B, frames, F, device=D.device)
    acc = ang_all[:, 0]
    for t in range(frames):  # the float32 accumulator, rounded at every step as librosa does
        phase[:, t] = acc
        acc = (acc.double() + advance[:, t]).float()
    return polar(mag, phase), count


def polar(mag: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """``mag·e^{i·phase}`` in complex64. The float32 phases reach ~6·10⁴ rad, where torch's
    float32 cos/sin take a slow path on a CPU; reducing them to [0, 2π) in float64 first
    (exact to ~10⁻¹¹ rad, then rounded to float32) costs less than that path and changes the
    result by < 3·10⁻⁷ of ``mag``."""
    wide = phase.double()
    reduced = (wide - TWO_PI * torch.floor(wide * (1 / TWO_PI))).float()
    return torch.complex(torch.cos(reduced) * mag, torch.sin(reduced) * mag)


def magnitude(S: torch.Tensor) -> torch.Tensor:
    """``|S|`` to an ulp of numpy's hypot; torch's complex abs is ~5× slower on a CPU."""
    parts = torch.view_as_real(S)
    return (parts[..., 0].square() + parts[..., 1].square()).sqrt()


def shift_frames(S: torch.Tensor, valid: torch.Tensor, shift: torch.Tensor,
                 frames: int) -> torch.Tensor:
    """The reference's frame shift (pad ``shift`` zero frames on one side, cut as many on the
    other, so the clip keeps its ``valid`` frames), then the fix to ``frames``: output frame t
    is input frame t+shift where both t and t+shift are below ``valid``, else zero."""
    t = torch.arange(frames, device=S.device)[None, :]
    src = t + shift[:, None]
    ok = (src >= 0) & (src < valid[:, None]) & (t < valid[:, None])
    b = torch.arange(S.shape[0], device=S.device)[:, None]
    return S[b, src.clamp(0, S.shape[1] - 1)] * ok[..., None]


def mix(S: torch.Tensor, N: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``S·(1−p) + N·p`` in complex64 (numpy rounds the python-float factors to float32)."""
    a = (1.0 - p.double()).float()[:, None, None]
    return S * a + N * p.float()[:, None, None]


def mel_db(S: torch.Tensor, mel_t: torch.Tensor) -> torch.Tensor:
    """``power_to_db(mel @ |S|², ref=np.max, amin=1e-10, top_db=80)`` per clip, float32,
    B×32 mel×frames; an all-zero clip gives all zeros."""
    parts = torch.view_as_real(S)
    power = parts[..., 0].square() + parts[..., 1].square()              # |S|², to an ulp
    m = torch.matmul(power, mel_t).transpose(1, 2)                       # B×32×frames
    log = 10.0 * torch.log10(m.clamp(min=AMIN))
    ref = m.amax(dim=(1, 2), keepdim=True)
    log = log - 10.0 * torch.log10(ref.clamp(min=AMIN))
    return torch.maximum(log, log.amax(dim=(1, 2), keepdim=True) - TOP_DB)


def frame_count(samples: int) -> int:
    """STFT frames of a centred clip: 1 + ⌊samples/hop⌋ (32 for 1 s)."""
    return 1 + samples // HOP


def max_stretch_frames(frames: int, min_rate: float) -> int:
    """The most output frames a phase vocoder at ``rate ≥ min_rate`` gives (40 at 0.8)."""
    return math.ceil(frames / min_rate)

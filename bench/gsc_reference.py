"""The authors' per-sample Speech Commands chain, with librosa 0.11 calls — for the tests (the
reference each batched step must equal) and the bench (the speed to beat). Not used by runs.

Each step is written as the reference's transform was (numpy on one clip), except that its
random draws are arguments, so a test can hand it the draws our batched chain used. Two
adaptations to librosa 0.11: arguments are keywords (positional ones were removed), and
``pad_mode="reflect"`` is explicit — the reference's librosa padded centred frames by
reflection, 0.11's default is zeros.
"""
import librosa
import numpy as np

RATE, N_FFT, HOP, N_MELS, FRAMES = 16000, 2048, 512, 32, 32


def load(path: str) -> np.ndarray:
    """LoadAudio: float32 samples at 16 kHz."""
    samples, _ = librosa.load(path, sr=RATE)
    return samples


def amplitude(samples, fire, gain):
    return samples * gain if fire else samples


def speed(samples, fire, scale):
    if not fire:
        return samples
    speed_fac = 1.0 / (1 + scale)
    return np.interp(np.arange(0, len(samples), speed_fac), np.arange(0, len(samples)),
                     samples).astype(np.float32)


def fix_length(samples, length=RATE):
    if length < len(samples):
        return samples[:length]
    if length > len(samples):
        return np.pad(samples, (0, length - len(samples)), "constant")
    return samples


def to_stft(samples):
    return librosa.stft(samples, n_fft=N_FFT, hop_length=HOP, pad_mode="reflect")


def stretch(stft, fire, rate):
    if not fire:
        return stft
    return librosa.phase_vocoder(stft, rate=rate, hop_length=HOP)


def shift(stft, fire, frames):
    if not fire:
        return stft
    a, b = -min(0, frames), max(0, frames)
    stft = np.pad(stft, ((0, 0), (a, b)), "constant")
    return stft[:, b:] if a == 0 else stft[:, 0:-a]


def fix_frames(stft, frames=FRAMES):
    t = stft.shape[1]
    if t > frames:
        return stft[:, 0:frames]
    if t < frames:
        return np.pad(stft, ((0, 0), (0, frames - t)), "constant")
    return stft


def add_noise(stft, fire, noise_stft, p):
    if not fire:
        return stft
    return stft * (1 - p) + noise_stft * p


_MEL = {}


def mel_db(stft):
    """ToMelSpectrogramFromSTFT."""
    if "basis" not in _MEL:  # the reference rebuilt it per clip; cached here to time the rest
        _MEL["basis"] = librosa.filters.mel(sr=RATE, n_fft=N_FFT, n_mels=N_MELS)
    s = np.dot(_MEL["basis"], np.abs(stft) ** 2.0)
    return librosa.power_to_db(s, ref=np.max)


def eval_features(samples):
    """FixAudioLength + ToMelSpectrogram."""
    s = librosa.feature.melspectrogram(y=fix_length(samples), sr=RATE, n_mels=N_MELS,
                                       pad_mode="reflect")
    return librosa.power_to_db(s, ref=np.max)


def augment(samples, d: dict):
    """Steps 1–7 with the draws ``d`` (keys as in datasets.gsc_transform.ChainDraws)."""
    x = amplitude(samples, d["amp_fire"], d["gain"])
    x = speed(x, d["speed_fire"], d["speed_scale"])
    S = to_stft(fix_length(x))
    S = stretch(S, d["stretch_fire"], d["stretch_rate"])
    S = shift(S, d["shift_fire"], d["shift"])
    return fix_frames(S)


def train_features(samples, draws: dict, noise_rows):
    """The whole training chain of one clip: ``draws`` has "clip" and "noise" (chain draws)
    and noise_fire, noise_row, noise_p; ``noise_rows`` the float32 1-s noise rows."""
    S = augment(samples, draws["clip"])
    if draws["noise_fire"]:
        N = augment(noise_rows[draws["noise_row"]], draws["noise"])
        S = add_noise(S, True, N, draws["noise_p"])
    return mel_db(S)

"""The batched Speech Commands features against librosa 0.11 itself, on real-shaped clips
(1 s at 16 kHz, 16-bit): the evaluation features, the phase vocoder, and every step of the
training chain against a per-sample numpy/librosa rendering with the same draws."""
import numpy as np
import pytest
import torch

from bench import gsc_reference as ref
from datasets import audio_features as af
from datasets.gsc_transform import (FRAMES, MAX_SHIFT, STRETCH_FRAMES, ChainDraws, Draws,
                                    GscTransform, multi_crop_views)
from tests.fake_gsc import speechlike

B = 12


@pytest.fixture(scope="module")
def clips():
    """B clips as the dataset delivers them (int16, zero-padded to 1 s, true lengths): ten of
    1 s, one of 0.62 s, one silent."""
    rng = np.random.default_rng(5)
    waves = [speechlike(rng, 1.0) for _ in range(B - 2)] + [speechlike(rng, 0.62)]
    waves.append(np.zeros(16000, np.int16))
    lengths = [len(w) for w in waves]
    padded = np.stack([np.pad(w, (0, 16000 - len(w))) for w in waves])
    return torch.from_numpy(padded), torch.tensor(lengths)


@pytest.fixture(scope="module")
def noise():
    rng = np.random.default_rng(6)
    return torch.from_numpy(np.round(rng.normal(0, 0.1, (5, 16000)).clip(-1, 1) * 32767)
                            .astype(np.int16))


@pytest.fixture(scope="module")
def consts():
    return af.Constants().on(torch.device("cpu"))


def floats(wave, length, i):
    """Clip i as the reference's LoadAudio gave it: float32 of its true length."""
    return (wave[i, :int(length[i])].numpy().astype(np.float32) / 32768).astype(np.float32)


def test_eval_features_equal_librosa(clips):
    wave, length = clips
    ours = GscTransform(torch.zeros(1, 16000, dtype=torch.int16))(
        {"wave": wave, "length": length}, None, "test")
    assert ours.shape == (B, 1, 32, 32) and ours.dtype == torch.float32
    for i in range(B):
        theirs = ref.eval_features(floats(wave, length, i))
        assert theirs.shape == (32, 32)
        assert np.abs(ours[i, 0].numpy() - theirs).max() <= 1e-3, i
    assert float(ours[-1].abs().max()) == 0  # the silent clip: all zeros
    assert float(ours[0].max()) == 0 and float(ours[0].min()) == -80  # ref = max, top_db 80


@pytest.mark.parametrize("rates", [[0.8, 0.8137, 0.95, 1.0, 1.05, 1.1999]])
def test_phase_vocoder_equals_librosa(clips, consts, rates):
    wave, length = clips
    k = len(rates)
    S = af.stft(wave[:k].float() / 32768, consts["window"])
    rate = torch.tensor(rates, dtype=torch.float64)
    ours, count = af.phase_vocoder(S, rate, consts["phi_advance"], STRETCH_FRAMES)
    for i in range(k):
        theirs = librosa_pv(S[i].numpy().T, rates[i])
        assert int(count[i]) == theirs.shape[1]
        got = ours[i, :theirs.shape[1]].numpy().T
        assert np.linalg.norm(got - theirs) <= 1e-4 * np.linalg.norm(theirs), i
        assert np.abs(got - theirs).max() <= 1e-4 * np.abs(theirs).max(), i
        assert not ours[i, theirs.shape[1]:].abs().any()


def librosa_pv(D, rate):
    import librosa
    return librosa.phase_vocoder(D, rate=rate, hop_length=512)


# --- the training chain, step by step ----------------------------------------------------------

def forced(draws: ChainDraws, pattern: int) -> ChainDraws:
    """The same draws with the fire flags set by the bits of ``pattern + i`` per clip, so
    every step is seen both fired and not."""
    bits = torch.tensor([[(pattern + i) >> b & 1 for b in range(4)] for i in range(B)]).bool()
    return ChainDraws(bits[:, 0], draws.gain, bits[:, 1], draws.speed_scale, bits[:, 2],
                      draws.stretch_rate, bits[:, 3], draws.shift)


@pytest.fixture(scope="module")
def draws(noise):
    d = Draws.from_seeds(torch.arange(100, 100 + B), len(noise))
    d.clip = forced(d.clip, 3)
    d.noise = forced(d.noise, 9)
    d.noise_fire = torch.arange(B) % 3 != 0
    d.clip.speed_scale[0], d.clip.speed_scale[1] = -0.2, 0.2  # both ends of the range
    d.clip.shift[:4] = torch.tensor([-MAX_SHIFT, MAX_SHIFT, -3, 5])
    return d


def test_each_training_step_equals_the_per_sample_rendering(clips, consts, draws):
    wave, length = clips
    d = draws.clip
    x = wave.float() / 32768
    # 1. amplitude: exact
    amp = af.amplitude(x, d.amp_fire, d.gain)
    ref_amp = [ref.amplitude(floats(wave, length, i), bool(d.amp_fire[i]), float(d.gain[i]))
               for i in range(B)]
    for i in range(B):
        assert np.array_equal(amp[i, :int(length[i])].numpy(), ref_amp[i])
        assert ref_amp[i].dtype == np.float32
    # 2–3. speed (on every clip), then the fix to 1 s: exact
    sped = af.speed(amp, length, d.speed_scale, 16000)
    for i in range(B):
        theirs = ref.fix_length(ref.speed(ref_amp[i], True, float(d.speed_scale[i])))
        assert np.array_equal(sped[i].numpy(), theirs), i
    fixed = [ref.fix_length(ref.speed(ref_amp[i], bool(d.speed_fire[i]),
                                      float(d.speed_scale[i]))) for i in range(B)]
    fixed_t = torch.from_numpy(np.stack(fixed))
    # 4. STFT: to complex64 rounding
    S = af.stft(fixed_t, consts["window"])
    ref_S = [ref.to_stft(f) for f in fixed]
    for i in range(B):
        assert np.abs(S[i].numpy().T - ref_S[i]).max() <= 1e-6 * np.abs(ref_S[i]).max(initial=1)
    # 5. stretch (on every clip): librosa's phase vocoder to 1e-4
    stretched, count = af.phase_vocoder(S, d.stretch_rate, consts["phi_advance"], STRETCH_FRAMES)
    for i in range(B):
        theirs = ref.stretch(ref_S[i], True, float(d.stretch_rate[i]))
        got = stretched[i, :theirs.shape[1]].numpy().T
        assert int(count[i]) == theirs.shape[1]
        assert np.abs(got - theirs).max() <= 1e-4 * np.abs(theirs).max(initial=1), i
    # 6–7. shift and the fix to 32 frames, on the stretched spectrogram: exact
    valid = count.clone()
    shifted = af.shift_frames(stretched, valid, d.shift, FRAMES)
    for i in range(B):
        src = stretched[i, :int(count[i])].numpy().T
        theirs = ref.fix_frames(ref.shift(src, True, int(d.shift[i])))
        assert np.array_equal(shifted[i].numpy().T, theirs), i
    # 8. noise mix: exact
    N = torch.randn(B, FRAMES, 1025, dtype=torch.complex64)
    p = draws.noise_p
    mixed = af.mix(shifted, N, p)
    for i in range(B):
        theirs = ref.add_noise(shifted[i].numpy().T, True, N[i].numpy().T, float(p[i]))
        assert theirs.dtype == np.complex64
        assert np.array_equal(mixed[i].numpy().T, theirs), i
    # 9. mel dB: ≤ 1e-3 dB
    feats = af.mel_db(mixed, consts["mel_t"])
    for i in range(B):
        theirs = ref.mel_db(mixed[i].numpy().T)
        assert np.abs(feats[i].numpy() - theirs).max() <= 1e-3, i


def test_the_whole_training_chain_equals_the_per_sample_rendering(clips, noise, draws):
    wave, length = clips
    transform = GscTransform(noise)
    ours = transform.train(wave.float() / 32768, length, draws)
    assert ours.shape == (B, 1, 32, 32)
    rows = noise.numpy().astype(np.float32) / 32768
    for i in range(B):
        theirs = ref.train_features(floats(wave, length, i), draws.per_clip(i), rows)
        assert np.abs(ours[i, 0].numpy() - theirs).max() <= 1e-3, i
        assert np.abs(ours[i, 0].numpy() - theirs).mean() <= 1e-4, i


def test_draws_depend_on_the_seed_only(clips, noise):
    wave, length = clips
    transform = GscTransform(noise)
    seeds = torch.arange(7, 7 + B)
    batch = {"wave": wave, "length": length}
    a = transform(batch, seeds, "train")
    assert torch.equal(a, transform(batch, seeds, "train"))  # deterministic
    perm = torch.randperm(B, generator=torch.Generator().manual_seed(0))
    b = transform({"wave": wave[perm], "length": length[perm]}, seeds[perm], "train")
    assert torch.allclose(a[perm], b, atol=1e-4)  # a clip's features do not depend on its batch
    other = transform(batch, seeds + 1000, "train")
    assert not torch.allclose(a, other)


def test_the_draws_follow_the_reference_distributions():
    d = Draws.from_seeds(torch.arange(4000), 7)
    for fire in (d.clip.amp_fire, d.clip.speed_fire, d.clip.stretch_fire, d.clip.shift_fire,
                 d.noise.amp_fire, d.noise_fire):
        assert 0.45 < fire.double().mean() < 0.55
    assert 0.7 <= float(d.clip.gain.min()) and float(d.clip.gain.max()) < 1.1
    assert -0.2 <= float(d.clip.speed_scale.min()) and float(d.clip.speed_scale.max()) < 0.2
    assert 0.8 <= float(d.clip.stretch_rate.min()) and float(d.clip.stretch_rate.max()) < 1.2
    assert set(d.clip.shift.tolist()) == set(range(-8, 9))  # randint(−8, 8): inclusive
    assert set(d.noise_row.tolist()) == set(range(7))
    assert 0 <= float(d.noise_p.min()) and float(d.noise_p.max()) < 0.45
    # the clip's and its noise row's chains draw independently
    assert not torch.equal(d.clip.gain, d.noise.gain)


def test_multi_crop_gives_four_views_per_clip(clips):
    wave, length = clips
    transform = GscTransform(torch.zeros(1, 16000, dtype=torch.int16), multi_crop=True)
    batch = {"wave": wave, "length": length}
    views = transform(batch, None, "test")
    plain = transform(batch, None, "cs")  # the CS pass never gets views
    assert views.shape == (B, 4, 1, 32, 32) and plain.shape == (B, 1, 32, 32)
    f = plain
    plus, centre, minus = views[:, 1], views[:, 2], views[:, 3]
    assert torch.equal(views[:, 0], f)
    assert torch.equal(plus[..., :31], f[..., 1:]) and torch.equal(plus[..., 31], f[..., 31])
    assert torch.equal(centre[..., 1:31], f[..., 1:31])
    assert torch.equal(centre[..., 0], f[..., 1]) and torch.equal(centre[..., 31], f[..., 30])
    assert torch.equal(minus[..., 1:], f[..., :31]) and torch.equal(minus[..., 0], f[..., 0])
    assert torch.equal(multi_crop_views(f), views)


def test_the_chain_runs_where_the_batch_is(clips, noise):
    """Device-agnostic: the constants follow the batch's device (here the only one: CPU),
    and a second device gets its own copies."""
    wave, length = clips
    transform = GscTransform(noise)
    out = transform({"wave": wave, "length": length}, torch.arange(B), "train")
    assert out.device == wave.device and torch.isfinite(out).all()
    assert set(transform.constants._by_device) == {"cpu"}

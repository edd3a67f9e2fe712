"""Physical contracts of the augmentation curriculum (borealis/augmentations.py).

Every test feeds synthetic, traceable 16 kHz float32 audio (sines, chirps, seeded noise) and
checks a measurable property that a broken effect would violate: a band's power after a
filter, an SNR, an RMS, a duration, a dominant frequency, an encoded byte count. Noise and
impulse-response pools are built with `ShardWriter` in a temporary folder. ~3 s on 2 cores
(plus ~4 s of imports).
"""

from __future__ import annotations

import io
import multiprocessing as mp
import random

import numpy as np
import pytest
import soundfile as sf

from borealis import augmentations as aug
from borealis.augmentations import (
    AugmentationPipeline, AugmentationStage, BackgroundNoise, BandPass, Clipping, Codec, Equalizer, Gain,
    ImpulseResponse, PitchShift, ResampleRoundTrip, Speed, Telephony,
)
from borealis.shards import SAMPLE_RATE as SR
from borealis.shards import ShardWriter

NOISE_HZ = {"hum-0": 500.0, "hum-1": 750.0, "hum-2": 1000.0}  # each noise clip's tone names it
NOISE_SECONDS = {"hum-0": 0.3, "hum-1": 0.7, "hum-2": 2.0}      # two shorter than the 1 s speech: looped


def sine(freq: float, seconds: float = 1.0, amp: float = 0.2) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def speech_like(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    """A voiced-speech stand-in: 14 harmonics of a 120 +- 40 Hz gliding f0, syllable-rate AM, a little breath."""
    t = np.arange(int(seconds * SR)) / SR
    f0 = 120 + 40 * np.sin(2 * np.pi * 1.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voiced = sum(np.sin(k * phase) / k for k in range(1, 15)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) ** 2
    breath = 0.01 * np.random.default_rng(seed).standard_normal(len(t))
    return (0.3 * voiced + breath).astype(np.float32)


def band_db(out: np.ndarray, ref: np.ndarray, freq: float, half_width: float = 5.0) -> float:
    """Power gain (dB) at `freq`, out vs ref: Hann-windowed FFT bins within +-half_width Hz."""
    def power(x):
        spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
        f = np.fft.rfftfreq(len(x), 1 / SR)
        return spectrum[np.abs(f - freq) <= half_width].sum()
    return float(10 * np.log10(power(out) / power(ref)))


def dominant_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * SR / len(x))


def rms_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64))))


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    """Noise pool (hum tones + hiss, 0.3-2 s), a delayed-delta IR pool and a decaying-room IR pool."""
    root = tmp_path_factory.mktemp("aug_pools")
    rng = np.random.default_rng(0)
    with ShardWriter(root / "noise", max_samples=2) as w:  # 2 shards: draws cross shard boundaries
        for key, hz in NOISE_HZ.items():
            x = sine(hz, NOISE_SECONDS[key], 0.3) + 0.02 * rng.standard_normal(int(NOISE_SECONDS[key] * SR))
            w.write(key, {"task": "noise"}, x.astype(np.float32))
    delta = np.zeros(300, np.float32)
    delta[50] = 1.0  # 50 samples of pre-delay: alignment on the peak must remove it
    with ShardWriter(root / "ir_delta") as w:
        w.write("delta", {"task": "ir"}, delta)
    t = np.arange(int(0.25 * SR)) / SR
    tail = rng.standard_normal(len(t)) * np.exp(-t / 0.05)  # T60 ~ 0.35 s
    room = np.concatenate([np.zeros(40), [1.0], 0.5 * tail / np.abs(tail).max()]).astype(np.float32)
    with ShardWriter(root / "ir_room") as w:
        w.write("room", {"task": "ir"}, room)
    return {name: str(root / name) for name in ("noise", "ir_delta", "ir_room")}


def all_effects(pools) -> list[aug.Effect]:
    """Every waveform effect at p=1, in the harsh stage's order (source -> room -> channel -> codec)."""
    return [Speed(p=1), PitchShift(p=1), ImpulseResponse(pools["ir_room"], p=1),
            BackgroundNoise(pools["noise"], p=1), Equalizer(p=1), BandPass(p=1), ResampleRoundTrip(p=1),
            Telephony(p=1), Codec(p=1), Clipping(p=1), Gain(p=1)]


# --- level ----------------------------------------------------------------------------------

def test_gain_changes_rms_by_the_drawn_db():
    x = speech_like()
    for seed in range(5):
        g = Gain(gain_db=(-6.0, 6.0), p=1)
        y = g.apply(x, np.random.default_rng(seed))
        assert y.dtype == np.float32 and len(y) == len(x)
        assert -6.0 <= g.last["gain_db"] <= 6.0
        assert rms_db(y) - rms_db(x) == pytest.approx(g.last["gain_db"], abs=0.01)


def test_clipping_caps_at_threshold_times_peak_and_leaves_the_rest():
    x = speech_like()
    c = Clipping(p=1)
    y = c.apply(x, np.random.default_rng(3))
    level = c.last["threshold"] * np.abs(x).max()
    assert 0.82 <= c.last["threshold"] <= 0.95
    assert y.dtype == np.float32 and len(y) == len(x)
    assert np.abs(y).max() == pytest.approx(level, rel=1e-6)
    under = np.abs(x) <= level
    assert 0 < (~under).sum() < len(x)  # the test clips something, not everything
    np.testing.assert_array_equal(y[under], x[under])
    np.testing.assert_allclose(y[~under], np.sign(x[~under]) * level, rtol=1e-6)


# --- filters --------------------------------------------------------------------------------

def test_bandpass_removes_out_of_band_tones_and_keeps_the_pass_band():
    x = sine(50) + sine(1000) + sine(7000)
    for seed in range(4):
        bp = BandPass(p=1)
        y = bp.apply(x, np.random.default_rng(seed))
        assert 150 <= bp.last["low_cut_hz"] <= 350 and 3200 <= bp.last["high_cut_hz"] <= 5200
        assert y.dtype == np.float32 and len(y) == len(x)
        assert band_db(y, x, 50) < -20, bp.last
        assert band_db(y, x, 7000) < -20, bp.last
        assert abs(band_db(y, x, 1000)) < 1.0, bp.last


def test_telephony_keeps_the_voice_band_only():
    x = sine(60) + sine(1000) + sine(3000) + sine(6000)
    for seed in range(3):
        tel = Telephony(p=1)
        y = tel.apply(x, np.random.default_rng(seed))
        assert 8000 <= tel.last["rate_hz"] <= 12000 and len(y) == len(x) and y.dtype == np.float32
        assert band_db(y, x, 60) < -20 and band_db(y, x, 6000) < -20, tel.last
        assert abs(band_db(y, x, 1000)) < 1.0 and abs(band_db(y, x, 3000)) < 1.5, tel.last


def test_resample_round_trip_loses_the_band_above_half_the_rate():
    x = (sine(1000) + sine(4000) + sine(7500))[:SR - 7]  # an odd length: soxr must not change it
    for seed in range(3):
        rt = ResampleRoundTrip(rate_hz=(11000.0, 13000.0), p=1)  # Nyquist 5.5-6.5 kHz
        y = rt.apply(x, np.random.default_rng(seed))
        assert 11000 <= rt.last["rate_hz"] <= 13000 and len(y) == len(x) and y.dtype == np.float32
        assert band_db(y, x, 7500) < -20, rt.last
        assert abs(band_db(y, x, 1000)) < 1.0 and abs(band_db(y, x, 4000)) < 1.0, rt.last


def test_equalizer_reshapes_the_spectrum_within_its_gain_range():
    x = (0.1 * np.random.default_rng(0).standard_normal(SR)).astype(np.float32)
    centres = [125, 250, 500, 1000, 2000, 4000]  # octave bands
    for lo, hi in [(-6.0, 6.0), (-2.0, 1.0)]:
        eq = Equalizer(gain_db=(lo, hi), p=1)
        y = eq.apply(x, np.random.default_rng(1))
        assert y.dtype == np.float32 and len(y) == len(x)
        assert len(eq.last["gains_db"]) == 7 and all(lo <= g <= hi for g in eq.last["gains_db"])
        change = [band_db(y, x, f, half_width=f / 3) for f in centres]
        assert max(change) - min(change) > 0.5, change  # not a plain gain: the spectrum's shape moved
    flat = Equalizer(gain_db=(0.0, 0.0), p=1).apply(x, np.random.default_rng(1))
    np.testing.assert_allclose(flat, x, atol=1e-5)  # 0 dB in every band is the identity


# --- time and pitch -------------------------------------------------------------------------

def test_pitch_shift_by_an_octave_doubles_the_frequency_and_keeps_the_length():
    x = sine(440)[:SR - 123]
    ps = PitchShift(semitones=(12.0, 12.0), p=1)
    y = ps.apply(x, np.random.default_rng(0))
    assert ps.last["num_semitones"] == 12.0 and len(y) == len(x) and y.dtype == np.float32
    assert dominant_hz(y) == pytest.approx(880, rel=0.02)
    default = PitchShift(p=1)
    assert len(default.apply(x, np.random.default_rng(1))) == len(x) and -4 <= default.last["num_semitones"] <= 4


def test_speed_divides_the_duration_and_moves_the_pitch():
    x = sine(440)
    for seed in range(4):
        sp = Speed(p=1)
        y = sp.apply(x, np.random.default_rng(seed))
        factor = sp.last["factor"]
        assert 0.8 <= factor <= 1.2 and y.dtype == np.float32
        assert abs(len(y) - len(x) / factor) <= 2
        assert dominant_hz(y) == pytest.approx(440 * factor, abs=2.0)


def test_speed_never_exceeds_max_samples():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(200, 4000))
        max_samples = int(rng.integers(100, n + 200))
        sp = Speed(factor=(0.8, 1.2), p=1)
        y = sp.apply(np.full(n, 0.1, np.float32), rng, max_samples=max_samples)
        assert len(y) <= max_samples, (n, max_samples, sp.last)
        assert abs(len(y) - n / sp.last["factor"]) <= 2


# --- pools: noise and rooms -----------------------------------------------------------------

def test_background_noise_hits_the_drawn_snr_with_looped_short_clips(pools):
    x = speech_like()
    drawn = set()
    for seed in range(8):
        bn = BackgroundNoise(pools["noise"], p=1)
        y = bn.apply(x, np.random.default_rng(seed))
        assert y.dtype == np.float32 and len(y) == len(x)
        snr = rms_db(x) - rms_db(y - x)
        assert 18 <= bn.last["snr_db"] <= 28 and snr == pytest.approx(bn.last["snr_db"], abs=0.5)
        assert dominant_hz(y - x) == pytest.approx(NOISE_HZ[bn.last["noise"]], abs=3)  # the drawn clip was mixed
        drawn.add(bn.last["noise"])
    assert "hum-2" in drawn and drawn & {"hum-0", "hum-1"}  # both a cropped (2 s) and a looped (< 1 s) clip


def test_impulse_response_delta_is_the_identity(pools):
    x = speech_like()
    ir = ImpulseResponse(pools["ir_delta"], p=1)
    y = ir.apply(x, np.random.default_rng(0))
    assert ir.last["ir"] == "delta" and y.dtype == np.float32
    np.testing.assert_allclose(y, x, atol=1e-5)  # the 50-sample pre-delay is cut: no shift


def test_impulse_response_spreads_energy_later_and_keeps_level(pools):
    burst = np.zeros(SR, np.float32)
    burst[:1600] = 0.3 * np.random.default_rng(1).standard_normal(1600)  # 100 ms of hiss, then silence
    ir = ImpulseResponse(pools["ir_room"], p=1)
    y = ir.apply(burst, np.random.default_rng(0))
    assert len(y) == len(burst) and y.dtype == np.float32
    assert rms_db(y) == pytest.approx(rms_db(burst), abs=0.01)
    energy = np.square(y, dtype=np.float64)
    assert energy[1800:].sum() / energy.sum() > 0.05  # a reverberant tail where the input is silent
    t = np.arange(SR)
    assert (t * energy).sum() / energy.sum() > (t * burst.astype(np.float64) ** 2).sum() / np.sum(burst ** 2.0)
    lag = np.argmax(np.correlate(y[:4000], burst[:2000], "valid"))
    assert lag == 0  # the direct path stays aligned despite the IR's 40-sample pre-delay


def test_empty_or_missing_pools_fail_at_check_time(tmp_path, pools):
    with ShardWriter(tmp_path / "empty"):
        pass
    with ShardWriter(tmp_path / "text_only") as w:
        w.write("note", {"task": "chat", "text": "no audio here"})
    for name in ("empty", "text_only"):
        noise = BackgroundNoise(str(tmp_path / name), p=1)
        with pytest.raises(ValueError, match="holds no audio clips"):
            noise.check()
        with pytest.raises(ValueError, match=name):
            noise.apply(speech_like(0.1), np.random.default_rng(0))
    pipeline = AugmentationPipeline([AugmentationStage("clean"), AugmentationStage(
        "harsh", start_epoch=1, effects=[ImpulseResponse(pools["ir_room"]), BackgroundNoise(str(tmp_path / "empty"))])])
    with pytest.raises(ValueError, match="stage 'harsh', BackgroundNoise: .*holds no audio"):
        pipeline.check()
    with pytest.raises(FileNotFoundError, match="missing"):
        ImpulseResponse(str(tmp_path / "missing")).check()


# --- codecs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", ["mp3", "opus"])
def test_codec_round_trip_keeps_length_rate_and_waveform(codec):
    x = speech_like()[:SR - 77]
    for seed in range(2):
        c = Codec(codecs=[codec], p=1)
        y = c.apply(x, np.random.default_rng(seed))
        assert c.last["codec"] == codec and 96 <= c.last["bitrate_kbps"] <= 160
        assert len(y) == len(x) and y.dtype == np.float32
        assert np.corrcoef(x, y)[0, 1] > 0.9  # no encoder delay left in, no gross distortion
        assert sf.info(io.BytesIO(aug._encode(x, codec, c.last["bitrate_kbps"]))).samplerate == SR


@pytest.mark.parametrize("codec, kbps_range", [("mp3", (32.0, 160.0)), ("opus", (16.0, 256.0))])
def test_codec_bitrate_mapping_matches_the_encoded_size(codec, kbps_range, monkeypatch):
    """The `_CODECS` comment: libsndfile's compression level is linear in the bitrate."""
    seconds = 5.0
    noise = (0.3 * np.random.default_rng(0).standard_normal(int(seconds * SR))).astype(np.float32)
    sizes = []
    encode = aug._encode

    def recording_encode(*args):
        data = encode(*args)
        sizes.append(len(data))
        return data

    monkeypatch.setattr(aug, "_encode", recording_encode)  # measure the bytes `Codec.apply` itself made
    c = Codec(codecs=[codec], bitrate_kbps=kbps_range, p=1)
    rng = np.random.default_rng(1)
    measured = []
    for _ in range(2):
        c.apply(noise, rng)
        measured.append((c.last["bitrate_kbps"], sizes[-1] * 8 / seconds / 1000))
    for drawn, actual in measured:
        assert actual == pytest.approx(drawn, rel=0.15), measured  # MP3 also snaps to the MPEG-2 table
    assert abs(measured[0][0] - measured[1][0]) > 10  # two distinct bitrates were tried


def test_codec_reaches_the_lowest_mp3_bitrate():
    y = Codec(codecs=["mp3"], bitrate_kbps=(8.0, 8.0), p=1).apply(speech_like(0.5), np.random.default_rng(0))
    assert len(y) == SR // 2  # compression level 1.0 is rejected by libsndfile; the effect must not pass it


# --- stages and the pipeline ----------------------------------------------------------------

def test_stage_applies_each_effect_with_its_probability():
    x = speech_like(0.25)
    effects = [Speed(p=1), Gain(p=1), Clipping(p=1), ResampleRoundTrip(p=1)]
    record: list[dict] = []
    y = AugmentationStage("all", effects=effects)(x, np.random.default_rng(0), record=record)
    assert [r["effect"] for r in record] == ["Speed", "Gain", "Clipping", "ResampleRoundTrip"]
    assert record[1]["gain_db"] == effects[1].last["gain_db"] and not np.array_equal(y, x[:len(y)])
    record = []
    off = AugmentationStage("off", effects=[Speed(p=0), Gain(p=0), Clipping(p=0)])
    np.testing.assert_array_equal(off(x, np.random.default_rng(0), record=record), x)
    assert record == []
    half = AugmentationStage("half", effects=[Clipping(p=0.5)])
    rng, hits = np.random.default_rng(0), 0
    for _ in range(400):
        record = []
        half(x[:64], rng, record=record)
        hits += len(record)
    assert 160 < hits < 240  # ~Binomial(400, 0.5): 200 +- 10 sd


@pytest.mark.parametrize("stages, message", [
    ([], "at least one stage"),
    ([AugmentationStage("late", start_epoch=1)], "must start at epoch 0"),
    ([AugmentationStage("a"), AugmentationStage("b", start_epoch=5), AugmentationStage("c", start_epoch=2)],
     "ordered by start"),
    ([AugmentationStage("a"), AugmentationStage("b", start_epoch=0, start_step=50),
      AugmentationStage("c", start_epoch=0, start_step=10)], "ordered by start"),
    ([AugmentationStage("clean"), AugmentationStage("clean", start_epoch=2)], "unique.*clean"),
])
def test_pipeline_validation(stages, message):
    with pytest.raises(ValueError, match=message):
        AugmentationPipeline(stages)


def test_stage_at_picks_the_last_reached_stage():
    pipeline = AugmentationPipeline([
        AugmentationStage("clean"), AugmentationStage("warm", start_step=100), AugmentationStage("mild", start_epoch=2),
        AugmentationStage("harsh", start_epoch=5, start_step=6000)])  # both epoch 5 and step 6000 must be reached
    cases = {(0, 0): 0, (0, 99): 0, (0, 100): 1, (1, 900): 1, (2, 1000): 2, (5, 5999): 2, (4, 9000): 2,
             (5, 6000): 3, (9, 20000): 3}
    assert {k: pipeline.stage_at(*k) for k in cases} == cases


def _read_active_index(pipeline: AugmentationPipeline, go, out) -> None:
    go.wait(10)
    out.put(pipeline.active_index)


def test_set_stage_switches_the_active_stage_in_forked_workers():
    stages = [AugmentationStage("clean"), AugmentationStage("mild", start_epoch=1, effects=[Gain(gain_db=(6, 6), p=1)]),
              AugmentationStage("harsh", start_epoch=2)]
    pipeline = AugmentationPipeline(stages)
    x = sine(300, 0.1)
    assert pipeline.active is stages[0] and np.array_equal(pipeline(x, np.random.default_rng(0)), x)
    ctx = mp.get_context("fork")
    go, out = ctx.Event(), ctx.Queue()
    child = ctx.Process(target=_read_active_index, args=(pipeline, go, out))
    child.start()  # forked before the switch: sees it only through shared memory
    pipeline.set_stage(2)
    go.set()
    seen = out.get(timeout=10)  # a timeout, not a hang, if the child dies
    child.join(10)
    assert child.exitcode == 0 and seen == 2
    pipeline.set_stage(1)
    assert pipeline.active is stages[1] and pipeline.active_index == 1
    assert rms_db(pipeline(x, np.random.default_rng(0))) == pytest.approx(rms_db(x) + 6, abs=0.01)
    with pytest.raises(IndexError, match="out of range"):
        pipeline.set_stage(3)


# --- determinism ----------------------------------------------------------------------------

def test_harsh_stage_is_a_pure_function_of_the_generator(pools):
    stage = AugmentationStage("harsh", effects=all_effects(pools))
    x = speech_like()

    def run(seed: int, global_seed: int) -> tuple[np.ndarray, list[dict]]:
        random.seed(global_seed)  # the global states must not leak in ...
        np.random.seed(global_seed)
        py_state, np_state = random.getstate(), np.random.get_state()
        record: list[dict] = []
        y = stage(x, np.random.default_rng(seed), record=record)
        assert random.getstate() == py_state  # ... nor be disturbed
        assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_state))
        return y, record

    first, record = run(7, global_seed=1)
    second, record_again = run(7, global_seed=2)
    assert len(record) == 11 and record == record_again
    np.testing.assert_array_equal(first, second)
    other, _ = run(8, global_seed=1)
    assert len(other) != len(first) or not np.array_equal(other, first)


# --- bad settings ---------------------------------------------------------------------------

@pytest.mark.parametrize("build, message", [
    (lambda: Gain(p=1.5), r"p must be in \[0, 1\], got 1.5"),
    (lambda: Clipping(p=-0.1), r"Clipping: p must be in \[0, 1\]"),
    (lambda: Gain(gain_db=(3.0, -3.0)), r"gain_db must be an increasing pair.*\[3.0, -3.0\]"),
    (lambda: BandPass(low_cut_hz=(350.0, 150.0)), "low_cut_hz"),
    (lambda: BandPass(high_cut_hz=(3000.0, 9000.0)), "high_cut_hz"),
    (lambda: Speed(factor=(1.2, 0.8)), "factor"),
    (lambda: BackgroundNoise("unused", snr_db=(28.0, 18.0)), "snr_db"),
    (lambda: Codec(codecs=["aac"]), r"codecs must be a non-empty subset of \['mp3', 'opus'\].*aac"),
    (lambda: Codec(codecs=[]), "codecs must be a non-empty subset"),
    (lambda: Codec(codecs=["mp3", "opus"], bitrate_kbps=(96.0, 200.0)), r"bitrate_kbps.*160"),
    (lambda: AugmentationStage("x", start_epoch=-1), "stage 'x'.*start_epoch"),
])
def test_bad_settings_raise_naming_the_problem(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_delay_prepends_silence_and_fits_the_window():
    from borealis.augmentations import Delay

    effect = Delay(seconds=(0.1, 0.2), p=1.0)
    audio = np.full(8000, 0.5, np.float32)
    rng = np.random.default_rng(0)
    for _ in range(5):
        out = effect.apply(audio, rng)
        pad = round(effect.last["seconds"] * 16_000)
        assert 1600 <= pad <= 3200 and out.size == audio.size + pad and out.dtype == np.float32
        assert not out[:pad].any() and np.array_equal(out[pad:], audio)  # the clip itself is untouched
    out = effect.apply(audio, rng, max_samples=9000)
    assert out.size == 9000 and effect.last["seconds"] == 1000 / 16_000  # shrunk to fit the window
    assert effect.apply(audio, rng, max_samples=8000).size == 8000  # no room: no delay


def _effects(cls=aug.Effect):
    for sub in cls.__subclasses__():
        if sub.__module__ == aug.__name__ and not sub.__name__.startswith("_"):
            yield sub
        yield from _effects(sub)


def test_each_effect_declares_what_it_does_to_a_clips_length(pools):
    """`keeps_length` is what the training stream trusts to defer augmentation to the batch."""
    needs_pool = {BackgroundNoise: pools["noise"], ImpulseResponse: pools["ir_room"]}
    changes = {Speed: {"factor": (0.8, 0.8)}, aug.Delay: {"seconds": (0.1, 0.1)}}  # a change of length, surely
    clip = speech_like(0.77)
    seen = set()
    for cls in _effects():
        effect = cls(needs_pool[cls], p=1.0) if cls in needs_pool else cls(p=1.0, **changes.get(cls, {}))
        for seed in range(3):
            same = len(effect.apply(clip, np.random.default_rng(seed), 30 * SR)) == len(clip)
            assert same == effect.keeps_length, f"{cls.__name__}: keeps_length={effect.keeps_length}"
        seen.add(cls)
    assert {BackgroundNoise, ImpulseResponse, Equalizer, Gain, BandPass, ResampleRoundTrip, Telephony, Codec,
            Clipping, PitchShift, Speed, aug.Delay} <= seen
    assert AugmentationStage("all", effects=[Gain(), Clipping()]).keeps_length
    assert not AugmentationStage("speed", effects=[Gain(), Speed()]).keeps_length
    assert AugmentationStage("none").keeps_length  # nothing to change a length

"""Speech-like "bona fide" clips and synthetic "attacks" with distinct artefacts, written as FLAC with
ASVspoof-2019-style protocols (seen attacks A1-A3: train/dev/eval; held-out A4-A6: an OOD protocol) and an
In-the-Wild-style ``meta.csv`` set with a channel shift (every attack through a random phone-like channel).

Bona fide: a harmonic source (F0 90-260 Hz, vibrato and jitter), two formant bumps, a syllable envelope and a
broadband noise floor. Seen: A1 coarse amplitude quantisation, A2 band-limiting at 2 kHz, A3 gain jumps on 25 ms
frames. Held out, pairs of the seen artefacts at other strengths (``ARTEFACTS``): A4 finer quantisation + 2.8 kHz
band limit, A5 slower, shallower gain jumps + 1.6 kHz band limit, A6 quantisation + fast gain jumps. A quarter of
the training clips passed a mild version of the wild channel. Every clip is normalised to unit standard deviation
(no level cue).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from ..audio import SpoofDataModule
from ._cache import build_once, cache_key

SEEN, HELD_OUT = ("A1", "A2", "A3"), ("A4", "A5", "A6")


def _formants(x: np.ndarray, sr: int, rng) -> np.ndarray:
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1 / sr)
    gain = np.full_like(f, 0.15)
    for centre, width in ((rng.uniform(400, 900), 120), (rng.uniform(1100, 2400), 200)):
        gain += np.exp(-0.5 * ((f - centre) / width) ** 2)
    return np.fft.irfft(spec * gain, len(x))


def bonafide(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    t = np.arange(n) / sr
    f0 = rng.uniform(90, 260)
    vib = 1 + rng.uniform(0.02, 0.04) * np.sin(2 * np.pi * rng.uniform(4, 6) * t)
    jitter = 1 + np.cumsum(rng.normal(0, 4e-4, n))
    inst = f0 * vib * np.clip(jitter, 0.9, 1.1)
    phase = 2 * np.pi * np.cumsum(inst) / sr
    source = sum(np.sin(k * phase) / k for k in range(1, int(sr / 2 / f0)))
    voiced = _formants(source, sr, rng)
    rate = rng.uniform(3, 6)  # syllables per second
    env = np.clip(np.sin(np.pi * rate * t + rng.uniform(0, np.pi)), 0, None) ** 0.7
    x = voiced * env
    x = x / (x.std() + 1e-8) + rng.normal(0, 0.05, n)
    return x


def quantise(x: np.ndarray, levels: float) -> np.ndarray:
    peak = np.abs(x).max()
    return np.round(x / peak * levels) / levels * peak


def lowpass(x: np.ndarray, cutoff: float, sr: int) -> np.ndarray:
    spec = np.fft.rfft(x)
    spec[np.fft.rfftfreq(len(x), 1 / sr) > cutoff] = 0
    return np.fft.irfft(spec, len(x))


def gain_frames(x: np.ndarray, rng: np.random.Generator, sr: int, frame_s: float = 0.025, depth: float = 0.5) -> np.ndarray:
    frame = int(frame_s * sr)
    gains = rng.choice([1 - depth, 1 + depth], size=len(x) // frame + 1)
    return x * np.repeat(gains, frame)[:len(x)]


#: each attack as the artefacts it leaves; the held-out ones combine or interpolate the seen ones' artefacts,
#: so a detector that learned each seen artefact can in principle flag them
ARTEFACTS = {
    "A1": (("quantise", 4),),
    "A2": (("lowpass", 2000),),
    "A3": (("gain", 0.025, 0.5),),
    "A4": (("quantise", 10), ("lowpass", 3200)),
    "A5": (("gain", 0.06, 0.2), ("lowpass", 3000)),
    "A6": (("quantise", 9), ("gain", 0.015, 0.2)),
}


def attack(name: str, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    if name not in ARTEFACTS:
        raise ValueError(f"unknown attack '{name}'")
    x = bonafide(rng, n, sr)
    for kind, *args in ARTEFACTS[name]:
        if kind == "quantise":
            x = quantise(x, *args)
        elif kind == "lowpass":
            x = lowpass(x, *args, sr)
        else:
            x = gain_frames(x, rng, sr, *args)
    return x


def channel(x: np.ndarray, rng: np.random.Generator, sr: int, mild: bool = False) -> np.ndarray:
    """Phone-like channel: random low-pass 3.4-3.9 kHz, 30-40 dB noise, clipping at 1.8-2.5 std. ``mild`` (the share
    of training clips that passed a channel): low-pass 3.6-3.9 kHz, 35-45 dB noise, no clipping."""
    y = lowpass(x, rng.uniform(3600, 3900) if mild else rng.uniform(3400, 3900), sr)
    y = y + rng.normal(0, y.std() * 10 ** (-(rng.uniform(35, 45) if mild else rng.uniform(30, 40)) / 20), len(y))
    if mild:
        return y
    level = rng.uniform(1.8, 2.5) * y.std()
    return np.clip(y, -level, level)


def _norm(x: np.ndarray) -> np.ndarray:
    x = x / (x.std() + 1e-8)
    return (0.1 * x).astype(np.float32)  # a comfortable level for 16-bit FLAC


def generate_spoof(root: str | Path, sr: int = 8000, seconds: float = 0.5, n_train: int = 300, n_dev: int = 100,
                   n_eval: int = 100, n_ood: int = 100, seed: int = 0, train_channel: float = 0.25) -> Path:
    """Write the FLAC files, ``protocols/{train,dev,eval,ood,oracle}.txt`` (ASVspoof 2019 format) and
    ``wild/meta.csv``. A ``train_channel`` share of the training clips passed a mild phone-like channel.
    ``oracle`` is a training set drawn like the OOD sets (every attack, half of the clips through the wild
    channel): only the oracle variant trains on it, to show the OOD sets are learnable."""
    root = Path(root)
    if (root / "meta.json").exists():
        return root
    n = int(sr * seconds)
    plan = {"train": (n_train, n_train, SEEN, "mild", train_channel), "dev": (n_dev, n_dev, SEEN, None, 0),
            "eval": (n_eval, n_eval, SEEN, None, 0), "ood": (n_ood, n_ood // 2, HELD_OUT, None, 0),
            "oracle": (n_train, n_train // 2, SEEN + HELD_OUT, "wild", 0.5)}
    with build_once(root, dict(sr=sr, seconds=seconds, seed=seed, train_channel=train_channel, version=2)) as tmp:
        (tmp / "protocols").mkdir()
        for s, (split, (bona, per_attack, attacks, kind_of_channel, share)) in enumerate(plan.items()):
            rng = np.random.default_rng([seed, s])
            (tmp / split / "flac").mkdir(parents=True)
            lines = []
            kinds = [("bonafide", "-")] * bona + [(a, a) for a in attacks for _ in range(per_attack)]
            for i, (kind, attack_id) in enumerate(kinds):
                utt = f"{split.upper()}_{i:05d}"
                x = bonafide(rng, n, sr) if kind == "bonafide" else attack(kind, rng, n, sr)
                if kind_of_channel and rng.random() < share:
                    x = channel(x, rng, sr, mild=kind_of_channel == "mild")
                sf.write(tmp / split / "flac" / f"{utt}.flac", _norm(x), sr)
                lines.append(f"SPK_{i % 20:03d} {utt} - {attack_id} {'bonafide' if kind == 'bonafide' else 'spoof'}")
            (tmp / "protocols" / f"{split}.txt").write_text("\n".join(lines) + "\n")
        rng = np.random.default_rng([seed, 9])
        (tmp / "wild").mkdir()
        rows = ["file,speaker,label"]
        kinds = ["bonafide"] * n_ood + [a for a in SEEN + HELD_OUT for _ in range(n_ood // 4)]
        for i, kind in enumerate(kinds):
            x = bonafide(rng, n, sr) if kind == "bonafide" else attack(kind, rng, n, sr)
            sf.write(tmp / "wild" / f"{i}.wav", _norm(channel(x, rng, sr)), sr)
            rows.append(f"{i}.wav,speaker{i % 7},{'bona-fide' if kind == 'bonafide' else 'spoof'}")
        (tmp / "wild" / "meta.csv").write_text("\n".join(rows) + "\n")
    return root


#: degradations of the toy's self-supervised pretext: families like the attacks', other parameters
PRETEXT = ("clean", "quantise", "lowpass", "gain_frames", "tone", "phase", "clip")


def degrade(x: np.ndarray, kind: str, rng: np.random.Generator, sr: int) -> np.ndarray:
    n = len(x)
    if kind == "clean":
        return x
    if kind == "quantise":
        return quantise(x, rng.integers(6, 12))
    if kind == "lowpass":
        return lowpass(x, rng.uniform(1200, 3000), sr)
    if kind == "gain_frames":
        frame = int(rng.uniform(0.01, 0.05) * sr)
        return x * np.repeat(rng.uniform(0.3, 1.7, n // frame + 1), frame)[:n]
    if kind == "tone":
        return x + rng.uniform(0.1, 0.3) * x.std() * np.sin(2 * np.pi * rng.uniform(500, 3800) * np.arange(n) / sr)
    if kind == "phase":
        spec = np.fft.rfft(x)
        band = np.fft.rfftfreq(n, 1 / sr) > rng.uniform(500, 2500)
        spec[band] = np.abs(spec[band]) * np.exp(1j * rng.uniform(0, 2 * np.pi, band.sum()))
        return np.fft.irfft(spec, n)
    if kind == "clip":
        return np.clip(x, -rng.uniform(0.5, 1.2) * x.std(), rng.uniform(0.5, 1.2) * x.std())
    raise ValueError(kind)


def pretext_set(n: int, sr: int = 8000, seconds: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fresh bona fide clips, each degraded by one of ``PRETEXT`` (the label): no attack clip is used."""
    rng = np.random.default_rng([seed, 77])
    length = int(sr * seconds)
    x = np.zeros((n, length), np.float32)
    y = rng.integers(0, len(PRETEXT), n)
    for i in range(n):
        x[i] = _norm(degrade(bonafide(rng, length, sr), PRETEXT[y[i]], rng, sr))
    return x, y


class SyntheticSpoofDataModule(SpoofDataModule):
    """The real readers over a generated set: seen attacks in train/dev/eval, held-out attacks and a wild channel
    as OOD test sets."""

    def __init__(self, cache_dir: str, sr: int = 8000, seconds: float = 0.5, n_train: int = 300, n_dev: int = 100,
                 n_eval: int = 100, n_ood: int = 100, gen_seed: int = 0, train_channel: float = 0.25,
                 train_set: str = "train", **kwargs):
        if train_set not in ("train", "oracle"):
            raise ValueError(f"train_set is 'train' (seen attacks) or 'oracle' (drawn like the OOD sets), got '{train_set}'")
        self.gen_kwargs = dict(sr=sr, seconds=seconds, n_train=n_train, n_dev=n_dev, n_eval=n_eval, n_ood=n_ood, seed=gen_seed,
                               train_channel=train_channel)
        root = Path(cache_dir) / f"synthetic_spoof-{cache_key({**self.gen_kwargs, 'version': 2})}"
        proto = lambda split: {"format": "asvspoof2019", "protocol": str(root / "protocols" / f"{split}.txt"),  # noqa: E731
                               "audio_dir": str(root / split / "flac")}
        tests = {"eval": proto("eval"), "ood_attacks": proto("ood"), "wild": {"format": "in_the_wild", "root": str(root / "wild")}}
        kwargs.setdefault("length", int(sr * seconds))
        super().__init__(train=proto(train_set), dev=proto("dev"), tests=tests, sample_rate=sr, **kwargs)
        self.summary.compare_official = False  # generated in a real layout, not the release
        self.root = root

    def prepare_data(self) -> None:
        generate_spoof(self.root, **self.gen_kwargs)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        super().setup(stage)

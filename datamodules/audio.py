"""Spoofing-countermeasure audio: ASVspoof 2019 LA protocols, ASVspoof 2021 LA/DF keys, In-the-Wild
``meta.csv`` and a generic CSV; soundfile I/O, resampling, fixed-length crop / repeat-pad.

Every reader returns ``AudioItem(path, label, attack, utt)`` with label 1 = bona fide, 0 = spoof.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import lightning as L
import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset

from .errors import DatasetError, check_files_exist
from .samplers import SeededTrainData, eval_loader
from .summary import DataSummary

# Published trial counts: ASVspoof 2019 LA train / dev / eval protocols, In-the-Wild meta.csv.
OFFICIAL_TRIALS = {"cm.train.trn": 25380, "cm.dev.trl": 24844, "cm.eval.trl": 71237, "release_in_the_wild": 31779}

BONAFIDE = {"bonafide", "bona-fide", "bona_fide", "genuine", "real", "1"}
SPOOF = {"spoof", "fake", "0"}


@dataclass(frozen=True)
class AudioItem:
    path: Path
    label: int
    attack: str
    utt: str


def parse_label(text: str, where: str) -> int:
    t = text.strip().lower()
    if t in BONAFIDE:
        return 1
    if t in SPOOF:
        return 0
    raise DatasetError(f"{where}: unknown label '{text}' (expected bonafide / bona-fide or spoof)")


def read_asvspoof2019(protocol: str | Path, audio_dir: str | Path, ext: str = ".flac") -> list[AudioItem]:
    """``SPEAKER UTT ENV ATTACK KEY`` lines (ATTACK '-' for bona fide)."""
    protocol, audio_dir = Path(protocol), Path(audio_dir)
    items = []
    for lineno, line in enumerate(_lines(protocol), 1):
        cols = line.split()
        if not cols:
            continue
        if len(cols) != 5:
            raise DatasetError(f"{protocol}:{lineno}: expected 5 columns 'SPEAKER UTT ENV ATTACK KEY', got {len(cols)}")
        label = parse_label(cols[4], f"{protocol}:{lineno}")
        items.append(AudioItem(audio_dir / f"{cols[1]}{ext}", label, "bonafide" if label else cols[3], cols[1]))
    return _nonempty(items, protocol)


KEY_CANDIDATES = ("keys/{track}/CM/trial_metadata.txt", "{track}-keys-full/keys/{track}/CM/trial_metadata.txt",
                  "keys/CM/trial_metadata.txt", "{track}/keys/{track}/CM/trial_metadata.txt")
AUDIO_CANDIDATES = ("ASVspoof2021_{track}_eval/flac", "ASVspoof2021_{track}_eval_part0{part}/ASVspoof2021_{track}_eval/flac",
                    "{track}/ASVspoof2021_{track}_eval/flac")


def find_asvspoof2021(root: str | Path, track: str) -> tuple[Path, list[Path]]:
    """The CM key file and the audio folders of ASVspoof 2021 ``track`` (LA | DF) under ``root``, as the key
    release (``LA-keys-full.tar.gz`` -> ``keys/LA/CM/trial_metadata.txt``) and the eval archives (DF in four
    parts) unpack."""
    root, track = Path(root), track.upper()
    if track not in ("LA", "DF", "PA"):
        raise DatasetError(f"ASVspoof 2021 track must be LA, DF or PA, got '{track}'")
    keys = [root / c.format(track=track) for c in KEY_CANDIDATES]
    found = next((k for k in keys if k.is_file()), None)
    if found is None:
        raise DatasetError(f"{root}: no ASVspoof 2021 {track} key file; looked for "
                           f"{', '.join(str(k.relative_to(root)) for k in keys)} (unpack {track}-keys-full.tar.gz there)")
    dirs = [root / c.format(track=track, part=p) for c in AUDIO_CANDIDATES for p in (range(4) if "{part}" in c else [0])]
    dirs = [d for d in dict.fromkeys(dirs) if d.is_dir()]
    if not dirs:
        raise DatasetError(f"{root}: no ASVspoof 2021 {track} audio folder (expected ASVspoof2021_{track}_eval/flac)")
    return found, dirs


def read_asvspoof2021_keys(metadata: str | Path | None = None, audio_dir: str | Path | Sequence[str | Path] | None = None,
                           phase: str | None = "eval", ext: str = ".flac", root: str | Path | None = None,
                           track: str = "LA") -> list[AudioItem]:
    """``trial_metadata.txt`` of the CM keys: column 1 trial, 4 attack, 5 key, 7 phase (0-based); LA has 8
    columns, DF 13 (vocoder and source columns after the phase). With ``root`` + ``track`` the key file and audio
    folders are found as released (:func:`find_asvspoof2021`)."""
    if root is not None and metadata is None:
        metadata, dirs = find_asvspoof2021(root, track)
        audio_dirs = [Path(d) for d in ([audio_dir] if isinstance(audio_dir, (str, Path)) else audio_dir)] if audio_dir \
            else dirs
    elif metadata is None or audio_dir is None:
        raise DatasetError("asvspoof2021 needs root + track, or metadata + audio_dir")
    else:
        audio_dirs = [Path(d) for d in ([audio_dir] if isinstance(audio_dir, (str, Path)) else audio_dir)]
    metadata = Path(metadata)
    items = []
    for lineno, line in enumerate(_lines(metadata), 1):
        cols = line.split()
        if not cols:
            continue
        if len(cols) not in (8, 13):
            raise DatasetError(f"{metadata}:{lineno}: expected 8 (LA) or 13 (DF) columns 'SPEAKER TRIAL CODEC "
                               f"TRANSMISSION ATTACK KEY TRIM PHASE ...', got {len(cols)}")
        if phase is not None and cols[7] != phase:
            continue
        label = parse_label(cols[5], f"{metadata}:{lineno}")
        name = f"{cols[1]}{ext}"
        folder = next((d for d in audio_dirs if (d / name).exists()), audio_dirs[0]) if len(audio_dirs) > 1 else audio_dirs[0]
        items.append(AudioItem(folder / name, label, "bonafide" if label else cols[4], cols[1]))
    return _nonempty(items, metadata)


def read_in_the_wild(root: str | Path) -> list[AudioItem]:
    """``root/meta.csv`` with columns file, speaker, label (``bona-fide`` | ``spoof``)."""
    meta = Path(root) / "meta.csv"
    items = []
    with _open(meta) as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"file", "label"} <= set(reader.fieldnames):
            raise DatasetError(f"{meta}: expected a header with 'file' and 'label', got {reader.fieldnames}")
        for lineno, row in enumerate(reader, 2):
            label = parse_label(row["label"], f"{meta}:{lineno}")
            items.append(AudioItem(Path(root) / row["file"], label, "bonafide" if label else "wild", Path(row["file"]).stem))
    return _nonempty(items, meta)


def read_csv_list(path: str | Path, root: str | Path | None = None) -> list[AudioItem]:
    """Generic ``path,label[,attack]`` CSV (header optional); paths relative to ``root`` or the CSV's folder."""
    path = Path(path)
    root = Path(root) if root else path.parent
    items = []
    with _open(path) as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            if not row or (lineno == 1 and row[0].strip().lower() == "path"):
                continue
            if len(row) not in (2, 3):
                raise DatasetError(f"{path}:{lineno}: expected 'path,label[,attack]', got {len(row)} columns")
            label = parse_label(row[1], f"{path}:{lineno}")
            attack = "bonafide" if label else (row[2].strip() if len(row) == 3 else "spoof")
            items.append(AudioItem(root / row[0].strip(), label, attack, Path(row[0]).stem))
    return _nonempty(items, path)


def _open(path: Path):
    try:
        return open(path, newline="")
    except FileNotFoundError:
        raise DatasetError(f"{path}: file does not exist") from None


def _lines(path: Path) -> list[str]:
    with _open(path) as f:
        return f.read().splitlines()


def _nonempty(items: list, path: Path) -> list:
    if not items:
        raise DatasetError(f"{path}: no trials")
    return items


def load_audio(path: str | Path, sample_rate: int = 16000) -> torch.Tensor:
    """Mono float waveform at ``sample_rate`` (resampled when the file differs); errors name the file."""
    if not Path(path).exists():
        raise DatasetError(f"{path}: audio file does not exist")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise DatasetError(f"{path}: audio file does not exist") from None
    except (sf.LibsndfileError, RuntimeError) as e:
        raise DatasetError(f"{path}: unreadable audio ({e})") from None
    if data.shape[0] == 0:
        raise DatasetError(f"{path}: audio file is empty")
    wav = torch.from_numpy(data.mean(1))
    if sr != sample_rate:
        import torchaudio.functional as AF

        wav = AF.resample(wav, sr, sample_rate)
    return wav


def crop_or_repeat(wav: torch.Tensor, length: int, rng: np.random.Generator | None = None) -> torch.Tensor:
    """Fixed length: a crop (random with ``rng``, else from the start) or the clip repeated until full."""
    n = wav.shape[-1]
    if n >= length:
        start = int(rng.integers(0, n - length + 1)) if rng is not None else 0
        return wav[start: start + length]
    return wav.repeat((length + n - 1) // n)[:length]


def rawboost(x: np.ndarray, algo: int, rng: np.random.Generator, sr: int) -> np.ndarray:
    """RawBoost-style data boosting (Tak et al. 2022), simplified: 1 linear/non-linear convolutive noise (random
    band filters, squared and cubed terms), 2 impulsive signal-dependent noise on a few samples, 3 stationary
    coloured additive noise at 10-40 dB SNR; 4 = 1+2+3, 5 = 1+2 (the LA recipe), 6 = 1+3, 7 = 2+3; 0 = off."""
    steps = {0: (), 1: (1,), 2: (2,), 3: (3,), 4: (1, 2, 3), 5: (1, 2), 6: (1, 3), 7: (2, 3)}
    if algo not in steps:
        raise ValueError(f"rawboost algo must be 0-7, got {algo}")
    y = x.astype(np.float64)
    for step in steps[algo]:
        if step == 1:
            f = np.fft.rfftfreq(len(y), 1 / sr)
            out = np.zeros_like(y)
            for power in (1, 2, 3):
                gain = np.zeros_like(f)
                for _ in range(rng.integers(1, 4)):
                    centre, width = rng.uniform(20, sr / 2 - 100), rng.uniform(100, 1000)
                    gain += np.exp(-0.5 * ((f - centre) / width) ** 2) * rng.uniform(0.5, 1.0)
                out += np.fft.irfft(np.fft.rfft(y ** power) * gain, len(y)) * (1.0 if power == 1 else 0.05)
            y = out / (np.abs(out).max() + 1e-8) * (np.abs(y).max() + 1e-8)
        elif step == 2:
            idx = rng.choice(len(y), size=max(1, int(len(y) * rng.uniform(0.001, 0.1))), replace=False)
            y[idx] += y[idx] * rng.uniform(-2, 2, len(idx))
        elif step == 3:
            noise = np.fft.irfft(np.fft.rfft(rng.standard_normal(len(y))) *
                                 rng.uniform(0.2, 1.0, len(y) // 2 + 1), len(y))
            snr = rng.uniform(10, 40)
            y = y + noise / (noise.std() + 1e-12) * y.std() * 10 ** (-snr / 20)
    return y.astype(np.float32)


class AudioDataset(Dataset):
    """(waveform [length], label, index) per trial; random crops (and RawBoost when asked) when ``train``."""

    def __init__(self, items: Sequence[AudioItem], length: int = 64600, sample_rate: int = 16000, train: bool = False,
                 seed: int = 0, rawboost_algo: int = 0):
        self.items, self.length, self.sample_rate, self.train = list(items), length, sample_rate, train
        self.rng = np.random.default_rng(seed)
        self.rawboost_algo = rawboost_algo

    def __len__(self) -> int:
        return len(self.items)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __getitem__(self, i: int):
        item = self.items[i]
        wav = crop_or_repeat(load_audio(item.path, self.sample_rate), self.length, self.rng if self.train else None)
        if self.train and self.rawboost_algo:
            wav = torch.from_numpy(rawboost(wav.numpy(), self.rawboost_algo, self.rng, self.sample_rate))
        return wav, item.label, i


def read_set(spec: dict) -> list[AudioItem]:
    """One evaluation or training set from a config entry: ``{format: asvspoof2019 | asvspoof2021 |
    in_the_wild | csv, ...}`` with the reader's arguments."""
    spec = dict(spec)
    fmt = spec.pop("format")
    readers = {"asvspoof2019": read_asvspoof2019, "asvspoof2021": read_asvspoof2021_keys,
               "in_the_wild": read_in_the_wild, "csv": read_csv_list}
    if fmt not in readers:
        raise DatasetError(f"unknown audio set format '{fmt}'; known: {', '.join(readers)}")
    return readers[fmt](**spec)


class SpoofDataModule(SeededTrainData, L.LightningDataModule):
    """``train`` and ``dev`` sets (ASVspoof 2019 LA train/dev), named ``tests`` (in-domain and OOD sets)."""

    def __init__(self, train: dict, dev: dict, tests: dict[str, dict], length: int = 64600, sample_rate: int = 16000,
                 batch_size: int = 14, eval_batch_size: int | None = None, num_workers: int = 0, seed: int = 0,
                 rawboost_algo: int = 0):
        super().__init__()
        self.specs = {"train": train, "dev": dev}
        self.test_specs = dict(tests)
        self.length, self.sample_rate, self.seed, self.rawboost_algo = length, sample_rate, seed, rawboost_algo
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size or batch_size, num_workers
        self.summary = DataSummary()
        self._ready = False

    @property
    def test_names(self) -> list[str]:
        return list(self.test_specs)

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        kw = dict(length=self.length, sample_rate=self.sample_rate)
        sets = {"train": self.specs["train"], "dev": self.specs["dev"], **self.test_specs}
        items = {}
        for name, spec in sets.items():
            items[name] = read_set(spec)
            listed_in = next((spec[k] for k in ("protocol", "metadata", "path") if spec.get(k)), spec.get("root"))
            check_files_exist([it.path for it in items[name]], "audio", listed_in)
            self._summarize(name, spec, items[name])
        self.train_set = AudioDataset(items.pop("train"), train=True, seed=self.seed, rawboost_algo=self.rawboost_algo,
                                      **kw)
        self.dev_set = AudioDataset(items.pop("dev"), **kw)
        self.test_sets = {k: AudioDataset(items[k], **kw) for k in self.test_specs}
        self._ready = True

    def _summarize(self, name: str, spec: dict, items: list[AudioItem]) -> None:
        s = self.summary
        s.count(name, "bonafide", sum(it.label for it in items))
        s.count(name, "spoof", sum(1 - it.label for it in items))
        for attack in sorted({it.attack for it in items} - {"bonafide"}):
            s.count(f"{name}/attacks", attack, sum(it.attack == attack for it in items))
        path = str(spec.get("protocol") or spec.get("root") or "")
        official = next((n for key, n in OFFICIAL_TRIALS.items() if key in path), None)
        if official is not None:
            s.expect(name, official, len(items))

    def data_summary(self) -> dict:
        self.summary.layout = ", ".join(f"{k}: {v.get('format')}" for k, v in {**self.specs, **self.test_specs}.items())
        return self.summary.as_dict()

    def class_counts(self) -> list[int]:
        labels = [it.label for it in self.train_set.items]
        return [labels.count(0), labels.count(1)]

    def train_dataloader(self):
        return self.seeded_loader(self.train_set, self.batch_size, self.num_workers)

    def val_dataloader(self):
        return eval_loader(self.dev_set, self.eval_batch_size, self.num_workers)

    def test_dataloader(self):
        return [eval_loader(ds, self.eval_batch_size, self.num_workers) for ds in self.test_sets.values()]

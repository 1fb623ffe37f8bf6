"""Tiny datasets laid out exactly as the public releases ship them (their own folder names, list and split files,
label conventions and odd cases), written from the datasets' documentation, never from this project's generators.
Each builder returns the dataset's root under ``data_dir`` (where the experiments' configs look for it)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import soundfile as sf
from PIL import Image


def img(path: Path, size=(8, 8), mode="RGB", value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(np.full(shape, value, np.uint8), mode=mode).save(path)
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------------ images
TLLIB_OFFICEHOME = {"Drill": 0, "Alarm_Clock": 33, "TV": 56}  # tllib OfficeHome.CLASSES order


def office_home_tllib(data_dir: Path, per_class: int = 5, classes: dict[str, int] = TLLIB_OFFICEHOME,
                      domains=("Art", "Clipart", "Product", "Real_World")) -> Path:
    """TLlib copy: ``<Domain>/<class>/*.jpg`` + ``image_list/<Domain>.txt`` in TLlib's label order."""
    root = data_dir / "office_home"
    for domain in domains:
        lines = []
        for cls, label in classes.items():
            for i in range(per_class):
                img(root / domain / cls / f"{i:05d}.jpg")
                lines.append(f"{domain}/{cls}/{i:05d}.jpg {label}")
        write(root / "image_list" / f"{domain}.txt", "\n".join(lines) + "\n")
    return root


DOMAINNET = {"aircraft_carrier": 0, "The_Eiffel_Tower": 300, "zebra": 344}
DOMAINNET_DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")


def domainnet(data_dir: Path, prefix: str = "", domains=DOMAINNET_DOMAINS) -> Path:
    """Official release: ``<domain>/<class>/*.jpg`` + root-level ``<domain>_{train,test}.txt`` (``prefix``
    ``image_list/`` for TLlib's copy, ``splits/`` for Dassl's)."""
    root = data_dir / "domainnet"
    for domain in domains:
        for split, idx in (("train", range(0, 4)), ("test", range(4, 6))):
            lines = []
            for cls, label in DOMAINNET.items():
                for i in idx:
                    img(root / domain / cls / f"{domain}_{i:03d}.jpg")
                    lines.append(f"{domain}/{cls}/{domain}_{i:03d}.jpg {label}")
            write(root / f"{prefix}{domain}_{split}.txt", "\n".join(lines) + "\n")
    return root


PACS = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")
PACS_DOMAINS = ("art_painting", "cartoon", "photo", "sketch")


def pacs(data_dir: Path, image_dir: str = "kfold", list_dir: str = "", with_test: bool = True) -> Path:
    """Official release: ``kfold/<domain>/<class>/*`` + ``<domain>_{train,crossval,test}_kfold.txt`` with
    1-based labels (Dassl: ``images/`` + ``splits/``, no test file)."""
    root = data_dir / "pacs"
    for domain in PACS_DOMAINS:
        splits = {"train": [], "crossval": [], "test": []}
        for ci, cls in enumerate(PACS):
            for i in range(5):
                rel = f"{domain}/{cls}/{cls}_{i}.jpg"
                img(root / image_dir / rel)
                splits["crossval" if i == 4 else "train"].append(f"{rel} {ci + 1}")
                splits["test"].append(f"{rel} {ci + 1}")
        for split, lines in splits.items():
            if split != "test" or with_test:
                write(root / f"{list_dir}{domain}_{split}_kfold.txt", "\n".join(lines) + "\n")
    return root


# --------------------------------------------------------------------------------------------- detection
def voc_xml(size: tuple[int, int], objects: list[tuple], filename: str = "x.jpg") -> str:
    """objects: (name, xmin, ymin, xmax, ymax[, difficult])."""
    objs = "".join(
        f"<object><name>{o[0]}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{o[5] if len(o) > 5 else 0}</difficult><bndbox><xmin>{o[1]}</xmin><ymin>{o[2]}</ymin>"
        f"<xmax>{o[3]}</xmax><ymax>{o[4]}</ymax></bndbox></object>" for o in objects)
    return (f"<annotation><folder>JPEGImages</folder><filename>{filename}</filename><size><width>{size[0]}</width>"
            f"<height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>")


def flir_aligned(data_dir: Path, n_train: int = 10, n_test: int = 4, size=(64, 52)) -> Path:
    """``FLIR_aligned/JPEGImages/FLIR_xxxxx_PreviewData.jpeg`` (IR) + ``FLIR_xxxxx_RGB.jpg``, VOC xml per
    pair under ``Annotations/``, ``align_train.txt`` / ``align_validation.txt``; FLIR's stray ``dog`` boxes and a
    zero-area box, as in the release."""
    root = data_dir / "FLIR_aligned"
    ids = {"train": [f"FLIR_{i:05d}" for i in range(1, n_train + 1)],
           "validation": [f"FLIR_{i:05d}" for i in range(8863, 8863 + n_test)]}
    for split, stems in ids.items():
        for k, stem in enumerate(stems):
            img(root / "JPEGImages" / f"{stem}_PreviewData.jpeg", size, "L")
            img(root / "JPEGImages" / f"{stem}_RGB.jpg", size)
            objects = [("person", 5, 5, 20, 40), ("car", 30, 20, 60, 40)]
            if k == 0:
                objects += [("dog", 1, 1, 9, 9), ("bicycle", 40, 10, 40, 30)]  # stray class + a zero-width box
            write(root / "Annotations" / f"{stem}_PreviewData.xml", voc_xml(size, objects, f"{stem}_PreviewData.jpeg"))
        write(root / f"align_{split}.txt", "\n".join(stems) + "\n")
    return root


def llvip(data_dir: Path, n_train: int = 10, n_test: int = 4, size=(64, 52)) -> Path:
    """``LLVIP/{infrared,visible}/{train,test}/<id>.jpg`` + one ``Annotations/<id>.xml`` per pair (person only);
    an annotation without an image, as the release has."""
    root = data_dir / "LLVIP"
    stems = {"train": [f"{10001 + i:06d}" for i in range(n_train)], "test": [f"{190001 + i:06d}" for i in range(n_test)]}
    for split, ids in stems.items():
        for k, stem in enumerate(ids):
            img(root / "infrared" / split / f"{stem}.jpg", size, "L")
            img(root / "visible" / split / f"{stem}.jpg", size)
            objects = [] if k == 1 else [("person", 10, 5, 30, 45, int(k == 2))]  # an empty frame; a difficult box
            write(root / "Annotations" / f"{stem}.xml", voc_xml(size, objects, f"{stem}.jpg"))
    write(root / "Annotations" / "999999.xml", voc_xml(size, [("person", 1, 1, 5, 5)]))  # orphan
    return root


# ----------------------------------------------------------------------------------------------- volumes
LPS = np.diag([-0.45, -0.45, 5.0, 1.0])  # DICOM-derived NIfTI: LPS axes, anisotropic head-CT spacing


def sah_datalist(data_dir: Path, shapes=((47, 49, 11), (32, 32, 26), (40, 36, 33)), n_patients: int = 6,
                 scans_per_patient: int = 2, patient_ids: bool = True) -> Path:
    """``sah/imagesTr/*.nii.gz``, ``sah/labelsTr/*.nii.gz`` and a Decathlon ``datalist.json`` with patient ids
    (two scans per patient), odd sizes and an LPS affine."""
    root = data_dir / "sah"
    rng = np.random.default_rng(0)
    entries = []
    for p in range(n_patients):
        for s in range(scans_per_patient):
            case = f"sah_{p:03d}_{s}"
            shape = shapes[(p + s) % len(shapes)]
            image = rng.normal(30, 10, shape).astype(np.float32)
            label = np.zeros(shape, np.uint8)
            c = [d // 2 for d in shape]
            label[c[0] - 4:c[0] + 4, c[1] - 4:c[1] + 4, max(0, c[2] - 2):c[2] + 2] = 1
            image[label > 0] = 70
            for kind, arr in (("imagesTr", image), ("labelsTr", label)):
                (root / kind).mkdir(parents=True, exist_ok=True)
                nib.save(nib.Nifti1Image(arr, LPS), root / kind / f"{case}.nii.gz")
            entry = {"image": f"imagesTr/{case}.nii.gz", "label": f"labelsTr/{case}.nii.gz", "case_id": case}
            if patient_ids:
                entry["patient_id"] = f"patient_{p:03d}"
            entries.append(entry)
    write(root / "datalist.json", json.dumps({"training": entries}, indent=1))
    return root


# ------------------------------------------------------------------------------------------------- audio
def flac(path: Path, sr: int = 16000, seconds: float = 0.25, seed: int = 0, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(seed).normal(0, 0.1, int(sr * seconds)).astype(np.float32)
    sf.write(path, x, sr, format=fmt)
    return path


def asvspoof(data_dir: Path) -> Path:
    """ASVspoof 2019 LA (``LA/ASVspoof2019_LA_cm_protocols`` + ``ASVspoof2019_LA_{train,dev,eval}/flac``), 2021
    LA and DF keys as the full key release unpacks (``keys/{LA,DF}/CM/trial_metadata.txt``; DF with 13 columns,
    audio in four part folders) and In-the-Wild (``meta.csv``, ``bona-fide``, 44.1 kHz wav)."""
    la = data_dir / "LA"
    protocols = {"train": ("trn", "T"), "dev": ("trl", "D"), "eval": ("trl", "E")}
    for split, (ext, letter) in protocols.items():
        lines = []
        for i, (attack, key) in enumerate([("-", "bonafide"), ("A01", "spoof"), ("-", "bonafide"), ("A02", "spoof")]):
            utt = f"LA_{letter}_{1000000 + i}"
            flac(la / f"ASVspoof2019_LA_{split}" / "flac" / f"{utt}.flac", seed=i)
            lines.append(f"LA_00{79 + i} {utt} - {attack} {key}")
        write(la / "ASVspoof2019_LA_cm_protocols" / f"ASVspoof2019.LA.cm.{split}.{ext}.txt", "\n".join(lines) + "\n")
    root21 = data_dir / "ASVspoof2021"
    la_keys = ["LA_0009 LA_E_9332881 alaw ita_tx A07 spoof notrim eval",
               "LA_0020 LA_E_6866159 none - bonafide bonafide notrim progress",
               "LA_0007 LA_E_5464494 none - bonafide bonafide notrim eval"]
    write(root21 / "keys" / "LA" / "CM" / "trial_metadata.txt", "\n".join(la_keys) + "\n")
    for line in la_keys:
        flac(root21 / "ASVspoof2021_LA_eval" / "flac" / f"{line.split()[1]}.flac")
    df_keys = ["LA_0043 DF_E_2000011 nocodec asvspoof A15 spoof notrim eval traditional_vocoder - - - -",
               "VCC2018_SF1 DF_E_2000050 mp3m4a vcc2018 bonafide bonafide notrim eval - - - - -",
               "LA_0023 DF_E_2000100 ogg asvspoof A07 spoof notrim progress neural_vocoder_nonautoregressive - - - -"]
    write(root21 / "keys" / "DF" / "CM" / "trial_metadata.txt", "\n".join(df_keys) + "\n")
    for part, line in enumerate(df_keys):
        flac(root21 / f"ASVspoof2021_DF_eval_part0{part}" / "ASVspoof2021_DF_eval" / "flac" / f"{line.split()[1]}.flac")
    wild = data_dir / "release_in_the_wild"
    write(wild / "meta.csv", "file,speaker,label\n0.wav,Alan Watts,spoof\n1.wav,Alan Watts,bona-fide\n"
                             "2.wav,Barack Obama,bona-fide\n")
    for i in range(3):
        flac(wild / f"{i}.wav", sr=44100 if i == 0 else 16000, seed=i, fmt="WAV")
    return data_dir


# ------------------------------------------------------------------------------------------------ checkpoints
FAIRSEQ_RULES = [  # torchaudio's wav2vec2 names -> fairseq's (the inverse of torchaudio's import_fairseq mapping)
    (r"feature_extractor\.conv_layers\.0\.layer_norm\.", "feature_extractor.conv_layers.0.2."),
    (r"feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
    (r"encoder\.feature_projection\.projection\.", "post_extract_proj."),
    (r"encoder\.feature_projection\.layer_norm\.", "layer_norm."),
    (r"encoder\.transformer\.pos_conv_embed\.conv\.parametrizations\.weight\.original0", "encoder.pos_conv.0.weight_g"),
    (r"encoder\.transformer\.pos_conv_embed\.conv\.parametrizations\.weight\.original1", "encoder.pos_conv.0.weight_v"),
    (r"encoder\.transformer\.pos_conv_embed\.conv\.", "encoder.pos_conv.0."),
    (r"encoder\.transformer\.layer_norm\.", "encoder.layer_norm."),
    (r"encoder\.transformer\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn."),
    (r"encoder\.transformer\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm."),
    (r"encoder\.transformer\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"encoder.layers.\1.fc1."),
    (r"encoder\.transformer\.layers\.(\d+)\.feed_forward\.output_dense\.", r"encoder.layers.\1.fc2."),
    (r"encoder\.transformer\.layers\.(\d+)\.final_layer_norm\.", r"encoder.layers.\1.final_layer_norm."),
]


def fairseq_wav2vec2_state(model) -> dict:
    """A torchaudio wav2vec2's tensors under the names fairseq's Wav2Vec2Model saves them (plus its mask_emb)."""
    import re

    import torch

    out = {}
    for k, v in model.state_dict().items():
        for pattern, repl in FAIRSEQ_RULES:
            new = re.sub("^" + pattern, repl, k)
            if new != k:
                k = new
                break
        out[k] = v.clone()
    out["mask_emb"] = torch.zeros(next(v for k, v in out.items() if k.startswith("post_extract_proj.") and
                                       k.endswith("bias")).shape[0])
    return out

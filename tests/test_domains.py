"""Multi-domain reader: ImageFolder and list files, descriptors, splits, shots, and bad input."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules import DatasetError, DomainDataModule, read_list_file, sample_shots
from datamodules.domains import DESCRIPTORS, stratified_split
from datamodules.synthetic import SyntheticDomainDataModule, generate_domains


def _img(path: Path, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


@pytest.fixture
def officehome(tmp_path) -> Path:
    """A tiny Office-Home tree: ImageFolder with the original 'Real World' spelling + TLlib list files."""
    root = tmp_path / "office_home"
    classes = DESCRIPTORS["office_home"].classes[:3]
    for domain in ("Art", "Real World"):
        for c in classes:
            for i in range(4):
                _img(root / domain / c / f"{i}.jpg", 40 * i)
    lines = [f"Art/{c}/{i}.jpg {ci}" for ci, c in enumerate(classes) for i in range(4)]
    (root / "image_list").mkdir()
    (root / "image_list" / "Art.txt").write_text("\n".join(lines) + "\n")
    return root


def test_domain_aliases_resolve_to_canonical_names():
    desc = DESCRIPTORS["office_home"]
    for spelling in ("Real_World", "Real World", "real_world", "Rw", "R"):
        assert desc.domain(spelling).name == "Real_World"
    assert DESCRIPTORS["pacs"].domain("art").name == "art_painting"
    assert DESCRIPTORS["visda2017"].domain("train").name == "Synthetic"
    assert len(DESCRIPTORS["office_home"].classes) == 65 and len(DESCRIPTORS["office31"].classes) == 31


def test_reads_list_files_and_imagefolder_with_known_spellings(officehome):
    dm = DomainDataModule(str(officehome), "office_home", sources=["Ar"], targets=["Real_World"],
                          image_size=8, val_ratio=0.25, batch_size=4)
    dm.setup()
    art = dm.read_domain("Art")  # from image_list/Art.txt
    real = dm.read_domain("Real_World")  # ImageFolder 'Real World/'
    assert len(art) == 12 and len(real) == 12
    assert {label for _, label in art} == {0, 1, 2}
    assert art[4][0] == officehome / "Art" / DESCRIPTORS["office_home"].classes[1] / "0.jpg"
    x, y, d = next(iter(dm.test_dataloader()[0]))
    assert x.shape == (4, 3, 8, 8) and d.tolist() == [1] * 4
    assert sum(len(ds) for ds in dm.source_val) == 3  # 25 % of each class


def test_missing_root_names_layout_and_readme(tmp_path):
    dm = DomainDataModule(str(tmp_path / "nope"), "office31", sources=["amazon"], targets=["webcam"])
    with pytest.raises(DatasetError, match=r"does not exist.*<domain>/<class>/<image>.*datamodules/README.md"):
        dm.setup()


def test_image_that_is_not_an_image_names_the_file(officehome):
    bad = officehome / "Real World" / DESCRIPTORS["office_home"].classes[0] / "0.jpg"
    bad.write_text("this is not a jpeg")
    dm = DomainDataModule(str(officehome), "office_home", sources=["Art"], targets=["Real_World"], image_size=8,
                          val_ratio=0.25)
    dm.setup()
    with pytest.raises(DatasetError, match=r"0\.jpg: not a readable image"):
        dm.target_test["Real_World"][0]


def test_list_file_bad_line_names_file_and_line(tmp_path):
    f = tmp_path / "list.txt"
    _img(tmp_path / "a/b c.jpg")
    f.write_text("a/b c.jpg 0\nbroken-line-without-label\n")
    with pytest.raises(DatasetError, match=r"list\.txt:2: expected '<image path> <integer label>'"):
        read_list_file(f, tmp_path)
    f.write_text("a/b.jpg 0\na/x.jpg 3 1\n")  # a third column is no path with a space: the file is not there
    with pytest.raises(DatasetError, match=r"list\.txt:2: expected 2 columns .* got 3"):
        read_list_file(f, tmp_path)
    f.write_text("a.jpg 7\n")
    with pytest.raises(DatasetError, match=r"list\.txt:1: label 7 is outside 0\.\.2"):
        read_list_file(f, tmp_path, num_classes=3)
    f.write_text("with space/x y.jpg 1\n")
    _img(tmp_path / "with space/x y.jpg")
    assert read_list_file(f, tmp_path)[0] == (tmp_path / "with space/x y.jpg", 1)


def test_pacs_lists_count_labels_from_one(tmp_path):
    f = tmp_path / "image_list" / "photo_all.txt"
    f.parent.mkdir()
    f.write_text("photo/dog/1.jpg 1\nphoto/person/2.jpg 7\n")
    _img(tmp_path / "photo/dog/1.jpg"), _img(tmp_path / "photo/person/2.jpg")
    dm = DomainDataModule(str(tmp_path), "pacs", targets=["P"])
    assert [label for _, label in dm.read_domain("photo")] == [0, 6]


def test_unknown_domain_lists_valid_ones():
    with pytest.raises(DatasetError, match=r"unknown domain 'Sketchy'.*Art \(Ar/A\), Clipart.*Real_World"):
        DomainDataModule("/data", "office_home", sources=["Sketchy"])


def test_stratified_split_is_seeded_and_disjoint():
    labels = [0] * 10 + [1] * 20
    a = stratified_split(labels, 0.2, seed=3)
    assert a == stratified_split(labels, 0.2, seed=3) and a != stratified_split(labels, 0.2, seed=4)
    train, val = a
    assert not set(train) & set(val) and len(val) == 6 and sorted(train + val) == list(range(30))


def test_shots_exact_per_class_and_deterministic():
    labels = np.repeat(np.arange(4), 6)
    shots, val = sample_shots(labels, k=3, seed=0, n_val=1)
    assert np.bincount(labels[shots]).tolist() == [3, 3, 3, 3] and np.bincount(labels[val]).tolist() == [1] * 4
    assert not set(shots) & set(val)
    assert (shots, val) == sample_shots(labels, k=3, seed=0, n_val=1)
    assert shots != sample_shots(labels, k=3, seed=1, n_val=1)[0]
    with pytest.raises(DatasetError, match=r"class 'cat' has 6 images, fewer than the 6 shots \+ 1"):
        sample_shots(labels, k=6, seed=0, class_names=["cat", "dog", "a", "b"], n_val=1)


def test_source_domains_restricted_to_known_classes(tmp_path):
    """The OOD scenario's source model sees only the RandomState(2020) subset, relabelled 0..K-1."""
    from datamodules.domains import known_classes

    dm = SyntheticDomainDataModule(str(tmp_path), per_class=5, size=8, sources=["photo"], targets=["sketch"],
                                   num_known=3, val_ratio=0.2)
    dm.setup()
    names = ["circle", "square", "triangle", "cross", "star"]
    assert dm.classes == tuple(names[i] for i in known_classes(5, 3)) and dm.num_classes == 3
    labels = {y for ds in dm.source_train + dm.source_val for y in ds.labels}
    assert labels == {0, 1, 2} and len(dm.target_test["sketch"]) == 15


def test_synthetic_generator_writes_imagefolder_once(tmp_path):
    root = generate_domains(tmp_path / "syn", domains=("photo", "infrared"), classes=("circle", "star"),
                            per_class=3, size=16, seed=1)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    assert len(files) == 12 and files[0] == "infrared/circle/0000.png"
    stamp = (root / "photo/star/0002.png").stat().st_mtime_ns
    generate_domains(tmp_path / "syn", domains=("photo", "infrared"), classes=("circle", "star"), per_class=3, size=16)
    assert (root / "photo/star/0002.png").stat().st_mtime_ns == stamp  # cached, not rewritten
    photo = np.asarray(Image.open(root / "photo/circle/0000.png"))
    ir = np.asarray(Image.open(root / "infrared/circle/0000.png"))
    assert photo.shape == ir.shape == (16, 16, 3)
    assert (ir[..., 0] == ir[..., 1]).all() and not (photo[..., 0] == photo[..., 1]).all()


def test_label_shift_and_known_class_scenarios():
    from datamodules.domains import known_classes, long_tail

    labels = np.repeat(np.arange(5), 40)
    keep = long_tail(labels, imbalance=10, seed=0)
    counts = sorted(np.bincount(labels[keep]).tolist())
    assert counts[-1] == 40 and counts[0] == 4 and keep == long_tail(labels, 10, seed=0)
    paper = sorted(np.random.RandomState(2020).permutation(65)[:25].tolist())  # the paper's protocol, by hand
    assert known_classes(65, 25) == paper and known_classes(65, 25, seed=2021) != paper
    with pytest.raises(ValueError, match="num_known must be in 1..12"):
        known_classes(12, 13)

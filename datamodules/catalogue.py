"""The multi-domain image datasets the suite knows: domains and their spellings, list-file layouts, class order
where no list gives it, and the published image counts (to spot an incomplete download)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import DatasetError


@dataclass(frozen=True)
class DomainSpec:
    name: str
    aliases: tuple[str, ...] = ()

    def spellings(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


@dataclass(frozen=True)
class ListLayout:
    """List files of one distribution of a dataset. ``files``: split -> path pattern (``{domain}``), splits
    ``all`` | ``train`` | ``val`` | ``test``; list paths are relative to ``root/image_root``."""

    name: str
    files: dict[str, str]
    image_root: str = ""


TLLIB = ListLayout("TLlib image_list/<domain>.txt", {"all": "image_list/{domain}.txt"})


@dataclass(frozen=True)
class DatasetDescriptor:
    name: str
    domains: tuple[DomainSpec, ...]
    classes: tuple[str, ...] | None = None  # label order where no list file gives it; None: sorted class folders
    list_layouts: tuple[ListLayout, ...] = (TLLIB,)
    list_orders: tuple[tuple[str, ...], ...] = ()  # known label orders of published lists (names for unlisted labels)
    label_offset: int = 0  # PACS lists count from 1
    official_split: bool = False  # the protocol has official split lists: no silent fallback to whole folders
    counts: dict[str, int] = field(default_factory=dict)  # published images per domain
    known_bad: tuple[str, ...] = ()  # files of the release that do not decode (skipped, counted)
    source: str = ""

    def domain(self, name: str) -> DomainSpec:
        if not self.domains:  # custom datasets: any folder name is a domain
            return DomainSpec(name)
        key = _norm(name)
        for d in self.domains:
            if key in {_norm(s) for s in d.spellings()}:
                return d
        valid = ", ".join(f"{d.name} ({'/'.join(d.aliases)})" if d.aliases else d.name for d in self.domains)
        raise DatasetError(f"unknown domain '{name}' for dataset {self.name}; valid domains: {valid}")


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


OFFICE31_CLASSES = tuple((
    "back_pack bike bike_helmet bookcase bottle calculator desk_chair desk_lamp desktop_computer file_cabinet "
    "headphones keyboard laptop_computer letter_tray mobile_phone monitor mouse mug paper_notebook pen phone "
    "printer projector punchers ring_binder ruler scissors speaker stapler tape_dispenser trash_can"
).split())
OFFICEHOME_CLASSES = tuple((
    "Alarm_Clock Backpack Batteries Bed Bike Bottle Bucket Calculator Calendar Candles Chair Clipboards Computer "
    "Couch Curtains Desk_Lamp Drill Eraser Exit_Sign Fan File_Cabinet Flipflops Flowers Folder Fork Glasses Hammer "
    "Helmet Kettle Keyboard Knives Lamp_Shade Laptop Marker Monitor Mop Mouse Mug Notebook Oven Pan Paper_Clip Pen "
    "Pencil Postit_Notes Printer Push_Pin Radio Refrigerator Ruler Scissors Screwdriver Shelf Sink Sneakers Soda "
    "Speaker Spoon TV Table Telephone ToothBrush Toys Trash_Can Webcam"
).split())
# The label order of TLlib's Office-Home image_list/*.txt (not alphabetical: Drill = 0, Alarm_Clock = 33).
OFFICEHOME_TLLIB_ORDER = tuple((
    "Drill Exit_Sign Bottle Glasses Computer File_Cabinet Shelf Toys Sink Laptop Kettle Folder Keyboard Flipflops "
    "Pencil Bed Hammer ToothBrush Couch Bike Postit_Notes Mug Webcam Desk_Lamp Telephone Helmet Mouse Pen Monitor "
    "Mop Sneakers Notebook Backpack Alarm_Clock Push_Pin Paper_Clip Batteries Radio Fan Ruler Pan Screwdriver "
    "Trash_Can Printer Speaker Eraser Bucket Chair Calendar Calculator Flowers Lamp_Shade Spoon Candles Clipboards "
    "Scissors TV Curtains Fork Soda Table Knives Oven Refrigerator Marker"
).split())

OFFICEHOME_CPR = (DomainSpec("Clipart", ("Cl", "C")), DomainSpec("Product", ("Pr", "P")),
                  DomainSpec("Real_World", ("Real World", "RealWorld", "Rw", "R")))  # the RSUT benchmark drops Art
OFFICEHOME_COUNTS = {"Art": 2427, "Clipart": 4365, "Product": 4439, "Real_World": 4357}  # 15,588
VISDA_DOMAINS = (DomainSpec("Synthetic", ("train", "T", "syn")), DomainSpec("Real", ("validation", "V", "val")))
VISDA_CLASSES = ("aeroplane", "bicycle", "bus", "car", "horse", "knife", "motorcycle", "person", "plant",
                 "skateboard", "train", "truck")
VISDA_LAYOUTS = (TLLIB, ListLayout("VisDA-2017 <domain>/image_list.txt", {"all": "{domain}/image_list.txt"},
                                   image_root="{domain}"))

DESCRIPTORS: dict[str, DatasetDescriptor] = {
    "office31": DatasetDescriptor(
        "office31",
        (DomainSpec("amazon", ("A",)), DomainSpec("dslr", ("D",)), DomainSpec("webcam", ("W",))),
        OFFICE31_CLASSES,
        counts={"amazon": 2817, "dslr": 498, "webcam": 795},
        source="Office-31 (Saenko et al. 2010); TLlib's copy adds image_list/{amazon,dslr,webcam}.txt",
    ),
    "office_home": DatasetDescriptor(
        "office_home",
        (DomainSpec("Art", ("Ar", "A")), *OFFICEHOME_CPR),
        OFFICEHOME_CLASSES,
        list_orders=(OFFICEHOME_TLLIB_ORDER, OFFICEHOME_CLASSES),
        counts=OFFICEHOME_COUNTS,
        source="Office-Home (Venkateswara et al. 2017), OfficeHomeDataset_10072016",
    ),
    "pacs": DatasetDescriptor(
        "pacs",
        (DomainSpec("art_painting", ("art", "A")), DomainSpec("cartoon", ("C",)), DomainSpec("photo", ("P",)),
         DomainSpec("sketch", ("S",))),
        ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person"),
        list_layouts=(
            ListLayout("PACS official kfold/ + <domain>_{train,crossval,test}_kfold.txt",
                       {"train": "{domain}_train_kfold.txt", "val": "{domain}_crossval_kfold.txt",
                        "test": "{domain}_test_kfold.txt"}, image_root="kfold"),
            ListLayout("Dassl images/ + splits/<domain>_{train,crossval}_kfold.txt",
                       {"train": "splits/{domain}_train_kfold.txt", "val": "splits/{domain}_crossval_kfold.txt",
                        "test": "splits/{domain}_test_kfold.txt"}, image_root="images"),
            ListLayout("TLlib image_list/<domain>_{train,val,all}.txt",
                       {"train": "image_list/{domain}_train.txt", "val": "image_list/{domain}_val.txt",
                        "test": "image_list/{domain}_all.txt"}),
        ),
        label_offset=1,
        official_split=True,
        counts={"art_painting": 2048, "cartoon": 2344, "photo": 1670, "sketch": 3929},  # 9,991
        known_bad=("sketch/dog/n02103406_4068-1.png",),
        source="PACS (Li et al. 2017), the kfold/ images folder with its *_kfold.txt split files",
    ),
    "domainnet": DatasetDescriptor(
        "domainnet",
        tuple(DomainSpec(d, (d[0],)) for d in ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")),
        None,
        list_layouts=tuple(
            ListLayout(name, {"train": f"{prefix}{{domain}}_train.txt", "test": f"{prefix}{{domain}}_test.txt"})
            for name, prefix in (("DomainNet official <domain>_{train,test}.txt", ""),
                                 ("TLlib image_list/<domain>_{train,test}.txt", "image_list/"),
                                 ("Dassl splits/<domain>_{train,test}.txt", "splits/"))),
        official_split=True,
        source="DomainNet (Peng et al. 2019), cleaned version with {domain}_train.txt / {domain}_test.txt",
    ),
    "visda2017": DatasetDescriptor(
        "visda2017", VISDA_DOMAINS, VISDA_CLASSES, list_layouts=VISDA_LAYOUTS,
        counts={"Synthetic": 152397, "Real": 55388},
        source="VisDA-2017 classification track (train/ and validation/ folders)",
    ),
    "vlcs": DatasetDescriptor(
        "vlcs",
        (DomainSpec("Caltech101", ("C",)), DomainSpec("LabelMe", ("L",)), DomainSpec("SUN09", ("S",)),
         DomainSpec("VOC2007", ("V",))),
        ("bird", "car", "chair", "dog", "person"),
        source="VLCS (Fang et al. 2013), DomainBed layout VLCS/<domain>/<class>/",
    ),
    "terra_incognita": DatasetDescriptor(
        "terra_incognita",
        tuple(DomainSpec(f"location_{n}", (f"L{n}",)) for n in (100, 38, 43, 46)),
        None,  # the class folders of the DomainBed copy
        source="Terra Incognita (Beery et al. 2018), DomainBed layout terra_incognita/location_<n>/<class>/",
    ),
    "office_home_rsut": DatasetDescriptor(
        "office_home_rsut", OFFICEHOME_CPR, OFFICEHOME_CLASSES,
        # reversely-unbalanced source lists; targets read {domain}_UT.txt
        list_layouts=(ListLayout("RSUT <domain>_RS.txt", {"all": "{domain}_RS.txt"}),),
        list_orders=(OFFICEHOME_CLASSES, OFFICEHOME_TLLIB_ORDER),
        source="Office-Home RSUT lists (Tan et al., 'Class-imbalanced domain adaptation') over Office-Home images",
    ),
    "visda2017_rsut": DatasetDescriptor(
        "visda2017_rsut", VISDA_DOMAINS, VISDA_CLASSES,
        list_layouts=(ListLayout("RSUT <domain>_RS.txt", {"all": "{domain}_RS.txt"}),),
        source="VisDA-C RSUT lists (Tan et al.) over the VisDA-2017 images",
    ),
    "custom": DatasetDescriptor("custom", (), None, source="your own ImageFolder or list files"),
}

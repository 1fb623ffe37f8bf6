"""Third-party output a user of this suite cannot act on, silenced where it comes from (each by its own message
and logger, never all warnings): Lightning's adverts for its cloud products, a deprecation inside Lightning that
torch >= 2.10 reports on every run, and MONAI's note that its GPU DICOM decoder is absent (printed each time a NIfTI
loader is built: MONAI builds every reader it knows)."""

from __future__ import annotations

import logging
import warnings


def _not_an_advert(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip:")


def _not_the_gpu_dicom_note(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("nvImageCodec is not available")


def quiet_third_party() -> None:
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _not_an_advert not in logger.filters:
        logger.addFilter(_not_an_advert)
    monai = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    if _not_the_gpu_dicom_note not in monai.filters:
        monai.addFilter(_not_the_gpu_dicom_note)
    warnings.filterwarnings("ignore", message=r"NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register",
                            module=r"monai\.data\.image_reader")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            module=r"lightning\.pytorch\.utilities\._pytree")

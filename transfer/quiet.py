"""Third-party output a user of this suite cannot act on, silenced where it comes from (each by its own message
and logger, never all warnings): Lightning's adverts for its cloud products, and a deprecation inside Lightning
that torch >= 2.10 reports on every run."""

from __future__ import annotations

import logging
import warnings


def _not_an_advert(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip:")


def quiet_third_party() -> None:
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _not_an_advert not in logger.filters:
        logger.addFilter(_not_an_advert)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            module=r"lightning\.pytorch\.utilities\._pytree")

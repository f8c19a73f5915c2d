"""The options of a transfer run: :class:`TransferOptions` and the protocol tables, defined in the config
layer (:mod:`selfsup.transferconfig`, so that ``selfsup config transfer`` reads them without torch) and
re-exported here, where the transfer code imports them."""

from selfsup.transferconfig import (APPLIES_TO, PROTOCOLS, VIT_ONLY, VIT_OPTIONS, TransferOptions,
                                    check_options)

__all__ = ["APPLIES_TO", "PROTOCOLS", "VIT_ONLY", "VIT_OPTIONS", "TransferOptions", "check_options"]

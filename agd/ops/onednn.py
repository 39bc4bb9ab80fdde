"""oneDNN's fused convolution + activation (+ add), ``mkldnn::_convolution_pointwise``: the op backend
``agd.arch.fast.convert(net, "cpp")`` runs norm-free dense convolutions on (channels-last). It comes with
torch (the op torch.compile's CPU backend emits); this module says whether it runs here."""

from __future__ import annotations

import torch

from agd.status import BackendStatus


def onednn_reason() -> str:
    """"" when oneDNN's fused convolution (``torch.ops.mkldnn._convolution_pointwise``) runs here, else why not."""
    if not torch.backends.mkldnn.is_available():
        return f"torch {torch.__version__} was built without oneDNN (mkldnn)"
    try:
        torch.ops.mkldnn._convolution_pointwise.default  # noqa: B018 (probe)
        torch.ops.mkldnn._convolution_pointwise.binary  # noqa: B018
    except (AttributeError, RuntimeError):
        return f"torch {torch.__version__} has no mkldnn::_convolution_pointwise op"
    return ""


def onednn_status() -> BackendStatus:
    """``agd info``'s line for the fused oneDNN convolutions (the same probe as :func:`onednn_reason`)."""
    why = onednn_reason()
    return BackendStatus.of("oneDNN fused conv", [why + "; the cpp student backend keeps those convolutions eager"] if why else [],
                            "mkldnn::_convolution_pointwise (conv + act [+ add], channels-last)")

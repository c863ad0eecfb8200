"""Run a model in PX's linearized passes through forward hooks: no copies, no patched torch functions.

Modes:

- ``real``: the model as it is, on real data. Each rule records what the linear modes need: an activation's gate
  ``phi(z) / z``, a normalization's inverse standard deviation, an attention probability matrix, a max-pool choice,
  a squeeze-excitation gate.
- ``data``: the recorded gates replace every non-linearity, so the network becomes linear in its input
  (``z1`` of the PX bound: unit weights, squared input).
- ``path``: activations are the identity, attention is uniform, norms are the fixed gain ``gamma**2 * E[rstd**2]``
  (``z2``: squared weights, all-ones input).
- ``synflow``: as ``path`` with norms reduced to ``|gamma|``, for SynFlow's data-free pass.

What a kind of module does in each mode is a :class:`~px_hf.modeling.passes.base.Rule`, one module per kind
(``activation.py``, ``normalization.py``, ``pooling.py``, ``gate.py`` for squeeze-excitation, ``convolution.py`` for
weight standardization), listed in
``registry.py``; attention that dispatches through transformers' ``AttentionInterface``
is in ``attention.py``; residual-block rescaling and branch balancing in ``residual.py``; the transformed
parameters of each mode in ``parameters.py``; the check that the data pass is really linear in ``linearity.py``;
the test that admits a nested block to rescaling in ``streams.py``.
:class:`LinearizedPasses` (``engine.py``) installs the hooks and dispatches to them.
"""

from .engine import LinearizedPasses
from .linearity import check_data_pass_linear
from .parameters import pass_parameters
from .streams import admit_stream_blocks

__all__ = ["LinearizedPasses", "admit_stream_blocks", "check_data_pass_linear", "pass_parameters"]

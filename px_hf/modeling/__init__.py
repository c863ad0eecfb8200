"""Everything px_hf knows about model architectures: how to find their activations, normalizations, attention
and residual blocks, how to call them, and how to run them in PX's linearized passes."""

"""The names of the files in a pruned model's directory: the one place that spells them."""

PRUNING_CONFIG_FILE = "pruning_config.json"
MASK_FILE = "px_masks.safetensors"
COMPACT_WEIGHTS_FILE = "px_compact.safetensors"
# Weights of a model that is not a transformers model (transformers writes its own file names).
GENERIC_WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
DENSITY_PLOT = "density_per_layer.png"

# Every file a px_hf save writes, next to what transformers' save_pretrained writes.
PX_HF_FILES = (PRUNING_CONFIG_FILE, MASK_FILE, COMPACT_WEIGHTS_FILE, GENERIC_WEIGHTS_FILE, CARD_FILE, DENSITY_PLOT)

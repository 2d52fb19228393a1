"""Cast a trained model folder's weights to fp16 in place (the family is committed in fp16)."""

import json
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

folder = Path(sys.argv[1])
weights = folder / "model.safetensors"
save_file({name: tensor.half().contiguous() for name, tensor in load_file(weights).items()}, weights, metadata={"format": "pt"})
config = json.loads((folder / "config.json").read_text())
config["dtype"] = "float16"
config.pop("torch_dtype", None)
(folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")

"""Continue the first concept run from its checkpoints at a 3.75x higher learning rate (one-off)."""
import logging
import shutil
from pathlib import Path

import torch

torch.set_num_threads(1)
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
from toyworld.models.concept_train import train_concepts

r1, r2 = Path("lab/concepts/run"), Path("lab/concepts/run2")
r2.mkdir(exist_ok=True)
for f in ("db.pt", "rows.pt"):
    if not (r2 / f).exists():
        (r2 / f).symlink_to((r1 / f).resolve())
for n in ("adapter", "control"):
    shutil.copyfile(r1 / f"{n}.safetensors", r2 / f"init_{n}_run1.safetensors")
print(train_concepts(r2, adapter_init=r2 / "init_adapter_run1.safetensors", control_init=r2 / "init_control_run1.safetensors",
                     n_rows=2500, minutes=24, lr_adapter=1.5e-3, lr_decoder=1.5e-4))

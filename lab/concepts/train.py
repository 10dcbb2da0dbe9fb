"""Run the concept-dropout training on this CPU (one-off driver; outputs in lab/concepts/run)."""
import logging
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
from toyworld.models.concept_train import train_concepts

minutes = float(sys.argv[1]) if len(sys.argv) > 1 else 30
print(train_concepts(Path("lab/concepts/run"), n_rows=2500, minutes=minutes))

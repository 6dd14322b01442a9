"""The pre-trained encoder as an MLflow pyfunc model, so the registry serves what training made.

`predict` takes a DataFrame with a `text` column (-> text embeddings) or an array of grey
images [N, H, W] uint8 (-> image embeddings).
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np
import torch

from common.storage import atomic_path

WEIGHTS_ARTIFACT = "weights"


def save_weights(checkpoint: Path, out: Path) -> Path:
    """A slim copy of a training checkpoint: weights and configs, no optimiser state."""
    payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
    slim = {k: payload[k] for k in ("model", "model_config", "train_config") if k in payload}
    with atomic_path(out) as tmp:
        torch.save(slim, tmp)
    return out


class MedFilipEncoder(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from training.model import create_model, create_tokenizer

        payload = torch.load(context.artifacts[WEIGHTS_ARTIFACT], map_location="cpu", weights_only=False)
        self.model = create_model(payload["model_config"])
        self.model.load_state_dict(payload["model"])
        self.model.eval()
        self.tokenizer = create_tokenizer(payload["model_config"])

    def predict(self, context, model_input, params=None) -> np.ndarray:
        with torch.no_grad():
            if hasattr(model_input, "columns") and "text" in model_input.columns:
                tokens = self.tokenizer(list(model_input["text"]))
                return self.model.encode_text(tokens).numpy()
            images = torch.as_tensor(np.asarray(model_input), dtype=torch.float32).unsqueeze(1) / 255.0
            return self.model.encode_image(images).numpy()

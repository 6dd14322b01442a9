"""The pre-trained encoder as an MLflow pyfunc model, so the registry serves what training made.

Logged from code (training/mlflow_model_code.py, no cloudpickle) with the `training` and `common`
packages as code paths, so it loads wherever MLflow and torch are installed, repository or not.
`predict` takes a DataFrame with a `text` column (-> text embeddings) or an `image` column of
encoded grey images, PNG or JPEG bytes (-> image embeddings); one embedding row per input row.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from common.storage import atomic_path

WEIGHTS_ARTIFACT = "weights"
INPUT_EXAMPLE_TEXT = "small left effusion. homogeneous density at the lung base with a meniscus"


def save_weights(checkpoint: Path, out: Path) -> Path:
    """A slim copy of a training checkpoint: weights and configs, no optimiser state."""
    payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
    slim = {k: payload[k] for k in ("model", "model_config", "train_config") if k in payload}
    with atomic_path(out) as tmp:
        torch.save(slim, tmp)
    return out


def model_signature():
    """Input: a `text` or an `image` column (either may be absent); output: float32 [N, dim]."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    inputs = Schema([ColSpec("string", "text", required=False), ColSpec("binary", "image", required=False)])
    outputs = Schema([TensorSpec(np.dtype("float32"), (-1, -1))])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example() -> pd.DataFrame:
    return pd.DataFrame({"text": [INPUT_EXAMPLE_TEXT]})


class MedFilipEncoder(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from medfilip_model.dual_encoder import create_model, create_tokenizer

        payload = torch.load(context.artifacts[WEIGHTS_ARTIFACT], map_location="cpu", weights_only=False)
        self.model = create_model(payload["model_config"])
        self.model.load_state_dict(payload["model"])
        self.model.eval()
        self.tokenizer = create_tokenizer(payload["model_config"])
        self.image_size = int(payload["model_config"].get("vision_cfg", {}).get("image_size", 224))

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        with torch.no_grad():
            if "text" in model_input.columns and model_input["text"].notna().all():
                tokens = self.tokenizer([str(t) for t in model_input["text"]])
                return self.model.encode_text(tokens).numpy().astype(np.float32)
            if "image" in model_input.columns:
                images = torch.stack([self._grey(data) for data in model_input["image"]]).unsqueeze(1)
                return self.model.encode_image(images).numpy().astype(np.float32)
        raise ValueError("model input needs a `text` column (strings) or an `image` column (PNG/JPEG bytes)")

    def _grey(self, data: bytes) -> torch.Tensor:
        from PIL import Image

        image = Image.open(io.BytesIO(data)).convert("L").resize((self.image_size, self.image_size))
        return torch.as_tensor(np.asarray(image), dtype=torch.float32) / 255.0

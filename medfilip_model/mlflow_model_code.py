"""The file MLflow logs as the model's code ("models from code"): it names the model object."""

from mlflow.models import set_model

from medfilip_model.mlflow_model import MedFilipEncoder

set_model(MedFilipEncoder())

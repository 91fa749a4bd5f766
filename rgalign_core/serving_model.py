"""The published bundle as an MLflow pyfunc model (models-from-code: ``publish`` logs this file).

    model = mlflow.pyfunc.load_model("models:/rgalign-qe-rec@champion")
    model.predict(sessions_df, params={"k": 3})   # features/sessions rows -> top-K rows per session
"""
import mlflow
from mlflow.pyfunc import PythonModel

from rgalign_core.serving import Bundle


class BundleModel(PythonModel):
    def load_context(self, context):
        self.bundle = Bundle(context.artifacts["bundle"])

    def predict(self, context, model_input, params=None):
        return self.bundle.top_k(model_input, int((params or {}).get("k", 3)))


mlflow.models.set_model(BundleModel())

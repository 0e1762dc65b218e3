from .loop import TrainResult, build_prompted_model, train

__all__ = ["TrainResult", "build_prompted_model", "train"]

from .loop import TrainResult, build_prompted_model, resume, train

__all__ = ["TrainResult", "build_prompted_model", "resume", "train"]

from .loop import TrainResult, resume, train

__all__ = ["TrainResult", "resume", "train"]

from .batch import Classification, Generation, Request, run_batch
from .generate import generate

__all__ = ["Classification", "Generation", "Request", "generate", "run_batch"]

"""softprompt: prompt tuning for frozen Hugging Face models.

Examples:
    >>> import softprompt as sp
    >>> backbone = sp.load_backbone("smollm2-135m")                                    # doctest: +SKIP
    >>> result = sp.train(sp.TrainConfig(data="rotten_tomatoes", output="runs/rt"), backbone=backbone)  # doctest: +SKIP
"""

from .config import TrainConfig
from .data import BUILTIN_DATASETS, TaskData, load_task
from .errors import (
    BackboneError,
    ConfigError,
    DataError,
    IncompatiblePromptError,
    PromptFileError,
    SoftPromptError,
    StorageError,
)
from .evaluation import evaluate
from .formats import read_prompt_file, read_prompt_tensors, save_prompt
from .hub import BUILTIN_BACKBONES, load_backbone, resolve_precision
from .inference import generate
from .inference.bank import PromptBank
from .kinds.table import build_prompted_model, load_prompted_model
from .kinds.causal_lm.backbone import CausalLMBackbone
from .kinds.causal_lm.model import PromptedModel
from .pretrained import from_pretrained
from .methods import METHODS, MethodName
from .methods.deep import DeepPrompt
from .prompts import PromptInit, SoftPrompt, initial_embeddings
from .protocols import Backbone, BackboneKind, TaskType
from .template import Placement, Template, build_template
from .training import TrainResult, train
from .training.loop import train_multitask
from .training.multitask import MultitaskResult
from .verbalizer import Verbalizer
from .version import __version__ as __version__

__all__ = [
    "BUILTIN_BACKBONES", "BUILTIN_DATASETS", "Backbone", "BackboneError", "BackboneKind", "CausalLMBackbone",
    "ConfigError", "DataError", "DeepPrompt", "IncompatiblePromptError", "Placement", "PromptFileError", "PromptInit",
    "METHODS", "MethodName", "PromptBank", "PromptedModel", "SoftPrompt", "SoftPromptError", "StorageError", "TaskData", "TaskType", "Template", "TrainConfig",
    "TrainResult", "Verbalizer", "build_prompted_model", "build_template", "evaluate", "generate",
    "from_pretrained", "initial_embeddings", "load_backbone", "load_prompted_model", "load_task", "read_prompt_file", "read_prompt_tensors",
    "resolve_precision", "save_prompt", "train", "train_multitask", "MultitaskResult",
]

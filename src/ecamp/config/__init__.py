"""Every ecamp config in one place: the dataclass trees and their loader.

Every stage of ecamp is driven by one dataclass tree.  A YAML file gives any subset of its
fields; command-line overrides (``train.lr=3e-4``) come last.  Unknown keys, wrongly typed
values and mode strings outside a field's ``Literal`` choices fail when the config loads
(:func:`from_dict`), with a message naming the key and the valid choices.

Submodules, one per stage: ``model`` (the ECAMP network and its presets), ``train`` (the
generic loop), ``pretrain``, ``attention`` (GLoRIA stage), ``gloria`` (GLoRIA network),
``finetune``, ``distill`` and ``student``.  Nothing here imports torch: the CLI builds its
parser and reads configs without it.
"""

from ecamp.config.attention import (
    TRAIN_DEFAULTS,
    AttentionConfig,
    AttentionDataConfig,
    ExportConfig,
    attention_config,
    load_attention_config,
)
from ecamp.config.distill import BACKENDS, DistillConfig
from ecamp.config.finetune import (
    DATASETS,
    TASKS,
    FinetuneConfig,
    FinetuneDataConfig,
    FinetuneModelConfig,
    check_config,
)
from ecamp.config.gloria import GLORIA_PRESETS, GloriaConfig, gloria_config
from ecamp.config.loader import (
    ConfigError,
    apply_overrides,
    check_choices,
    deep_merge,
    from_dict,
    load_config,
    parse_override,
    read_yaml,
    save_config,
    to_dict,
)
from ecamp.config.model import PRESETS, ModelConfig, model_config
from ecamp.config.pretrain import DataConfig, PretrainConfig, TextConfig
from ecamp.config.student import LoraSettings, StudentConfig, load_student_config
from ecamp.config.train import Precision, TrainConfig

__all__ = [
    "BACKENDS",
    "DATASETS",
    "GLORIA_PRESETS",
    "PRESETS",
    "TASKS",
    "TRAIN_DEFAULTS",
    "AttentionConfig",
    "AttentionDataConfig",
    "ConfigError",
    "DataConfig",
    "DistillConfig",
    "ExportConfig",
    "FinetuneConfig",
    "FinetuneDataConfig",
    "FinetuneModelConfig",
    "GloriaConfig",
    "LoraSettings",
    "ModelConfig",
    "Precision",
    "PretrainConfig",
    "StudentConfig",
    "TextConfig",
    "TrainConfig",
    "apply_overrides",
    "attention_config",
    "check_choices",
    "check_config",
    "deep_merge",
    "from_dict",
    "gloria_config",
    "load_attention_config",
    "load_config",
    "load_student_config",
    "model_config",
    "parse_override",
    "read_yaml",
    "save_config",
    "to_dict",
]

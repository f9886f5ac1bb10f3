"""Weight-sharing SuperTransformer, standalone SubTransformers, data, training and evaluation (`hwnas.supernet`,
folder `supernet/`)."""

from hwnas.supernet._checkpoint import (
    LoadedSupernet,
    load_subtransformer,
    load_supernet,
    read_checkpoint,
    save_subtransformer,
    subtransformer_provenance,
)
from hwnas.supernet._data import (
    BIBLE_TRANSLATIONS,
    DataSpec,
    ParallelCorpus,
    load_bible,
    make_batches,
    read_parallel_files,
    train_tokenizer,
)
from hwnas.supernet._distributed import run_distributed
from hwnas.supernet._evaluate import EvalResult, bleu, corpus_loss, evaluate_subnet, translate
from hwnas.supernet._generate import beam_search, greedy_decode
from hwnas.supernet._model import (
    EncoderOut,
    ModelConfig,
    SubTransformer,
    count_flops,
    count_params,
    init_weights,
    sinusoid,
)
from hwnas.supernet._prepared import PreparedData, prepare_data
from hwnas.supernet._recipes import RECIPES, Recipe, get_recipe
from hwnas.supernet._retrain import INITS, RetrainResult, average_weights, inherited_provenance, train_subtransformer
from hwnas.supernet._super import SubnetView, SuperTransformer
from hwnas.supernet._train import (
    DEVICES,
    PRECISIONS,
    SCHEDULES,
    TrainConfig,
    TrainResult,
    TrainTask,
    precision_context,
    train_supernet,
)
from hwnas.supernet._train import run as run_training

__all__ = [
    "BIBLE_TRANSLATIONS",
    "DEVICES",
    "PRECISIONS",
    "PreparedData",
    "RECIPES",
    "Recipe",
    "SCHEDULES",
    "TrainTask",
    "precision_context",
    "make_batches",
    "run_distributed",
    "run_training",
    "get_recipe",
    "INITS",
    "RetrainResult",
    "average_weights",
    "inherited_provenance",
    "subtransformer_provenance",
    "train_subtransformer",
    "prepare_data",
    "DataSpec",
    "EncoderOut",
    "EvalResult",
    "LoadedSupernet",
    "ModelConfig",
    "ParallelCorpus",
    "SubTransformer",
    "SubnetView",
    "SuperTransformer",
    "TrainConfig",
    "TrainResult",
    "beam_search",
    "bleu",
    "corpus_loss",
    "count_flops",
    "count_params",
    "init_weights",
    "sinusoid",
    "evaluate_subnet",
    "greedy_decode",
    "load_bible",
    "load_subtransformer",
    "load_supernet",
    "read_checkpoint",
    "read_parallel_files",
    "save_subtransformer",
    "train_supernet",
    "train_tokenizer",
    "translate",
]

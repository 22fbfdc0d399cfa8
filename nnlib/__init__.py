"""nnlib: a numpy neural-network library with the course Module API."""

from .activation import (
    LeakyReLU,
    LogSoftmax,
    ReLU,
    Sigmoid,
    Softmax,
    Softplus,
    StableSigmoid,
    TanH,
)
from .conv import Conv1D, Flatten, MaxPool1D
from .explain import input_gradient, integrated_gradients, probability_gradient
from .io import OUTPUT_HEADS, Artifact, load, save, validate
from .limits import DEFAULT_LIMITS, ArtifactError, Limits
from .linear import Linear, Scale
from .loss import BCELoss, CrossEntropyLoss, Loss, MSELoss, NLLLoss, one_hot
from .module import Module, Sequential
from .optim import SGD, Adam, Optim, Optimizer
from .preprocessing import Standardize
from .train import History, accuracy, evaluate, fit

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_LIMITS",
    "OUTPUT_HEADS",
    "SGD",
    "Adam",
    "Artifact",
    "ArtifactError",
    "BCELoss",
    "Conv1D",
    "CrossEntropyLoss",
    "Flatten",
    "History",
    "LeakyReLU",
    "Limits",
    "Linear",
    "LogSoftmax",
    "Loss",
    "MSELoss",
    "MaxPool1D",
    "Module",
    "NLLLoss",
    "Optim",
    "Optimizer",
    "ReLU",
    "Scale",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "Softplus",
    "StableSigmoid",
    "Standardize",
    "TanH",
    "accuracy",
    "evaluate",
    "fit",
    "input_gradient",
    "integrated_gradients",
    "load",
    "one_hot",
    "probability_gradient",
    "save",
    "validate",
]

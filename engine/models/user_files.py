"""Reading the model and weights files a user picks.

Every file goes through ``engine.core.torch_files.read_torch_file``, which rebuilds only
tensors and plain containers: a file that needs full unpickling (which can run any code
in it) is refused unless the user says they trust it. TorchScript archives are loaded
with ``torch.jit.load``, which runs TorchScript, not arbitrary Python.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from engine.core.errors import ModelLoadError
from engine.core.torch_files import as_state_dict, read_state_dict, read_torch_file, unwrap_checkpoint

MODEL_ADVICE = 'choose another with "File > Open model file..." or --model FILE'


def load_model_file(path: str | os.PathLike, trust: bool = False) -> nn.Module:
    """A whole network from a TorchScript archive or a ``torch.save``'d ``nn.Module``.

    A pickled module needs full unpickling, which can run any code in the file: it is
    refused with ``UntrustedFileError`` unless ``trust`` is true.
    """
    path = Path(path)
    content = unwrap_checkpoint(read_torch_file(path, "model file", advice=MODEL_ADVICE, trust=trust, torchscript=True))
    if isinstance(content, nn.Module):
        return content
    if as_state_dict(content) is not None:
        raise ModelLoadError(
            f"{path.name} is a state dict: it holds weights but not the network they belong to, so it needs "
            f"an architecture name. Choose the architecture in the model list and open the file with "
            f'"File > Open weights file...", or run with --model ARCH --weights {path.name}'
        )
    raise ModelLoadError(f"{path.name} holds a {type(content).__name__}, not a model")


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (see ``engine.core.torch_files.read_state_dict``)."""
    return read_state_dict(path)

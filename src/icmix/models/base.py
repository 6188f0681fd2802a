"""Save and load for every icmix model: ``config.json`` (its frozen config) + ``model.safetensors``.

A checkpoint rebuilds its model from its own config; a state dict that does not match
the config is refused with a clear error.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import nn

from icmix._checks import check_memory
from icmix.io import staged_directory, write_bytes_durably

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def config_from_dict(config_class, d: dict):
    """Build a frozen model config from a dict, refusing unknown keys by name."""
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(config_class)})
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} keys: {unknown}")
    return config_class(**d)


DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


class Pretrained(nn.Module):
    """Mixin giving ``save_pretrained`` / ``from_pretrained``.  Subclasses set ``config_class``
    and ``model_type`` and keep their config in ``self.config``."""

    config_class: type
    model_type: str

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the folder ``path`` (``config.json`` + ``model.safetensors``) whole or not at all:
        it is assembled under a temporary name and renamed, replacing an older save (a folder
        holding other files is refused)."""
        path = Path(path)
        meta = {"model_type": self.model_type, "config": dataclasses.asdict(self.config),
                "dtype": str(next(self.parameters()).dtype).removeprefix("torch.")}
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with staged_directory(path, replaces=(WEIGHTS_FILE, CONFIG_FILE)) as stage:
            write_bytes_durably(stage / WEIGHTS_FILE, save(tensors))
            write_bytes_durably(stage / CONFIG_FILE, json.dumps(meta, indent=2).encode())
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str | torch.device = "cpu"):
        """The model ``save_pretrained`` wrote to ``path``: rebuilt from its own config, in the
        saved dtype, with its weights, on ``map_location``.  ``ValueError`` if the folder is not a
        saved model of this class's ``model_type``, its config asks for more memory than the machine
        has, or the weights do not match the config."""
        path = Path(path)
        if not (path / CONFIG_FILE).exists() or not (path / WEIGHTS_FILE).exists():
            raise ValueError(f"{path} is not a saved model (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
        try:
            meta = json.loads((path / CONFIG_FILE).read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"{path / CONFIG_FILE} is not JSON ({err})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
            raise ValueError(f"{path / CONFIG_FILE} does not hold a model's config")
        if meta.get("model_type") != cls.model_type:
            raise ValueError(f"{path} holds a {meta.get('model_type')!r} model, not {cls.model_type!r}")
        dtype = meta.get("dtype", "float32")
        if dtype not in DTYPES:  # a name from a file: looked up in a table, never in torch's namespace
            raise ValueError(f"{path / CONFIG_FILE}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        config = cls.config_class.from_dict(meta["config"])
        # A config from a file may ask for any size: refused before anything is allocated.
        # (built in fp32, converted, and the weights read: about three copies)
        check_memory(f"the model saved in {path}", model_bytes(lambda: cls(config)) * (1 + DTYPES[dtype].itemsize / 2),
                     "its config.json asks for a model larger than this machine can hold")
        model = cls(config).to(DTYPES[dtype])
        state = load_file(path / WEIGHTS_FILE, device=str(map_location))
        expected = model.state_dict()
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        wrong = [k for k in set(expected) & set(state) if expected[k].shape != state[k].shape]
        if missing or extra or wrong:
            raise ValueError(
                f"checkpoint in {path} does not match its config: missing {missing}, unexpected {extra}, "
                f"wrong shapes {[(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in sorted(wrong)]}"
            )
        model.load_state_dict(state)
        return model.to(map_location)



def model_bytes(build) -> int:
    """Bytes of the parameters and buffers of the model ``build()`` returns, counted on the
    ``meta`` device (nothing is allocated), so sizes that come from a user can be refused
    before they are tried: ``model_bytes(lambda: GPT(config))``."""
    with torch.device("meta"):
        model = build()
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])

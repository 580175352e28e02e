"""Loading Hugging Face models from disk: a local folder (safetensors, sharded) or a GGUF file.

Nothing is downloaded and nothing is unpickled: folders must hold `config.json` and safetensors
weights (one file, or shards listed in `model.safetensors.index.json`); GGUF files are read by
`gguf` and dequantized by transformers. Every problem a user can fix -- no weights, a missing
shard, a config whose shapes disagree with the weights, an architecture outside
`layerpeel.arch.table.ARCHITECTURES`, a tokenizer larger than the model's vocabulary -- is a one-line
`CheckpointError` or `DataError` before any model is built.

`load_hf(path) -> (model, tokenizer)`; `hf_monitoring_set(tokenizer, data, n_tokens, seq_len)`
tokenizes the built-in corpus (or `data`) with the model's own tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from layerpeel.errors import CheckpointError, ConfigError, DataError

log = logging.getLogger(__name__)

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.ckpt")

# GGUF `general.architecture` -> the model class transformers builds for it (must be in the table).
GGUF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "phi2": "PhiForCausalLM",
}

# GGUF tensor types layerpeel can constrain references to (see `solvers.quantized`).
GGUF_SCHEMES = {"Q4_0": "gguf-q4_0", "Q4_1": "gguf-q4_1", "Q8_0": "gguf-q8_0"}


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "loading Hugging Face models needs transformers: pip install 'layerpeel[hf]'"
        ) from None
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


class HFTokenizer:
    """A model's own `tokenizers` tokenizer, as a layerpeel `Tokenizer` (no special tokens added)."""

    def __init__(self, tok: Any, source: str) -> None:
        self._tok = tok
        text = tok.to_str()
        # the cache key of tokenized text: a changed tokenizer gets new tokens
        self.name = "hf-" + hashlib.sha256(text.encode()).hexdigest()[:16]
        self.vocab_size = int(tok.get_vocab_size(with_added_tokens=True))
        self.source = source

    def encode(self, text: str) -> np.ndarray:
        """Token ids (N,) int64; long text is encoded in pieces cut at paragraph breaks."""
        pieces, start = [], 0
        while start < len(text):
            cut = text.find("\n\n", start + (1 << 16))
            cut = len(text) if cut == -1 else cut
            pieces.append(text[start:cut])
            start = cut
        encodings = self._tok.encode_batch(pieces, add_special_tokens=False)
        arrays = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
        return np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return str(self._tok.decode([int(i) for i in ids]))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "vocab_size": self.vocab_size, "source": self.source}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not readable JSON: {exc}") from None


def safetensors_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it, checking the index and every shard."""
    index = folder / INDEX_NAME
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map")
        files = {name: folder / str(f) for name, f in weight_map.items()}
        for shard in sorted(set(files.values())):
            if not shard.is_file():
                raise CheckpointError(f"shard {shard.name} listed in {INDEX_NAME} is missing")
        return files
    single = folder / SINGLE_NAME
    shards = sorted(folder.glob("*.safetensors"))
    if not single.is_file() and len(shards) == 1:
        single = shards[0]
    if single.is_file():
        return {name: single for name in _header(single)}
    pickled = [p for p in PICKLED if (folder / p).exists()]
    if pickled:
        raise CheckpointError(
            f"{folder} holds only pickled weights ({pickled[0]}); layerpeel reads safetensors only"
        )
    raise CheckpointError(f"{folder} holds no weights ({SINGLE_NAME} or {INDEX_NAME})")


def _header(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from a safetensors header alone (no tensor is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{path.name} is not a readable safetensors file: {exc}") from None


def _architecture(config: Any) -> str:
    from layerpeel.arch.table import ARCHITECTURES

    names = list(getattr(config, "architectures", None) or [])
    if not names:
        raise CheckpointError("config.json names no architecture (field 'architectures')")
    if names[0] not in ARCHITECTURES:
        supported = ", ".join(sorted(n for n in ARCHITECTURES if n != "GPT"))
        raise ConfigError(f"unsupported architecture {names[0]}; supported: {supported}")
    return str(names[0])


def check_shapes(model: nn.Module, files: dict[str, Path]) -> None:
    """Every stored tensor the model has must have the model's shape (headers only)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    prefix = str(getattr(model, "base_model_prefix", "") or "")
    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(set(files.values())):
        shapes.update(_header(path))
    matched = 0
    for name, shape in shapes.items():
        key = name if name in expected else f"{prefix}.{name}" if prefix else name
        if key not in expected:
            continue
        matched += 1
        if expected[key] != shape:
            raise CheckpointError(
                f"config.json and the weights disagree: {name} is {list(shape)} in the weights, "
                f"{list(expected[key])} by the config"
            )
    if not matched:
        raise CheckpointError(
            "none of the stored tensors belongs to the model config.json describes"
        )


def load_folder(folder: Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A Hugging Face causal LM from a local folder of config.json + safetensors, in eval mode."""
    tf = _transformers()
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} has no config.json")
    files = safetensors_files(folder)
    try:
        config = tf.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for a bad config
        raise CheckpointError(f"config.json is not a usable model config: {exc}") from None
    arch = _architecture(config)
    with torch.device("meta"):
        skeleton = getattr(tf, arch)(config)
    check_shapes(skeleton, files)
    model = getattr(tf, arch).from_pretrained(
        str(folder), local_files_only=True, use_safetensors=True, dtype=dtype
    )
    scheme = getattr(config, "layerpeel_scheme", None)  # written by a low-bit export
    if scheme:
        model.layerpeel_scheme = str(scheme)
    return model.eval()


def gguf_metadata(path: Path) -> tuple[str, dict[str, str]]:
    """The GGUF file's architecture and, per tensor, its quantization type name."""
    try:
        import gguf
    except ImportError:
        raise ConfigError("reading GGUF files needs gguf: pip install 'layerpeel[hf]'") from None
    try:
        reader = gguf.GGUFReader(str(path))
        arch = str(reader.fields["general.architecture"].contents())
    except Exception as exc:  # noqa: BLE001 - gguf raises its own error types
        raise CheckpointError(f"{path.name} is not a readable GGUF file: {exc}") from None
    return arch, {t.name: t.tensor_type.name for t in reader.tensors}


def load_gguf(path: Path, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any]:
    """A causal LM (dequantized) and its tokenizer from a GGUF file.

    The GGUF type of each block weight is recorded in `model.layerpeel_gguf_types` (module name
    -> type) and, when they all share one format, `model.layerpeel_scheme` names it.
    """
    tf = _transformers()
    arch, types = gguf_metadata(path)
    if arch not in GGUF_ARCHITECTURES:
        raise ConfigError(
            f"unsupported GGUF architecture {arch!r}; supported: {', '.join(sorted(GGUF_ARCHITECTURES))}"
        )
    kwargs = dict(gguf_file=path.name, local_files_only=True)
    model = tf.AutoModelForCausalLM.from_pretrained(str(path.parent), dtype=dtype, **kwargs)
    if type(model).__name__ != GGUF_ARCHITECTURES[arch]:
        raise ConfigError(f"GGUF architecture {arch!r} loaded as {type(model).__name__}")
    tok = tf.AutoTokenizer.from_pretrained(str(path.parent), **kwargs)
    model.layerpeel_gguf_types = _module_types(model, types)
    scheme = gguf_scheme(model)
    if scheme is not None:
        model.layerpeel_scheme = scheme  # references are constrained to the file's format
    return model.eval(), tok.backend_tokenizer


def _module_types(model: nn.Module, types: dict[str, str]) -> dict[str, str]:
    """Block Linear name -> GGUF type, matched by layer index and role (llama.cpp names)."""
    roles = {
        "attn_q": "q_proj",
        "attn_k": "k_proj",
        "attn_v": "v_proj",
        "attn_output": "o_proj",
        "ffn_gate": "gate_proj",
        "ffn_up": "up_proj",
        "ffn_down": "down_proj",
    }
    out: dict[str, str] = {}
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for tensor, kind in types.items():
        parts = tensor.split(".")  # blk.<i>.<role>.weight
        if len(parts) != 4 or parts[0] != "blk" or parts[2] not in roles:
            continue
        suffix = (
            f".{parts[1]}.{'self_attn' if parts[2].startswith('attn') else 'mlp'}.{roles[parts[2]]}"
        )
        out.update({n: kind for n in names if n.endswith(suffix)})
    return out


def gguf_scheme(model: nn.Module) -> str | None:
    """The layerpeel scheme of a GGUF model's block weights, when they all share one type."""
    types = set(getattr(model, "layerpeel_gguf_types", {}).values())
    if len(types) != 1:
        return None
    return GGUF_SCHEMES.get(types.pop())


def load_hf(
    path: str | Path, dtype: torch.dtype = torch.float32
) -> tuple[nn.Module, HFTokenizer | None]:
    """A Hugging Face causal LM and its own tokenizer (None when the folder has none).

    `path` is a folder (config.json + safetensors, tokenizer.json) or a .gguf file (or a folder
    holding exactly one .gguf file and no safetensors).
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"no model folder or GGUF file at {p}")
    if p.is_dir() and not (p / "config.json").exists():
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            p = ggufs[0]
        elif len(ggufs) > 1:
            raise CheckpointError(f"{p} holds {len(ggufs)} GGUF files; name one")
    if p.is_file():
        if p.suffix != ".gguf":
            raise CheckpointError(f"{p} is neither a model folder nor a .gguf file")
        model, tok = load_gguf(p, dtype)
        tokenizer: HFTokenizer | None = HFTokenizer(tok, str(p))
    else:
        model = load_folder(p, dtype)
        tokenizer = _folder_tokenizer(p)
    if tokenizer is not None:
        check_vocabulary(model, tokenizer)
    return model, tokenizer


def _folder_tokenizer(folder: Path) -> HFTokenizer | None:
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    try:
        return HFTokenizer(Tokenizer.from_file(str(path)), str(path))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises its own exception types
        raise DataError(f"{path} is not a readable tokenizer: {exc}") from None


def vocabulary_size(model: nn.Module) -> int:
    """Rows of the model's token embedding."""
    embed: Any = model.get_input_embeddings()  # type: ignore[operator]
    return int(embed.weight.shape[0])


def context_length(model: nn.Module) -> int | None:
    """The longest sequence the model's position embedding takes (None when its config says not)."""
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_vocabulary(model: nn.Module, tokenizer: HFTokenizer) -> None:
    """A tokenizer must not produce ids the model's embedding does not have."""
    vocab = vocabulary_size(model)
    if tokenizer.vocab_size > vocab:
        raise DataError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary has "
            f"{vocab}: they do not belong together"
        )


def hf_monitoring_set(
    tokenizer: HFTokenizer | None,
    data: str | Path | None,
    n_tokens: int,
    seq_len: int,
    vocab_size: int,
) -> Any:
    """A monitoring set of ceil(n_tokens / seq_len) windows spread evenly over the text.

    The text is the built-in corpus unless `data` names a file or folder; a layerpeel token file
    (`.bin`) is used as it is.
    """
    from layerpeel.data import SequenceDataset, prepare_tokens, read_tokens
    from layerpeel.data.monitoring import check_enough_sequences, monitoring_set, sequences_wanted
    from layerpeel.training.trainer import token_cache_dir

    want = sequences_wanted(n_tokens, seq_len)  # checked before the data is read
    if data is not None and str(data).endswith(".bin"):
        tokens = read_tokens(data)
    else:
        if tokenizer is None:
            raise DataError("the model folder has no tokenizer.json; give token data with --data")
        tokens = prepare_tokens(data, tokenizer, token_cache_dir())
    if len(tokens) and int(np.max(tokens)) >= vocab_size:
        raise DataError("the token data has ids outside the model's vocabulary")
    dataset = SequenceDataset(tokens, seq_len)
    check_enough_sequences(len(dataset), seq_len)
    ids = np.arange(len(dataset))
    if want < len(ids):
        ids = ids[np.linspace(0, len(ids) - 1, want).round().astype(np.int64)]
    return monitoring_set(dataset.windows(ids))

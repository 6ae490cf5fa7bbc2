"""`rta`: random token addition (Somepalli et al. 2023; a baseline of Wen et al. and of the FB-Mem paper).

Inserts `n_tokens` random vocabulary tokens of the pipeline's own tokenizer at random word positions of
the prompt. The tokens and positions come from a generator seeded by (prompt_id, seed, n_tokens), so
a generation is reproducible; they are recorded per image in generations.mitigation_detail.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fbmem_data.errors import InputError
from fbmem_data.ids import params_hash
from fbmem_data.mitigate.protocol import GenerationBatch, Mitigation

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

_MAX_DRAWS = 10_000


def _usable_token_text(tokenizer: Any, token_id: int) -> str | None:
    """The text of a vocabulary entry if it reads as a standalone word, else None.

    Skips special tokens, WordPiece continuations (##ing), reserved slots ([unused7]) and tokens that
    decode to nothing or to several words.
    """
    if token_id in set(tokenizer.all_special_ids):
        return None
    token = tokenizer.convert_ids_to_tokens(token_id)
    if token is None or token.startswith("##"):
        return None
    text = tokenizer.convert_tokens_to_string([token]).strip()
    if not text or any(ch.isspace() for ch in text):
        return None
    if (text.startswith("[") and text.endswith("]")) or (text.startswith("<|") and text.endswith("|>")):
        return None
    return text


def random_tokens(tokenizer: Any, rng: random.Random, count: int) -> list[str]:
    """`count` random standalone-word tokens of the tokenizer's vocabulary (rejection sampling).

    Raises:
        InputError: the vocabulary has no usable token.
    """
    vocab_size = len(tokenizer)
    chosen: list[str] = []
    for _ in range(_MAX_DRAWS):
        if len(chosen) == count:
            return chosen
        text = _usable_token_text(tokenizer, rng.randrange(vocab_size))
        if text is not None:
            chosen.append(text)
    if len(chosen) == count:
        return chosen
    raise InputError(f"tokenizer {type(tokenizer).__name__} gave no usable vocabulary tokens in {_MAX_DRAWS} draws")


def add_random_tokens(prompt: str, tokens: list[str], rng: random.Random) -> tuple[str, list[int]]:
    """Insert each token at a random word position (0 = before the first word, len = after the last).

    Returns:
        (new prompt, the word index each token was inserted at, in insertion order).
    """
    words = prompt.split()
    positions: list[int] = []
    for token in tokens:
        pos = rng.randint(0, len(words))
        words.insert(pos, token)
        positions.append(pos)
    return " ".join(words), positions


class RandomTokenAddition(Mitigation):
    """Random token addition.

    Args:
        n_tokens: how many random tokens to insert (4 in Wen et al. and the FB-Mem paper).

    Raises:
        InputError: n_tokens < 1.
    """

    name = "rta"

    def __init__(self, n_tokens: int = 4) -> None:
        n_tokens = int(n_tokens)
        if n_tokens < 1:
            raise InputError(f"rta: n_tokens must be at least 1, got {n_tokens}")
        self.n_tokens = n_tokens

    def params(self) -> dict[str, Any]:
        return {"n_tokens": self.n_tokens}

    def rng_for(self, prompt_id: str, seed: int) -> random.Random:
        return random.Random(int(params_hash({"rta": self.n_tokens, "prompt_id": prompt_id, "seed": int(seed)}), 16))

    @contextlib.contextmanager
    def apply(self, pipe: DiffusionPipeline, batch: GenerationBatch) -> Iterator[GenerationBatch]:
        prompts: list[str] = []
        details: list[dict[str, Any]] = []
        for pid, prompt, seed, detail in zip(batch.prompt_ids, batch.prompts, batch.seeds, batch.details, strict=True):
            rng = self.rng_for(pid, seed)
            tokens = random_tokens(pipe.tokenizer, rng, self.n_tokens)
            new_prompt, positions = add_random_tokens(prompt, tokens, rng)
            prompts.append(new_prompt)
            details.append({**detail, "tokens": tokens, "positions": positions, "prompt": new_prompt})
        yield batch.replace(prompts=prompts, details=details)

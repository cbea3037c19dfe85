"""``token-classify``: per-token tags (named entities), grouped into entities with character offsets.

Grouping follows transformers' ``TokenClassificationPipeline`` with ``aggregation_strategy="simple"``:
special tokens are dropped, each token takes its most probable label, adjacent tokens whose labels share
a tag (``B-PER`` then ``I-PER``; a ``B-`` starts a new entity) form one entity scored by the mean of their
scores, its text decoded from its tokens and its span running from the first token's start to the last
one's end; entities labelled ``O`` are left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from toolkit.agreement import TOP1, TOP5, Meaning
from toolkit.checks import text_list
from toolkit.preprocess import label_names, softmax
from toolkit.tasks.accuracy import AccuracyReport, HeldOut, Runs, top1_report
from toolkit.tasks.base import Feeds, Task, TextPipeline
from toolkit.tasks.modality import TextModality

__all__ = ["PIPELINE", "TASK", "Entity", "TokenClassifier", "TokenClassifyTask"]

IGNORED_LABELS = frozenset({"O"})


@dataclass(frozen=True)
class Entity:
    """A run of tokens tagged alike: its label (``PER``), mean score, text, and character span [start, end)."""

    label: str
    score: float
    word: str
    start: int
    end: int


def _tag(label: str) -> tuple[str, str]:
    """(``B`` or ``I``, the tag): ``B-PER`` -> (B, PER); a label without a prefix continues (I)."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


class TokenClassifyTask(Task[TextModality]):
    """Softmax per token, then entities grouped as transformers' ``simple`` aggregation does."""

    name = "token-classify"
    modality = TextModality
    metric = "top1_agreement"
    preferred_output = "logits"
    meaning: ClassVar[Meaning] = {"logits": (TOP1, TOP5)}
    run_input = "text"

    def entities(self, text: str, encoding: Any, logits: np.ndarray) -> list[Entity]:
        """The entities of one text from its encoding and its logits [tokens, labels]."""
        tokenizer = self.data.tokenizer.tokenizer
        probs = softmax(logits)
        labels = label_names(self.manifest, probs.shape[-1])
        unk = getattr(tokenizer.model, "unk_token", None)
        unk_id = tokenizer.token_to_id(unk) if unk is not None else None
        tokens = []
        for index, (token_id, special, (start, end)) in enumerate(
            zip(encoding.ids, encoding.special_tokens_mask, encoding.offsets, strict=True)
        ):
            if special:
                continue
            best = int(probs[index].argmax())
            word = text[start:end] if token_id == unk_id else tokenizer.id_to_token(token_id)
            tokens.append((labels[best], float(probs[index, best]), word, start, end))
        groups: list[list[tuple[str, float, str, int, int]]] = []
        for token in tokens:
            if groups:
                bi, tag = _tag(token[0])
                if tag == _tag(groups[-1][-1][0])[1] and bi != "B":
                    groups[-1].append(token)
                    continue
            groups.append([token])
        entities = [self._entity(group) for group in groups]
        return [e for e in entities if e.label not in IGNORED_LABELS]

    def _entity(self, group: Sequence[tuple[str, float, str, int, int]]) -> Entity:
        decoder = self.data.tokenizer.tokenizer.decoder
        words = [token[2] for token in group]
        word = decoder.decode(words) if decoder is not None else " ".join(words)
        score = float(np.mean([token[1] for token in group]))
        return Entity(group[0][0].split("-", 1)[-1], score, word, group[0][3], group[-1][4])

    def run_lines(self, items: Sequence[str], results: Sequence[Any]) -> list[str]:
        """Each text, then ``  PER 'Wolfgang' 11-19 (0.998)`` per entity."""
        lines = []
        for text, entities in zip(items, results, strict=True):
            lines.append(f"{text[:50]!r}:")
            lines.extend(f"  {e.label} {e.word!r} {e.start}-{e.end} ({e.score:.3f})" for e in entities)
            if not entities:
                lines.append("  (no entities)")
        return lines

    def run_json(self, results: Sequence[Any]) -> dict[str, Any]:
        """``entities``: per text, its entities."""
        return {"entities": [[asdict(e) for e in entities] for entities in results]}

    def accuracy_report(self, runs: Runs, feeds: HeldOut) -> AccuracyReport:
        """Top-1 agreement of the variant's token labels with fp32's, and the largest logit difference."""
        return top1_report(self, runs, feeds)


class TokenClassifier(TextPipeline):
    """Named entities: `TokenClassifier.load(path).tag(texts)`."""

    task_class = TokenClassifyTask
    task: TokenClassifyTask

    def tag(self, texts: Iterable[str], batch_size: int = 32) -> list[list[Entity]]:
        """For each text, its entities in order of position, with character offsets into the text."""
        texts = text_list(texts)
        data = self.task.data
        encodings = data.tokenizer.encodings(texts)
        order = np.argsort([-len(e.ids) for e in encodings], kind="stable")

        def collate(rows: Sequence[int]) -> Feeds:
            padded = data.tokenizer.pad([(encodings[i].ids, encodings[i].type_ids) for i in rows])
            return {k: v for k, v in padded.items() if k in data.input_names}

        output = self.task.output_name(self.runner.outputs)
        logits = self._map(
            list(range(len(encodings))),
            batch_size,
            collate,
            lambda outputs, feeds: list(outputs[output]),
            order=[int(i) for i in order],
            outputs=[output],
        )
        return [
            self.task.entities(text, encoding, rows[: len(encoding.ids)])
            for text, encoding, rows in zip(texts, encodings, logits, strict=True)
        ]

    def run_items(self, items: Sequence[Any]) -> list[Any]:
        """`tag(items)`."""
        return list(self.tag(items))


TASK = TokenClassifyTask
PIPELINE = TokenClassifier

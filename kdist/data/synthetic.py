"""A procedurally generated multiple-choice task, learnable from scratch by tiny models.

"Which item is a <category>?" with five choices: one word of that category and four words of
other categories, in a random order. Seeded, so every run sees the same rows.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from kdist.tasks.multiple_choice import LETTERS, MultipleChoice

CATEGORIES: dict[str, list[str]] = {
    "fruit": ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear", "plum"],
    "animal": ["dog", "cat", "horse", "tiger", "rabbit", "wolf", "sheep", "goat", "mouse"],
    "color": ["red", "blue", "green", "yellow", "purple", "orange", "brown", "pink", "gray"],
    "vehicle": ["car", "bus", "truck", "train", "bicycle", "boat", "plane", "tram", "scooter"],
    "tool": ["hammer", "saw", "wrench", "drill", "shovel", "chisel", "pliers", "axe", "rake"],
    "country": ["france", "japan", "brazil", "kenya", "canada", "india", "spain", "peru", "egypt"],
    "instrument": ["piano", "violin", "guitar", "drum", "flute", "trumpet", "harp", "cello", "oboe"],
    "body part": ["arm", "leg", "hand", "foot", "nose", "ear", "knee", "elbow", "shoulder"],
}
NUM_CHOICES = 5


def make_question(rng: random.Random) -> MultipleChoice:
    names = list(CATEGORIES)
    target, *others = rng.sample(names, NUM_CHOICES)
    choices = [rng.choice(CATEGORIES[target])] + [rng.choice(CATEGORIES[c]) for c in others]
    order = list(range(NUM_CHOICES))
    rng.shuffle(order)
    shuffled = [choices[i] for i in order]
    answer = LETTERS[order.index(0)]
    article = "an" if target[0] in "aeiou" else "a"
    return MultipleChoice(f"Which item is {article} {target}?", shuffled, answer)


def question_at(seed: int, split: str, index: int) -> MultipleChoice:
    """Row `index` of `split`: a function of (seed, split, index) alone, so any worker can
    make any slice of the data and every run sees the same rows."""
    return make_question(random.Random(f"{seed}-{split}-{index}"))


def generate(split_sizes: dict[str, int], seed: int) -> Iterator[tuple[str, int, MultipleChoice]]:
    """(split, index, question) for every split, in order."""
    for split, size in split_sizes.items():
        for index in range(size):
            yield split, index, question_at(seed, split, index)


def vocabulary_text() -> list[str]:
    """Text that covers every word the task uses, each also after a space (as it appears in
    prompts), for training the demo tokenizer: word-level tokens are what tiny models learn."""
    words = [*CATEGORIES, *(w for members in CATEGORIES.values() for w in members), *LETTERS]
    return [" ".join(words)] * 20

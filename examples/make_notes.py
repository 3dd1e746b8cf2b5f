"""Write a small calibration text (public-domain style prose) for demos that must run offline."""

from __future__ import annotations

PARAGRAPHS = [
    "Pruning removes weights from a trained network. Small weights are usually removed first because "
    "they seem to contribute least to the output, yet the knowledge they carry may matter for hard tasks.",
    "A river runs from the mountains to the sea. Along its banks, towns grew where the water was calm "
    "enough for boats, and markets formed where roads crossed the water.",
    "The committee met on Tuesday to discuss the budget. After a long debate, members agreed to fund the "
    "library renovation and to postpone the new sports hall until the following year.",
    "Photosynthesis converts light energy into chemical energy. Plants absorb carbon dioxide and water, and "
    "with sunlight they produce glucose and release oxygen into the air.",
    "In mathematics, a prime number is a natural number greater than one that has no positive divisors "
    "other than one and itself. There are infinitely many primes, as Euclid showed.",
    "She opened the old letter carefully. The ink had faded, but the words were still legible: a promise "
    "to return before winter, signed with a name she did not recognise.",
    "Language models predict the next token from the previous ones. Trained on large corpora, they learn "
    "grammar, facts about the world, and some ability to reason over several steps.",
    "The recipe calls for two cups of flour, one egg, a pinch of salt and enough milk to make a smooth "
    "batter. Let it rest for half an hour before cooking on a hot pan.",
]

if __name__ == "__main__":
    for repeat in range(12):
        for index in range(len(PARAGRAPHS)):
            print(PARAGRAPHS[(index + repeat) % len(PARAGRAPHS)])
            print()

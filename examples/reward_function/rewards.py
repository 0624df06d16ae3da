"""Reward functions in TRL's style, one completion at a time: `(prompt, completion, **row) -> float`.

`completion` is the model's reply without its end-of-turn token; `row` holds the dataset row's
other fields (here `answer`, `difficulty`).
"""


def exact_word(prompt: str, completion: str, answer: str, **row) -> float:
    """1 for the expected word alone (case and surrounding whitespace ignored), 0.5 if it appears
    somewhere in the reply, else 0."""
    reply = completion.strip().strip(".!").lower()
    if reply == answer.lower():
        return 1.0
    return 0.5 if answer.lower() in reply else 0.0

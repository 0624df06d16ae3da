"""Way 1 of adding an environment: subclass `ToolEnv` and register it.

A letter-counting task: the model must count occurrences of a letter in a long word, and may
call a `count_letter` tool. Run this file to play two episodes with a scripted policy.
"""

import gymnasium

from spo_agents.env import Task, ToolEnv, extract_last_boxed, split_tasks, tool


@tool
def count_letter(word: str, letter: str) -> str:
    """Count how often a letter occurs in a word.

    Args:
        word: The word to search.
        letter: A single character.
    """
    return str(word.count(letter))


WORDS = ["mississippi", "bookkeeper", "parallelogram", "onomatopoeia", "abracadabra", "committee"]


class LetterCountEnv(ToolEnv):
    """Count letters in words, with a counting tool."""

    def __init__(self, split: str = "train", **kwargs):
        tasks = [
            Task(task_id=f"{word}-{letter}", prompt=f"How many times does '{letter}' occur in '{word}'?",
                 answer=str(word.count(letter)))
            for word in WORDS
            for letter in sorted(set(word))
        ]
        super().__init__(split_tasks(tasks, heldout_fraction=0.25), tools=[count_letter], split=split, max_turns=4,
                         **kwargs)

    def grade(self, final_reply: str, task: Task) -> float:
        return 1.0 if extract_last_boxed(final_reply) == task.answer else 0.0


gymnasium.register(id="examples/LetterCount-v0", entry_point=LetterCountEnv)

if __name__ == "__main__":
    env = gymnasium.make("examples/LetterCount-v0")
    for seed in range(2):
        observation, info = env.reset(seed=seed)
        word, letter = info["task_id"].split("-")
        call = f'<tool_call>{{"name": "count_letter", "arguments": {{"word": "{word}", "letter": "{letter}"}}}}</tool_call>'
        tool_output, *_ = env.step(call)
        _, reward, terminated, truncated, _ = env.step(f"\\boxed{{{tool_output}}}")
        print(f"{observation!r} -> tool says {tool_output}, reward {reward}, terminated {terminated}")

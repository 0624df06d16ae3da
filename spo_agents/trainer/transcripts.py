"""Readable transcripts of sample episodes (Markdown), written into the run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from spo_agents.rollout.episode import Episode


def render_episode(episode: Episode, formatter) -> str:
    lines = [f"### task {episode.task_id}: reward {episode.reward:g}"
             f"{' (truncated)' if episode.truncated else ''}{f' error: {episode.error}' if episode.error else ''}"]
    for index, turn in enumerate(episode.turns):
        if index == 0:
            lines += ["**prompt**", "```", formatter.decode(turn.prompt_ids), "```"]
        lines += [f"**assistant** (policy v{turn.policy_version}, {turn.finish_reason.value})", "```",
                  turn.completion_text, "```"]
        if turn.observation:
            lines += ["**observation**", "```", turn.observation, "```"]
    return "\n".join(lines)


def write_transcripts(path: Path, episodes: Sequence[Episode], formatter) -> None:
    if not episodes:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(render_episode(e, formatter) for e in episodes) + "\n")

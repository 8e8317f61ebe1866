"""A plain-Python workflow: no tracking code beyond naming its steps."""

from __future__ import annotations

from typing import Any

from isolane import RunContext


def main(ctx: RunContext, task: str, config: dict[str, Any]) -> dict[str, Any]:
    steps = int(config.get("steps", 3))
    ctx.phase("work")
    words: list[str] = []
    for i in range(1, steps + 1):
        with ctx.node(f"step_{i}", label=f"Step {i}"):
            word = f"{task.split()[0] if task else 'step'}-{i}"
            print(f"step {i}: {word}")
            (ctx.work_dir / f"step_{i}.txt").write_text(word + "\n")
            words.append(word)
    return {"words": words}

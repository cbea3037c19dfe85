"""``generate``: text generation with a causal LM: the task (`GenerateTask`: manifest section, samples, metric,
printing), its pipeline `TextGenerator` (prompts, chat templates, batching and streaming over the decoding
engine, `toolkit.decoding`) and the chat templates (`chat`)."""

from toolkit.tasks.generate.chat import Message, TemplateBudget, render_chat
from toolkit.tasks.generate.generator import GENERATE_TASK, Prompt, TextGenerator, TextStream, TokenPrompt
from toolkit.tasks.generate.task import GenerateTask

__all__ = [
    "GENERATE_TASK",
    "PIPELINE",
    "TASK",
    "GenerateTask",
    "Message",
    "Prompt",
    "TemplateBudget",
    "TextGenerator",
    "TextStream",
    "TokenPrompt",
    "render_chat",
]

TASK = GenerateTask
PIPELINE = TextGenerator

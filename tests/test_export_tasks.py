"""The converters' task vocabulary (`converters.export_tasks`) against the toolkit's task registry."""

from __future__ import annotations

import pytest

from converters.export_tasks import NOT_EXPORTED, TASKS, export_task
from converters.recipes import parse_recipe
from toolkit.errors import BadInputError, BadModelError
from toolkit.tasks import Family, tasks


def test_every_exportable_task_is_registered() -> None:
    unregistered = sorted(set(TASKS) - set(tasks()))
    assert not unregistered, f"converters export tasks the registry does not know: {unregistered}"


def test_every_registered_task_is_exportable_or_listed_as_not_exported() -> None:
    registered = set(tasks())
    assert registered >= NOT_EXPORTED
    assert not NOT_EXPORTED & set(TASKS)
    missing = sorted(registered - set(TASKS) - NOT_EXPORTED)
    assert not missing, (
        f"registered tasks with no export facts (add them to TASKS or NOT_EXPORTED): {missing}"
    )


def test_family_is_the_registrys_answer() -> None:
    assert TASKS["generate"].family is Family.GENERATOR
    assert {name for name, task in TASKS.items() if task.family is Family.ENCODER_DECODER} == {
        "transcribe",
        "text2text",
    }
    assert all(task.family is tasks()[name].family for name, task in TASKS.items())


def test_optimum_names_resolve_and_unknown_names_list_ours() -> None:
    assert export_task("text-classification").name == "classify"
    assert export_task("embed").optimum_task == "feature-extraction"
    with pytest.raises(BadInputError, match="unknown task 'speak'; use one of: embed, features"):
        export_task("speak")


def test_recipes_validate_against_the_same_list() -> None:
    text = 'name = "x"\nsummary = "s"\ntask = "speak"\n[source]\nhub = "a/b"\n'
    with pytest.raises(BadModelError, match=r"task 'speak' is not one of: embed, features"):
        parse_recipe("x", text)
    assert parse_recipe("x", text.replace("speak", "rerank")).task == "rerank"

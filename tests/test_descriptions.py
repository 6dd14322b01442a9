"""Descriptions shown in the Dagster UI render as written: the UI reads them as Markdown with
HTML, so a placeholder written `<category>` is taken for a tag and vanishes (zero_shot_eval's
description rendered as `prompts ". "`). Placeholders are written `{category}`."""

import re

from pipeline.definitions import defs

TAG = re.compile(r"</?[A-Za-z][\w.-]*>")


def shown_descriptions() -> dict[str, str]:
    graph = defs.resolve_asset_graph()
    shown = {f"asset {key.to_user_string()}": graph.get(key).description or "" for key in graph.get_all_asset_keys()}
    for key in graph.asset_check_keys:
        shown[f"check {key.name} of {key.asset_key.to_user_string()}"] = graph.get_check_spec(key).description or ""
    for kind, items in (("job", defs.resolve_all_job_defs()), ("sensor", defs.sensors or ()),
                        ("schedule", defs.schedules or ())):
        shown.update({f"{kind} {item.name}": item.description or "" for item in items})
    return shown


def test_no_description_holds_an_html_looking_placeholder():
    shown = shown_descriptions()
    assert "asset zero_shot_eval" in shown and "{category}. {description}" in shown["asset zero_shot_eval"]
    assert {name: TAG.findall(text) for name, text in shown.items() if TAG.search(text)} == {}


def test_the_pattern_finds_what_the_ui_would_eat():
    assert TAG.findall('prompts "<category>. <description>"') == ["<category>", "<description>"]
    assert not TAG.search("rate <= 0.05 and a < b, p{subject}/s{study}.txt")

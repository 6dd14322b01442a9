"""The comparators: medspaCy (ConText) and negspacy (NegEx), each configured for one convention by
the phrases export.py wrote, label the IU gold reports. Runs in the comparators' own virtual
environment (benchmarks/comparators/README.md), never imports the project:

    benchmarks/comparators/.venv/bin/python benchmarks/comparators/run.py ENGINE INPUT_JSON OUT_JSON

ENGINE is `medspacy` or `negspacy`. OUT_JSON holds, per convention, report id -> label -> 1 / -1 / 0
/ null, plus the engine's versions and its reports per CPU second; benchmarks/extract.py --quality
scores it with the same scorer as the rules backend.

- medspacy: medspacy.load() (PyRuSH sentences, target matcher, ConText with its default rules);
  every phrase is a TargetRule of its label; a mention is negated when ConText says is_negated,
  uncertain when is_uncertain or is_hypothetical.
- negspacy: a blank English spaCy pipeline, sentencizer, an entity ruler with every phrase, and
  Negex with the `en_clinical` termset; NegEx has no uncertainty, so a mention is 1 or 0.
Then as in extraction/labels.py: 1 beats -1 beats 0, a hedged phrase gives at most -1, and a
derived No Finding is 1 when no label outside its ignores is 1 / -1 and no phrase of
no_finding_also is asserted.
"""

from __future__ import annotations

import json
import sys
import time
from importlib.metadata import version
from pathlib import Path

STRENGTH = {None: 0, 0: 1, -1: 2, 1: 3}
HEDGED = "|hedged"
OTHER = "__no_finding_also__"


def targets(rules: dict) -> list[tuple[str, str]]:
    """(phrase, entity label) pairs; a hedged label's entity label carries a suffix."""
    pairs = [(p, label) for label, phrases in rules["labels"].items() for p in phrases]
    pairs += [(p, label + HEDGED) for label, phrases in rules["hedged"].items() for p in phrases]
    pairs += [(p, OTHER) for p in rules["no_finding_also"]]
    return pairs


def medspacy_pipeline(rules: dict):
    import medspacy
    from loguru import logger
    from medspacy.ner import TargetRule

    logger.disable("PyRuSH")  # its sentence splitter logs every token at DEBUG level
    nlp = medspacy.load()
    matcher = nlp.get_pipe("medspacy_target_matcher")
    matcher.add([TargetRule(literal=phrase, category=label) for phrase, label in targets(rules)])

    def mentions(doc) -> list[tuple[str, bool, bool]]:
        return [(ent.label_, ent._.is_negated, ent._.is_uncertain or ent._.is_hypothetical)
                for ent in doc.ents]
    return nlp, mentions


def negspacy_pipeline(rules: dict):
    import spacy
    from negspacy.negation import Negex  # noqa: F401  (registers the "negex" factory)
    from negspacy.termsets import termset

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    ruler = nlp.add_pipe("entity_ruler", config={"phrase_matcher_attr": "LOWER"})
    ruler.add_patterns([{"label": label, "pattern": phrase} for phrase, label in targets(rules)])
    nlp.add_pipe("negex", config={"neg_termset": termset("en_clinical").get_patterns()})

    def mentions(doc) -> list[tuple[str, bool, bool]]:
        return [(ent.label_, ent._.negex, False) for ent in doc.ents]
    return nlp, mentions


def labels_of(mentions: list[tuple[str, bool, bool]], rules: dict) -> dict[str, int | None]:
    values: dict[str, int | None] = {label: None for label in rules["labels"]}
    other = False
    for name, negated, uncertain in mentions:
        value = 0 if negated else -1 if uncertain else 1
        if name == OTHER:
            other |= value != 0
            continue
        if name.endswith(HEDGED):
            name, value = name[:-len(HEDGED)], 0 if negated else -1
        if STRENGTH[value] > STRENGTH[values[name]]:
            values[name] = value
    if rules["no_finding"]:
        found = other or any(v in (1, -1) for label, v in values.items()
                             if label not in rules["no_finding_ignores"])
        values[rules["no_finding"]] = None if found else 1
    return values


def main(engine: str, source: Path, out: Path) -> None:
    build = {"medspacy": medspacy_pipeline, "negspacy": negspacy_pipeline}.get(engine)
    if build is None:
        sys.exit(f"unknown engine {engine!r}: use medspacy or negspacy")
    payload = json.loads(source.read_text())
    reports = payload["reports"]
    result = {"engine": engine, "versions": {p: version(p) for p in (engine, "spacy")}, "labels": {}}
    cpu = 0.0
    for convention, rules in payload["conventions"].items():
        nlp, mentions = build(rules)
        started = time.process_time()
        result["labels"][convention] = {rid: labels_of(mentions(nlp(text)), rules)
                                        for rid, text in reports.items()}
        cpu += time.process_time() - started
    result["reports_per_cpu_s"] = len(reports) * len(payload["conventions"]) / cpu
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, sort_keys=True))
    print(f"{engine}: {len(reports)} reports x {len(payload['conventions'])} conventions, "
          f"{result['reports_per_cpu_s']:.0f} reports per CPU second -> {out}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__.split("\n\n")[1])
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))

"""Offline rule-based extractor: the embedded default backend (no network, deterministic).

Sentence by sentence it finds category mentions from ``knowledge/vocabulary.yaml``
(synonyms, multi-word phrases, plurals, and organ+state phrasing such as "the heart is
mildly enlarged"), attaches the severity and location words next to each mention, and
decides negation and uncertainty NegEx-style: a trigger ("no", "without", "negative for",
"may represent", ...) covers the mentions up to a scope terminator ("but", "however",
"which", ";", a verb, or a comma followed by a new affirmed finding), so "No pleural
effusion or pneumothorax" negates both. In a list closed by "or" a severity word does not
start a new finding ("No focal consolidation, pneumothorax or large pleural effusion").
Pseudo-triggers ("no change", "not excluded") are matched first, as longer phrases, so they
never act as negations. Findings offered as alternatives ("atelectasis or scarring",
"atelectasis and/or airspace disease", "infiltrate/atelectasis") and "borderline" ones are
uncertain, and so is everything a differential names or XXXX links to what came before
("opacity, XXXX atelectasis"). It names what the report says (a patchy opacity is an opacity,
hyperinflation is hyperinflation); knowledge/label_maps.yaml decides per convention what counts
as which label. These follow docs/labelling_guideline.md, which the IU gold sets are labelled by.

It answers in the JSON shape the LLM prompt asks for, so both backends share the parser.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extraction.interface import Answer, Usage
from extraction.vocabulary import (
    NEGATED_SEVERITY,
    NOT_STATED,
    Vocabulary,
    load_vocabulary,
    plural_forms,
)

RULES_MODEL = "negex-rules-1"

NEGATION_BEFORE = [
    "no", "not", "without", "negative for", "free of", "clear of", "no evidence of",
    "no evidence for", "no signs of", "no sign of", "absence of", "resolution of", "resolved",
    "no definite", "no new", "nor", "neither", "no longer", "interval removal of", "removal of",
    "no radiographic evidence of", "no findings of", "no typical findings of", "absent",
    "there is no", "there are no", "rather than", "not seen", "none", "clearing of",
    "interval clearing of", "no residual", "cleared",
    # a verb between "not" and the finding: "The lungs do not demonstrate focal infiltrate"
    "do not demonstrate", "does not demonstrate", "do not show", "does not show",
    "not demonstrate", "not show",
    # a recommendation "to exclude an underlying mass" asserts nothing (guideline, 6)
    "exclude", "to exclude",
]
NEGATION_AFTER = [
    "not seen", "not identified", "not visualized", "not present", "not appreciated",
    "not demonstrated", "not evident", "not noted", "not detected", "not visible",
    "is absent", "are absent", "absent", "has resolved", "have resolved", "resolved",
    "no longer seen", "no longer present", "no longer visualized", "no longer identified",
    "ruled out", "has been removed", "have been removed", "removed", "is negative",
    "has cleared", "have cleared", "cleared",
]
UNCERTAIN_BEFORE = [
    "possible", "possibly", "probable", "probably", "likely", "most likely", "questionable",
    "question of", "suspicious for", "concerning for", "concern for", "suspected", "suspect",
    "suggestive of", "suggesting", "suggests", "suggest", "may represent", "may be",
    "may reflect", "might", "could be", "could represent", "could reflect", "cannot exclude",
    "can not exclude", "can't exclude", "cannot rule out", "can not rule out", "differential",
    "versus", "vs", "equivocal", "indeterminate", "presumed", "presumably", "perhaps",
    "possibility of", "worrisome for", "consider", "considered", "question", "uncertain",
    # "may"/"could"/"might" hedge whatever verb follows ("may indicate", "could obscure")
    "may", "could", "either", "cannot entirely exclude", "cannot completely exclude",
    "difficult to exclude", "difficult to completely exclude", "suspicion for",
    "correlate clinically for", "correlate clinically with", "suspicion of", "suggestion of", "favor",
    "favored", "favoring",
    # XXXX (de-identification) hiding the verb's hedge: "opacity XXXX represents scar"
    "xxxx represent", "xxxx represents", "xxxx representing", "appearance xxxx",
]
# Hedges whose scope runs to the end of the sentence, over verbs and commas: "differential
# diagnosis is XXXX and includes edema, infection, ...", "In the appropriate clinical setting
# this appearance is compatible with pneumonia" (labelling guideline, 6).
UNCERTAIN_CLAUSE = [
    "differential", "differential diagnosis", "differential diagnosis includes",
    "considerations", "consideration", "appropriate clinical setting",
]
UNCERTAIN_AFTER = [
    "cannot be excluded", "can not be excluded", "can't be excluded", "not excluded",
    "not be excluded", "cannot be ruled out", "can not be ruled out", "not ruled out",
    "is suspected", "are suspected", "suspected", "versus", "vs", "is possible", "is likely",
    "not entirely excluded", "is questioned", "?", "not completely excluded", "suggested",
    "is suggested", "not well seen", "not well visualized", "difficult to exclude",
    "difficult to entirely exclude",
]
PSEUDO_TRIGGERS = [
    "no change", "no significant change", "no interval change", "no substantial change",
    "not changed", "no increase", "no significant interval change", "without change",
    "without interval change", "not significantly changed", "no worsening", "not only",
    "not well seen", "not well visualized", "not well evaluated", "not clearly",
    "gram negative", "no further", "not necessarily", "without significant change",
    "no significant interval", "not significantly",
]
SCOPE_TERMINATORS = [
    ";", ":", "(", ")", "but", "however", "although", "though", "which", "whereas", "while",
    "except", "aside from", "apart from", "yet", "otherwise",
]
# A verb closes a preceding negation: "No effusion is seen and the heart is enlarged".
VERBS = ["is", "are", "was", "were", "has", "have", "had", "appears", "appear", "remains",
         "remain", "demonstrates", "demonstrate", "shows", "show", "measures", "there's"]
# A word that, standing before a finding's modifiers, names another category: "calcified right
# midlung nodule" is a calcified nodule (its own category: not a lung lesion under `chexpert`).
QUALIFIED_CATEGORIES = {("calcified", "nodule"): "calcified nodule"}
# Words that offer findings as alternatives: "A or B", "A and/or B", "A/B", "A versus B".
ALTERNATIVE_WORDS = {"or", "/", "versus", "vs"}
ALTERNATIVE_GAP = 6  # at most this many items between two alternatives
# Words that join the findings of one list ("effusion and pneumothorax are not seen").
LIST_WORDS = {"and", "or", "nor", ","}
# Words that end the run of modifiers belonging to one mention.
MODIFIER_BREAKS = [",", "and", "or", "with", "/", "nor", "to", "versus", "vs"]
# Severity words that, after a comma, start a new affirmed finding ("No effusion, small
# pneumothorax"); "focal" is not one since negated lists say "no focal consolidation".
NON_AFFIRMING_SEVERITIES = {"focal"}
STATE_WINDOW_AFTER = 8
STATE_WINDOW_BEFORE = 3
POST_MODIFIER_WINDOW = 6
POST_TRIGGER_WINDOW = 8

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[?;:,()/]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[a-z]{2}[.!?])(?=[A-Z])|\n\s*\n")
_LIST_NUMBER = re.compile(r"^\s*\d+[.)]\s*")


@dataclass(frozen=True)
class RuleFinding:
    severity: str
    location: str
    category: str
    uncertain: bool
    sentence: str

    def as_json(self) -> dict[str, str]:
        return {"severity": self.severity, "location": self.location, "category": self.category,
                "certainty": "uncertain" if self.uncertain else "certain",
                "sentence": self.sentence}


class RulesBackend:
    """The rule extractor behind the common backend interface."""

    name = "rules"
    model = RULES_MODEL
    concurrency = 1  # CPU-bound under the GIL: threads would only add overhead
    commit_every = 500  # answers cost ~1 ms to redo, a commit ~5 ms: batch the writes

    def __init__(self, vocabulary_path: Path | str | None = None) -> None:
        self.vocabulary = load_vocabulary(vocabulary_path)
        self.extractor = RuleExtractor(self.vocabulary)
        self.params: dict[str, Any] = {}
        self.version = rules_version(self.vocabulary)

    def complete(self, report_text: str) -> Answer:
        started = time.perf_counter()
        findings = self.extractor.extract(report_text)
        text = json.dumps({"findings": [f.as_json() for f in findings]}, ensure_ascii=False)
        return Answer(text=text, usage=Usage(), latency_s=time.perf_counter() - started,
                      model=self.model, attempts=1)

    def cost_usd(self, usage: Usage) -> float | None:
        return None


def rules_version(vocabulary: Vocabulary) -> str:
    """Hash of this module's source and the vocabulary file: editing either re-extracts."""
    return rules_version_of(vocabulary.sha256)


def rules_version_of(vocabulary_sha256: str) -> str:
    """The same hash from the vocabulary file's sha256 alone (no vocabulary parsed)."""
    digest = hashlib.sha256()
    digest.update(Path(__file__).read_bytes())
    digest.update(b"\0")
    digest.update(vocabulary_sha256.encode())
    return digest.hexdigest()


def split_sentences(text: str) -> list[str]:
    """Report text -> sentences, with list numbering ("2. Mild cardiomegaly.") removed."""
    sentences = []
    for piece in _SENTENCE_END.split(text):
        piece = _LIST_NUMBER.sub("", piece.strip())
        if re.search(r"[A-Za-z]", piece):
            sentences.append(piece)
    return sentences


@dataclass
class _Item:
    """A matched phrase (or a plain word) in a sentence, with every role it can play."""

    start: int
    end: int
    roles: dict[str, list[str]] = field(default_factory=dict)

    def has(self, role: str) -> bool:
        return role in self.roles


@dataclass
class _Mention:
    index: int  # item index in the sentence
    category: str
    normal_state: bool = False  # "heart size is normal": a negated mention


class RuleExtractor:
    def __init__(self, vocabulary: Vocabulary) -> None:
        self.vocabulary = vocabulary
        self.phrases: dict[tuple[str, ...], dict[str, list[str]]] = {}
        self._index_vocabulary(vocabulary)
        self.longest_from: dict[str, int] = {}  # first word -> longest phrase it starts
        for phrase in self.phrases:
            self.longest_from[phrase[0]] = max(len(phrase), self.longest_from.get(phrase[0], 0))

    def extract(self, text: str) -> list[RuleFinding]:
        findings: list[RuleFinding] = []
        for sentence in split_sentences(text or ""):
            findings.extend(self.extract_sentence(sentence))
        return findings

    def extract_sentence(self, sentence: str) -> list[RuleFinding]:
        items = _mark_masked_hedges(self._match(_tokens(sentence)))
        whole_sentence_uncertain = any(it.has("unc_after") and it.roles.get("token") == ["?"]
                                       for it in items)
        mentions = self._mentions(items)
        alternatives = _alternatives(items, mentions)
        # "No A, B or large C": in a list closed by "or" a severity word is not a new finding
        or_list = any(it.roles["token"][0] in ("or", "nor") for it in items)
        findings = []
        for mention in mentions:
            negated = mention.normal_state or self._negated(items, mention.index, or_list)
            severity, location = self._modifiers(items, mention.index)
            uncertain = not negated and (whole_sentence_uncertain
                                         or mention.index in alternatives
                                         or severity == "borderline"
                                         or self._uncertain(items, mention.index, or_list))
            findings.append(RuleFinding(
                severity=NEGATED_SEVERITY if negated else severity,
                location=location,
                category=_qualified(items, mention),
                uncertain=uncertain,
                sentence=sentence,
            ))
        return findings

    # --- phrase index ---------------------------------------------------------------

    def _index_vocabulary(self, vocab: Vocabulary) -> None:
        for phrase, canonical in vocab.categories.items():
            own_severity = _leading_severity(phrase, vocab)
            for form in [phrase, *plural_forms(phrase)]:
                self._add(form, "category", canonical)
                if own_severity:  # "patchy opacity": the phrase carries its own extent
                    self._add(form, "own_severity", own_severity)
        for phrase, canonical in vocab.severities.items():
            if canonical != NEGATED_SEVERITY:  # negation comes from triggers, not from words
                self._add(phrase, "severity", canonical)
        for phrase, canonical in vocab.locations.items():
            self._add(phrase, "location", canonical)
        for category, states in vocab.states.items():
            for phrase in states.subjects:
                self._add(phrase, "subject", category)
            for phrase in states.abnormal:
                self._add(phrase, "abnormal", category)
            for phrase in states.normal:
                self._add(phrase, "normal", category)
        for role, phrases in (("neg_before", NEGATION_BEFORE), ("neg_after", NEGATION_AFTER),
                              ("unc_before", UNCERTAIN_BEFORE), ("unc_after", UNCERTAIN_AFTER),
                              ("unc_clause", UNCERTAIN_CLAUSE),
                              ("pseudo", PSEUDO_TRIGGERS), ("terminator", SCOPE_TERMINATORS),
                              ("verb", VERBS), ("break", MODIFIER_BREAKS)):
            for phrase in phrases:
                self._add(phrase, role, phrase)
        for phrase in vocab.masked_phrases:
            self.phrases[tuple(_tokens(phrase))] = {"mask": [phrase]}

    def _add(self, phrase: str, role: str, value: str) -> None:
        key = tuple(_tokens(phrase)) if phrase not in ("?", ",", "/") else (phrase,)
        values = self.phrases.setdefault(key, {}).setdefault(role, []) if key else None
        if values is not None and value not in values:
            values.append(value)

    def _match(self, tokens: list[str]) -> list[_Item]:
        """Greedy longest match left to right; unmatched tokens become plain words."""
        items: list[_Item] = []
        i = 0
        while i < len(tokens):
            for length in range(min(self.longest_from.get(tokens[i], 0), len(tokens) - i), 0, -1):
                roles = self.phrases.get(tuple(tokens[i:i + length]))
                if roles is not None:
                    items.append(_Item(i, i + length, {**roles, "token": [tokens[i]]}))
                    i += length
                    break
            else:
                items.append(_Item(i, i + 1, {"token": [tokens[i]]}))
                i += 1
        return items

    # --- mentions -------------------------------------------------------------------

    def _mentions(self, items: list[_Item]) -> list[_Mention]:
        mentions = [_Mention(k, cat) for k, it in enumerate(items) for cat in it.roles.get("category", [])]
        for k, item in enumerate(items):
            for category in item.roles.get("subject", []):
                state = self._state_of(items, k, category)
                if state is not None:
                    index, normal = state
                    mentions.append(_Mention(index, category, normal_state=normal))
        mentions.sort(key=lambda m: m.index)
        return mentions

    def _state_of(self, items: list[_Item], subject: int, category: str) -> tuple[int, bool] | None:
        """The nearest abnormal/normal word for a subject ("heart ... mildly enlarged")."""
        for k in range(subject + 1, min(len(items), subject + 1 + STATE_WINDOW_AFTER)):
            if category in items[k].roles.get("abnormal", []):
                return k, False
            if category in items[k].roles.get("normal", []):
                return k, True
            if _ends_clause(items[k]) or items[k].has("category"):
                break
        for k in range(subject - 1, max(-1, subject - 1 - STATE_WINDOW_BEFORE), -1):
            if category in items[k].roles.get("abnormal", []):
                return k, False
            if category in items[k].roles.get("normal", []):
                return k, True
            if _ends_clause(items[k]):
                break
        return None

    # --- negation and uncertainty scope ----------------------------------------------

    def _negated(self, items: list[_Item], index: int, or_list: bool) -> bool:
        return (self._trigger_before(items, index, "neg_before", or_list)
                or self._trigger_after(items, index, "neg_after"))

    def _uncertain(self, items: list[_Item], index: int, or_list: bool) -> bool:
        return (self._trigger_before(items, index, "unc_before", or_list)
                or self._trigger_after(items, index, "unc_after")
                or _clause_hedged(items, index))

    def _trigger_before(self, items: list[_Item], index: int, role: str, or_list: bool) -> bool:
        passed_affirmation = False  # a new affirmed finding since the last comma
        for k in range(index - 1, -1, -1):
            item = items[k]
            if item.has(role):
                return True
            if item.has("pseudo") or item.has("terminator") or item.has("verb"):
                return False
            if item.roles.get("token") == [","]:
                if passed_affirmation:
                    return False
                continue
            if not or_list and (item.has("location") or any(
                    s not in NON_AFFIRMING_SEVERITIES for s in item.roles.get("severity", []))):
                passed_affirmation = True
        return False

    def _trigger_after(self, items: list[_Item], index: int, role: str) -> bool:
        for k in range(index + 1, min(len(items), index + 1 + POST_TRIGGER_WINDOW)):
            item = items[k]
            if item.has(role):
                return True
            if item.has("pseudo") or item.has("terminator") or item.roles.get("token") == [","]:
                return False
            if item.has("neg_before") or item.has("unc_before"):
                return False  # the next trigger starts its own scope
            if item.has("category") and items[k - 1].roles["token"][0] not in LIST_WORDS:
                return False  # "opacity representing atelectasis versus scar": not the opacity
        return False

    # --- modifiers ------------------------------------------------------------------

    def _modifiers(self, items: list[_Item], index: int) -> tuple[str, str]:
        before = []
        for k in range(index - 1, -1, -1):
            if _breaks_modifiers(items[k]) or items[k].has("verb"):
                break
            before.insert(0, items[k])
        after = []
        for k in range(index + 1, min(len(items), index + 1 + POST_MODIFIER_WINDOW)):
            if _breaks_modifiers(items[k]) or items[k].has("neg_before") or items[k].has("unc_before"):
                break
            after.append(items[k])
        own = items[index]
        severity = (_first(before, "severity") or _first([own], "own_severity")
                    or _first([own], "severity") or _first(after, "severity") or NOT_STATED)
        location = (_combined_location([v for it in before for v in it.roles.get("location", [])])
                    or _combined_location([v for it in after for v in it.roles.get("location", [])])
                    or NOT_STATED)
        return severity, location


def _leading_severity(phrase: str, vocab: Vocabulary) -> str | None:
    """The severity a category phrase starts with ("patchy opacity" -> patchy), if any."""
    words = phrase.split()
    for length in range(len(words) - 1, 0, -1):
        severity = vocab.severities.get(" ".join(words[:length]))
        if severity and severity != NEGATED_SEVERITY:
            return severity
    return None


def _qualified(items: list[_Item], mention: _Mention) -> str:
    for k in range(mention.index - 1, -1, -1):
        item = items[k]
        if item.has("category"):
            return QUALIFIED_CATEGORIES.get((item.roles["token"][0], mention.category), mention.category)
        if _breaks_modifiers(item) or item.has("verb"):
            break
    return mention.category


def _mark_masked_hedges(items: list[_Item]) -> list[_Item]:
    """XXXX right after a comma or a finding hides the word that links it to the next one
    ("opacity, XXXX atelectasis", "opacities XXXX due to atelectasis"), most often a hedge
    (likely, possibly, representing): the guideline labels such mentions uncertain. Followed
    by a list word ("emphysema, XXXX and irregular markings") it hides a finding instead."""
    for k in range(1, len(items) - 1):
        before, after = items[k - 1], items[k + 1]
        if (items[k].roles["token"] == ["xxxx"] and not after.has("break")
                and after.roles["token"] not in (["xxxx"], [","])
                and (before.roles["token"] == [","] or before.has("category"))):
            items[k].roles.setdefault("unc_before", []).append("xxxx")
    return items


def _clause_hedged(items: list[_Item], index: int) -> bool:
    for k in range(index - 1, -1, -1):
        if items[k].has("unc_clause"):
            return True
        if items[k].has("terminator"):
            return False
    return False


def _alternatives(items: list[_Item], mentions: list[_Mention]) -> set[int]:
    """Item indexes of mentions offered as alternatives: "atelectasis or scarring",
    "atelectasis and/or airspace disease", "infiltrate/atelectasis". Only modifiers, list
    commas and the joining words may stand between them; a negation keeps precedence."""
    found: set[int] = set()
    for first, second in zip(mentions, mentions[1:]):
        between = items[first.index + 1:second.index]
        if len(between) > ALTERNATIVE_GAP or not any(
                it.roles.get("token", [""])[0] in ALTERNATIVE_WORDS for it in between):
            continue
        # "consolidation with mild residual or recurrent pneumonia": the "or" joins two words
        # of the second finding, "with" adds it to the first
        if any(it.has("terminator") or it.has("verb") or it.has("neg_before") or it.has("pseudo")
               or it.roles["token"] == ["with"] for it in between):
            continue
        found.update((first.index, second.index))
    return found


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(normalize_phrase_keep_punctuation(text))


def normalize_phrase_keep_punctuation(text: str) -> str:
    return text.lower().replace("-", " ").replace("_", " ")


def _ends_clause(item: _Item) -> bool:
    return item.has("terminator") or item.roles.get("token") == [","] or item.has("pseudo")


def _breaks_modifiers(item: _Item) -> bool:
    return (item.has("category") or item.has("subject") or item.has("terminator")
            or item.has("break") or item.has("pseudo") or item.has("mask"))


def _first(items: list[_Item], role: str) -> str | None:
    for item in items:
        if role in item.roles:
            return item.roles[role][0]
    return None


def _combined_location(locations: list[str]) -> str | None:
    """One location; left + right findings in one phrase become bilateral / bibasilar."""
    distinct = list(dict.fromkeys(locations))
    if not distinct:
        return None
    if len(distinct) > 1:
        sides = {loc.split()[0] for loc in distinct}
        if {"left", "right"} <= sides:
            return "bibasilar" if all(loc.endswith("base") for loc in distinct) else "bilateral"
    return distinct[0]


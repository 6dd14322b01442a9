"""MIMIC-CXR-style free-text reports that say exactly what was drawn.

Every drawn finding is named with its severity and location words; some absent findings are
explicitly negated; mild findings flagged `uncertain` are hedged. Severity words are the
canonical ones except the documented synonyms in SEVERITY_SYNONYMS.
"""
from __future__ import annotations

import numpy as np

from corpus.findings import Finding

# Words a report may use in place of a canonical severity (extraction must fold them back).
SEVERITY_SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "consolidation": {"mild": ("mild", "patchy"), "severe": ("severe", "extensive")},
}
_ADVERB = {"mild": "mildly", "moderate": "moderately", "severe": "severely"}
_UNUSABLE = ("", "___", " ___ ")


def write_report(findings: list[Finding], rng: np.random.Generator, frontal_view: str, lateral: bool) -> str:
    """The report text for a study; `frontal_view` is 'PA' or 'AP'."""
    if not findings and rng.random() < 0.02:
        return str(rng.choice(_UNUSABLE))  # real archives hold a few empty reports
    positives = _positive_sentences(findings, rng)
    negatives = _negative_sentences(findings, rng)
    impression = _impression(findings, rng)
    layout = rng.random()
    style = rng.choice(["upper", "upper", "upper", "upper", "title", "lower"])
    lines = ["                                 FINAL REPORT", _examination(frontal_view, lateral, rng),
             "", _indication(rng), "", _header("COMPARISON", style) + "  " + str(rng.choice(["___.", "None.", "___"])), ""]
    if layout < 0.15:  # impression-only reports put everything under IMPRESSION
        body = positives + negatives if findings else impression
        lines += [_header("IMPRESSION", style), "", _wrap(" ".join(body))]
    else:
        extra = [str(rng.choice(_OTHER_NORMALS))] if rng.random() < 0.6 else []
        lines += [_header("FINDINGS", style), "", _wrap(" ".join(positives + negatives + extra)), "",
                  _header("IMPRESSION", style), "", _wrap(" ".join(impression))]
    return "\n".join(lines) + "\n"


# --- positives ----------------------------------------------------------------------------


def _positive_sentences(findings: list[Finding], rng: np.random.Generator) -> list[str]:
    """One sentence per finding; sometimes two certain findings share one sentence."""
    sentences: list[str] = []
    pending = list(findings)
    rng.shuffle(pending)
    while pending:
        first = pending.pop(0)
        if pending and not first.uncertain and not pending[0].uncertain and rng.random() < 0.3:
            second = pending.pop(0)
            lead = "There is " if rng.random() < 0.4 else ""
            text = f"{lead}{_noun_phrase(first, rng)} and {_noun_phrase(second, rng)}."
            sentences.append(_capitalise(text))
        else:
            sentences.append(_sentence(first, rng))
    return sentences


def _severity_word(finding: Finding, rng: np.random.Generator) -> str:
    choices = SEVERITY_SYNONYMS.get(finding.category, {}).get(finding.severity)
    word = str(rng.choice(choices)) if choices else finding.severity
    return "" if word == "na" else word


def _noun_phrase(f: Finding, rng: np.random.Generator) -> str:
    """A short noun phrase naming category, severity and location."""
    sev = _severity_word(f, rng)
    loc = f.location
    options = {
        "effusion": [f"{sev} {loc} pleural effusion" + ("s" if loc == "bilateral" else ""),
                     f"{sev} {loc} effusion" + ("s" if loc == "bilateral" else "")],
        "cardiomegaly": [f"{sev} cardiomegaly", f"{sev} enlargement of the cardiac silhouette"],
        "pneumothorax": [f"{sev} {loc} pneumothorax", f"{sev} {loc} apical pneumothorax"],
        # the phrases name the drawn category itself: "nodular opacity" and "airspace opacity"
        # are categories of their own in knowledge/vocabulary.yaml
        "nodule": [f"{sev} nodule in the {loc}", f"{sev} pulmonary nodule in the {loc}"],
        "consolidation": [f"{sev} consolidation in the {loc}", f"{sev} airspace consolidation in the {loc}"],
        "atelectasis": [f"{sev} atelectasis at the {loc}" if loc != "bibasilar" else f"{sev} bibasilar atelectasis",
                        f"{sev} plate-like atelectasis at the {loc}" if loc != "bibasilar"
                        else f"{sev} bibasilar plate-like atelectasis"],
        "edema": [f"{sev} pulmonary edema" if loc == "na" else f"{sev} {loc} pulmonary edema",
                  f"{sev} interstitial edema"],
        "pacemaker": [f"{loc} pacemaker", f"pacer in the {loc}"],
        "endotracheal tube": ["endotracheal tube in standard position", "ET tube in appropriate position"],
    }[f.category]
    phrase = " ".join(str(rng.choice(options)).split())
    if f.pneumonia:
        phrase += ", concerning for pneumonia"
    return phrase


def _sentence(f: Finding, rng: np.random.Generator) -> str:
    if f.uncertain:
        return _hedged(f, rng)
    sev, loc = _severity_word(f, rng), f.location
    templates = {
        "effusion": ["{np}.", "There is a {np}.", "{np} is present."] if loc != "bilateral"
        else ["{np}.", "There are {np}.", "{sev} amount of layering fluid in both pleural spaces, compatible with bilateral pleural effusions."],
        "cardiomegaly": ["{np}.", "The heart is {adv} enlarged.", "The cardiac silhouette is {adv} enlarged."],
        "pneumothorax": ["{np}.", "There is a {np}.", "A {sev} {loc}-sided pneumothorax is seen."],
        "nodule": ["{np}.", "There is a {np}."],
        "consolidation": ["{np}.", "There is {np}."],
        "atelectasis": ["{np}.", "There is {np}."],
        "edema": ["{np}.", "There is {np}."],
        "pacemaker": ["{Loc} chest wall pacemaker with lead terminating in the right ventricle.",
                      "A {loc} pacer is in place with lead in the right ventricle.", "{np}."],
        "endotracheal tube": ["Endotracheal tube terminates {cm} cm above the carina.",
                              "ET tube tip is {cm} cm above the carina.", "{np}."],
    }[f.category]
    template = str(rng.choice(templates))
    side_word = loc.replace(" chest", "-sided")
    text = template.format(np=_noun_phrase(f, rng), sev=sev, adv=_ADVERB.get(f.severity, ""), loc=side_word if f.category == "pacemaker" else loc,
                           Loc=loc.split()[0].capitalize(), cm=int(rng.integers(3, 7)))
    if f.category != "pacemaker" and "pneumonia" not in text and f.pneumonia:
        text = text.rstrip(".") + ", concerning for pneumonia."
    return _capitalise(" ".join(text.split()))


def _hedged(f: Finding, rng: np.random.Generator) -> str:
    """Mild findings stated with uncertainty; they ARE drawn."""
    np_ = _noun_phrase(f, rng)
    templates = [f"possible {np_}.", f"{np_} cannot be excluded.", f"there may be {_article(np_)} {np_}."]
    if f.category == "atelectasis":
        where = "at the " + f.location if f.location != "bibasilar" else "at both bases"
        templates.append(f"{f.severity} linear opacity {where} may represent atelectasis.")
    if f.category == "consolidation" and not f.pneumonia:
        templates.append(f"{_severity_word(f, rng)} opacity in the {f.location} may represent consolidation.")
    return _capitalise(" ".join(str(rng.choice(templates)).split()))


def _impression(findings: list[Finding], rng: np.random.Generator) -> list[str]:
    if not findings:
        return [str(rng.choice(["No acute cardiopulmonary process.", "No acute intrathoracic abnormality.",
                                "No acute cardiopulmonary abnormality.", "Normal chest radiograph."]))]
    out = []
    for f in findings:
        if f.uncertain:
            out.append(_hedged(f, rng))
        else:
            out.append(_capitalise(_noun_phrase(f, rng) + "."))
        if f.pneumonia and rng.random() < 0.5:
            out.append("Cannot exclude early pneumonia.")
    return out


# --- negatives ----------------------------------------------------------------------------

_NEGATIONS: dict[str, tuple[str, ...]] = {
    "effusion": ("No pleural effusion.", "There is no pleural effusion.", "No effusions."),
    "pneumothorax": ("No pneumothorax.", "There is no pneumothorax.", "No pneumothorax is seen."),
    "cardiomegaly": ("Heart size is normal.", "The cardiac silhouette is within normal limits.",
                     "Cardiomediastinal silhouette is normal in size."),
    "consolidation": ("There is no focal consolidation.", "No focal airspace consolidation.",
                      "Lungs are clear without focal consolidation."),
    "edema": ("No evidence of pulmonary edema.", "No pulmonary edema.", "There is no pulmonary vascular congestion or edema."),
    "nodule": ("No suspicious pulmonary nodules.", "No focal nodules are seen."),
    "atelectasis": ("No atelectasis.",),
}
_NEGATION_RATE = {"nodule": 0.25, "atelectasis": 0.1}
_OTHER_NORMALS = (
    "Osseous structures are unremarkable.",
    "Mediastinal and hilar contours are normal.",
    "The visualized upper abdomen is unremarkable.",
    "No acute osseous abnormality.",
)


def _negative_sentences(findings: list[Finding], rng: np.random.Generator) -> list[str]:
    present = {f.category for f in findings}
    absent = [c for c in _NEGATIONS if c not in present and rng.random() < _NEGATION_RATE.get(c, 0.75)]
    out = []
    if "effusion" in absent and "pneumothorax" in absent and rng.random() < 0.6:
        out.append("No pleural effusion or pneumothorax.")
        absent = [c for c in absent if c not in ("effusion", "pneumothorax")]
    out += [str(rng.choice(_NEGATIONS[c])) for c in absent]
    return out


# --- layout -------------------------------------------------------------------------------


def _examination(frontal_view: str, lateral: bool, rng: np.random.Generator) -> str:
    if lateral:
        exam = str(rng.choice(["CHEST (PA AND LAT)", "CHEST (PA AND LATERAL)"])) if frontal_view == "PA" else "CHEST (AP AND LAT)"
    else:
        exam = "CHEST (PORTABLE AP)" if frontal_view == "AP" else "CHEST (PA)"
    return f" EXAMINATION:  {exam}"


def _indication(rng: np.random.Generator) -> str:
    reason = str(rng.choice(["eval for pneumonia", "shortness of breath", "cough and fever", "chest pain",
                             "evaluate for interval change", "line placement", "hypoxia"]))
    return f" INDICATION:  ___-year-old {rng.choice(['man', 'woman'])} with ___ // {reason}"


def _header(name: str, style: str) -> str:
    text = {"upper": name, "title": name.title(), "lower": name.lower()}[style]
    return f" {text}:"


def _wrap(text: str, width: int = 78) -> str:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(" " + line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(" " + line)
    return "\n".join(lines)


def _capitalise(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:]


def _article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"

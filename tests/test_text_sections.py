"""FINDINGS / IMPRESSION extraction (ecamp.text.sections)."""

from __future__ import annotations

from ecamp.text.sections import findings_impression, parse_sections, report_text

MIMIC_STYLE = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows.

 IMPRESSION:

 No acute cardiopulmonary process.
"""


def test_findings_and_impression_with_wrapped_lines() -> None:
    findings, impression = findings_impression(MIMIC_STYLE)
    assert findings == (
        "There is no focal consolidation, pleural effusion or pneumothorax. "
        "Bilateral nodular opacities that most likely represent nipple shadows."
    )
    assert impression == "No acute cardiopulmonary process."
    assert report_text(MIMIC_STYLE) == f"{findings} {impression}"
    headings = [h for h, _ in parse_sections(MIMIC_STYLE)]
    assert headings == ["", "EXAMINATION", "INDICATION", "COMPARISON", "FINDINGS", "IMPRESSION"]


def test_only_one_section_present() -> None:
    assert report_text("FINDINGS: Small left effusion.") == "Small left effusion."
    assert report_text("INDICATION: cough\nIMPRESSION: Mild edema.") == "Mild edema."
    assert report_text("CONCLUSION: Mild edema.") == "Mild edema."


def test_fallbacks() -> None:
    # no findings / impression: last reading section, skipping clinical context
    assert report_text("WET READ: small effusion.\nCOMPARISON: none.") == "small effusion."
    # no headings at all: the whole text without the FINAL REPORT banner
    assert report_text("  FINAL REPORT\n Lungs are clear.\n") == "Lungs are clear."
    # empty FINDINGS section falls through to the other
    assert report_text("FINDINGS:\n\nIMPRESSION: No change.") == "No change."
    assert report_text("") == "" and report_text("INDICATION: cough") == ""


def test_lower_case_colon_phrases_are_not_headings() -> None:
    text = "FINDINGS: Heart size: normal. Lungs: clear."
    assert report_text(text) == "Heart size: normal. Lungs: clear."

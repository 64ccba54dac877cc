"""The rules distiller's lexicon comes from the bundled YAML file, whole and as the rules use it."""

from __future__ import annotations

import pandas as pd
import pytest

from ecamp.distill.lexicon import Lexicon, lexicon
from ecamp.distill.rules import distilled_text


def test_the_lexicon_is_read_once_and_frozen():
    assert lexicon() is lexicon()
    lex = lexicon()
    assert isinstance(lex, Lexicon)
    with pytest.raises(TypeError):
        lex.noun_forms["aerate"] = "x"  # type: ignore[index]


def test_the_lexicon_holds_every_word_list_the_rules_had():
    lex = lexicon()
    sizes = {
        "modifiers": len(lex.modifiers),
        "function_words": len(lex.function_words),
        "weak_uncertainty": len(lex.weak_uncertainty),
        "always_location": len(lex.always_location),
        "adjective_endings": len(lex.adjective_endings),
        "adjectival_surfaces": len(lex.adjectival_surfaces),
        "adjectival_entities": len(lex.adjectival_entities),
        "noun_forms": len(lex.noun_forms),
    }
    # the counts of the Python literals the file replaced ("without" was listed twice)
    assert sizes == {
        "modifiers": 117,
        "function_words": 72,
        "weak_uncertainty": 9,
        "always_location": 6,
        "adjective_endings": 5,
        "adjectival_surfaces": 5,
        "adjectival_entities": 2,
        "noun_forms": 4,
    }
    # words YAML would read as booleans unless quoted
    assert {"no", "on"} <= lex.function_words
    assert lex.adjective_endings == ("ed", "ic", "ous", "ive", "ar")
    assert dict(lex.noun_forms) == {
        "aerate": "aeration",
        "hyperinflate": "hyperinflation",
        "obscure": "obscuration",
        "hilar": "hila",
    }
    assert {"mild", "bibasilar", "plate-like", "cm"} <= lex.modifiers
    assert "aortic" in lex.adjectival_surfaces
    assert lex.adjectival_entities == {"cardiomediastinal", "perihilar"}


# distilled text of real reports, as before the lexicon moved out of rules.py: noun forms,
# head nouns of adjectival mentions, kept modifiers, bare locations, weak uncertainty
KNOWN = {
    "CXR115": "There is hyperinflation. There is no pleural effusion. There is no pneumothorax. "
    "There is copd.",
    "CXR453": "There is fibrosis in the bases. There is no confluent lobar pneumonia. "
    "There is no pleural effusion.",
    "CXR51": "There is normal cardiomediastinal silhouette. There are scattered calcified "
    "granulomas in both lung. There are no abnormalities. There is no abnormality.",
    "CXR209": "There is slightly tortuous calcified aorta. There is no pneumothorax. "
    "There is no effusion. There is no aortic transection.",
    "CXR106": "There is normal mediastinal contour. There are no pleural effusions. "
    "There are no pneumothoraces. There may be abnormality.",
    "CXR143": "There is no pleural effusion. There is calcified right hilar. "
    "There is old granulomatous disease.",
}


def test_real_reports_distil_as_before(test_data):
    df = pd.read_csv(test_data("iu_xray/iu_xray_reports_dev.csv")).set_index("uid")
    for uid, expected in KNOWN.items():
        row = df.loc[uid]
        text = " ".join(str(x) for x in (row["findings"], row["impression"]) if pd.notna(x))
        assert distilled_text(text) == expected, uid

"""The ShareGPT "no code / no math" filter: the content classifier against the keyword rule.

Every fixture here is written for this file (no ShareGPT text): the cases the
keyword rule gets wrong (issue 17 item 7), in both directions, plus variants
in the shapes ShareGPT really has (unfenced pasted code, markdown-escaped
operators, a request with a one-line answer, stray fences around prose).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from harness.core.errors import UsageError
from harness.core.records import Message
from harness.train.classify import classify, filter_conversations
from harness.train.data import Conversation, SourceSpec, load_source
from harness.train.study import parse_study

EXAMPLES = Path(__file__).parent.parent / "train" / "examples"


def conv(user: str, assistant: str = "Sure.", cid: str = "t") -> Conversation:
    return Conversation(id=cid, source="general", messages=(Message("user", user), Message("assistant", assistant)))


CODE = {
    "python-script": ("Write a Python script that renames every .txt file in a folder to .md.",
                      "Here you go:\n```python\nimport os\n\nfor name in os.listdir('.'):\n"
                      "    if name.endswith('.txt'):\n        os.rename(name, name[:-4] + '.md')\n```"),
    "python-request-only": ("Write a Python script that prints the first ten prime numbers.",
                            "Sure! Let me know which Python version you use."),
    "js-fix": ("Fix this JavaScript function, it returns the wrong total:\n\nfunction add(a, b) {\n"
               "  return a - b;\n}", "The function subtracts instead of adding: use `a + b`."),
    "js-fix-short": ("Fix this JavaScript function for me", "Please paste it and I will have a look."),
    "sql-answer": ("How do I get the five customers who spent the most?",
                   "Group the orders by customer:\n\nSELECT customer_id, SUM(amount) AS total FROM orders "
                   "GROUP BY customer_id ORDER BY total DESC LIMIT 5;"),
    "sql-request": ("Write an SQL query that lists employees hired after 2020.", "Of course."),
    "python-traceback": ("Why do I get this?\nTraceback (most recent call last):\n  File \"app.py\", line 3, "
                         "in <module>\n    main()\nKeyError: 'user'", "The dictionary has no 'user' key."),
    "java-stack-trace": ("My app crashes: Exception in thread \"main\" java.lang.NullPointerException\n"
                         "\tat com.example.App.main(App.java:14)", "Something on line 14 is null."),
    "unfenced-paste": ("what does this do\n\ndef solve(a, d):\n    l, r = 0, len(a)\n    while l < r:\n"
                       "        m = (l + r) // 2\n    return l + d", "It is a binary search."),
    "shell-commands": ("How do I see when my SSL certificate expires on Linux?",
                       "Run:\n```\nopenssl s_client -connect example.com:443 | openssl x509 -noout -dates\n```"),
    "html-css": ("Make me a centered login box",
                 "```html\n<div class=\"login\">\n  <input type=\"text\" id=\"user\">\n</div>\n```\n"
                 "```css\n.login { margin: 0 auto; width: 300px; }\n```"),
    "write-code": ("Write code that prints hello.", "print('hello')"),
    "in-a-language": ("Write an HTTP server in Rust", "Sure, with tokio."),
    "react-component": ("Create a React component that shows a counter", "Here is one using useState."),
    "yaml-config": ("My deployment does not start", "Set the image and the port:\n```\nspec:\n  containers:\n"
                    "    - name: \"web\"\n      image: \"nginx:1.25\"\n      ports: [80]\n```"),
    "sheet-formula": ("Which formula counts the GrubHub rows for each restaurant?",
                      "Use:\n```\n=COUNTIFS(A:A,A2,B:B,\"GrubHub\")\n```"),
}

MATH = {
    "arithmetic": ("What is 17 * 23 + 4?", "17 * 23 = 391, and 391 + 4 = 395."),
    "arithmetic-request-only": ("What is 17 * 23 + 4?", "395."),
    "arithmetic-escaped": ("Quick check: 12 \\* 12 = ?", "144."),
    "solve-for-x": ("Solve for x: 3x + 5 = 20", "Subtract 5 from both sides: 3x = 15, so x = 5."),
    "solve-request-only": ("Solve for x: 3x + 5 = 20", "x is 5."),
    "latex": ("Prove that $\\sum_{i=1}^{n} i = \\frac{n(n+1)}{2}$.", "By induction on n."),
    "word-problem": ("A train travels at 60 miles per hour for 2.5 hours and then at 40 miles per hour for "
                     "1 hour. How far does it travel in total?", "60 × 2.5 = 150 and 40 × 1 = 40: 190 miles."),
    "discount": ("A book costs $20 and is 25% off. How much do I pay?", "$20 × 0.75 = $15."),
    "derivative": ("What is the derivative of x^2 + 3x?", "It is 2x + 3."),
    "integral-symbol": ("Evaluate ∫ x dx from 0 to 2", "It is 2."),
    "parenthesised": ("What is the error of my measurement?",
                      "Error = ((|3.209 - 2.978|) / 3.209) x 100% = 7.2%"),
    "square-root": ("Combine the two standard deviations", "sqrt((1.5)^2 + (1.12)^2) = 1.87 grams"),
    "times-in-words": ("What is 12 times 7?", "84."),
    "probability": ("I roll two dice. What is the probability that the sum is 7?",
                    "There are 6 favourable outcomes out of 36, so 6/36 = 1/6."),
}

KEEP = {
    "dress-code": ("What is the dress code for a black-tie wedding?", "A tuxedo and a floor-length gown."),
    "zip-code": ("Why does my zip code not match my city name?", "Postal areas do not follow city limits."),
    "da-vinci-code": ("Summarize The Da Vinci Code in three sentences.", "A symbologist follows clues..."),
    "math-anxiety": ("How can teachers help students with math anxiety?", "Praise effort and lower the stakes."),
    "code-of-conduct": ("Draft a code of conduct for our volunteers.", "1. Treat everyone with respect."),
    "write-a-code-of-conduct": ("Write a code of conduct for the chess club.", "Be kind; no phones."),
    "in-excel": ("How do I convert the leads in Excel into a mailing list?", "Export the sheet as CSV."),
    "song-in-c-major": ("Write a short melody in C major for a lullaby", "C E G E, C E G E, F A C A."),
    "promo-code": ("My promo code does not work at checkout, what should I write to support?",
                   "Tell them the code and the order number."),
    "morse-code": ("How was Morse code invented?", "Samuel Morse and Alfred Vail designed it in the 1830s."),
    "dates-and-ranges": ("Plan my week: the fair runs 2023-03-14 to 2023-03-18, 9-5, open 24/7 online.",
                         "Monday: arrive at 9. Budget 10 - 20 dollars a day."),
    "recipe": ("Give me a cookie recipe", "Mix 1/2 cup sugar with 2 eggs and bake 20-25 minutes at 180 C."),
    "history-years": ("When was the First World War?", "It lasted from 1914 - 1918 and cost 20 million lives."),
    "video-script": ("Write a YouTube script about the history of coffee.", "[Intro music] Coffee began..."),
    "liver-function": ("Explain the function of the liver.", "The liver filters blood and makes bile."),
    "python-snake": ("How long do ball pythons live?", "20 to 30 years in captivity."),
    "stray-fence": ("List the upkeep tasks.", "Here:\n```vbnet\nInspect the roof and gutters every spring.\n"
                    "Service the heating before winter.\n```"),
    "statistics-fact": ("What share of China's population is over 65?", "About 13.5% in 2020, up from 7.9%."),
    "greek-pi": ("Translate: Το γράμμα π είναι ελληνικό.", "The letter pi is Greek."),
    "citations": ("Summarise the search results", "Prices rose [1] + [2] + [3] in 2022."),
    "prices": ("Is the $20 plan worth it over the $10 plan?", "It adds cloud storage and two more users."),
    # a real ShareGPT shape: before the atomic groups in the arithmetic rule this list took minutes
    # (exponential backtracking) and then read as a product of numbers
    "status-code-list": ("List every HTTP status code.", "Here is the list:\n\n"
                         + "".join(f"* {n}\n" for n in range(100, 160))),
}


@pytest.mark.parametrize("name", CODE)
def test_code_conversations_are_labelled_code(name):
    verdict = classify(conv(*CODE[name]))
    assert verdict.code, verdict.explain()


@pytest.mark.parametrize("name", MATH)
def test_math_conversations_are_labelled_math(name):
    verdict = classify(conv(*MATH[name]))
    assert verdict.math, verdict.explain()


@pytest.mark.parametrize("name", KEEP)
def test_conversations_that_merely_say_code_or_math_are_kept(name):
    verdict = classify(conv(*KEEP[name]))
    assert not (verdict.code or verdict.math), verdict.explain()


def test_the_keyword_rule_gets_every_example_wrong_and_the_classifier_right():
    """The issue's examples: the keyword rule keeps the first group and removes the second."""
    wrong_keep = [CODE["python-script"], CODE["js-fix-short"], CODE["sql-answer"], CODE["python-traceback"],
                  MATH["arithmetic"], MATH["solve-for-x"]]
    wrong_remove = [KEEP["dress-code"], KEEP["zip-code"], KEEP["da-vinci-code"], KEEP["math-anxiety"]]
    convs = [conv(*pair, cid=f"k{i}") for i, pair in enumerate(wrong_keep)]
    convs += [conv(*pair, cid=f"r{i}") for i, pair in enumerate(wrong_remove)]
    kept_kw, _ = filter_conversations(convs, "keywords", ("code", "math"))
    kept_cl, removed_cl = filter_conversations(convs, "classifier")
    assert {c.id for c in kept_kw} == {f"k{i}" for i in range(6)}
    assert {c.id for c in kept_cl} == {f"r{i}" for i in range(4)}
    assert {r.conv.id for r in removed_cl} == {f"k{i}" for i in range(6)}


def test_evidence_names_the_rule_the_turn_and_the_text():
    verdict = classify(conv(*CODE["sql-answer"]))
    sql = [e for e in verdict.evidence if e.rule == "sql"]
    assert sql and sql[0].label == "code" and sql[0].turn == 1 and "SELECT" in sql[0].excerpt
    assert classify(conv(*CODE["python-traceback"])).rules("code") >= {"traceback"}
    assert "solve-request" in classify(conv(*MATH["solve-for-x"])).rules("math")
    explained = classify(conv(*MATH["arithmetic"])).explain()
    assert explained.startswith("math:") and "arithmetic" in explained and "17 * 23" in explained
    assert classify(conv(*KEEP["dress-code"])).explain() == "neither code nor math"


def test_one_weak_hint_is_not_enough_but_two_are():
    assert not classify(conv("I am learning Python this summer.", "Have fun!")).code
    both = classify(conv("I am learning Python this summer, can you review my code?", "Paste it."))
    assert both.code and both.rules("code") >= {"language", "code-phrase"}


def test_math_rules_ignore_code_blocks():
    """`i + 1 = ...`-like lines inside a fenced program are code, not a maths exercise."""
    verdict = classify(conv("Write a loop in Python", "```python\nfor i in range(3):\n    total = i * 2 + 1\n```"))
    assert verdict.code and not verdict.math, verdict.explain()


def test_filter_rules_and_their_errors():
    convs = [conv(*CODE["python-script"], cid="a"), conv(*KEEP["zip-code"], cid="b")]
    assert filter_conversations(convs, "none") == (convs, [])
    kept, removed = filter_conversations(convs, "keywords", ("code",))
    assert [c.id for c in kept] == ["a"] and [r.reason for r in removed] == ["keyword 'code'"]
    assert [(r.conv.id, r.labels) for r in removed] == [("b", ("code",))]
    kept, removed = filter_conversations(convs, "classifier")
    assert [c.id for c in kept] == ["b"] and removed[0].labels == ("code",)
    assert removed[0].reason.startswith("code:")
    with pytest.raises(UsageError, match="filter_keywords"):
        filter_conversations(convs, "keywords", ())
    with pytest.raises(UsageError, match="choose from: classifier, keywords, none"):
        filter_conversations(convs, "tags")


def _sharegpt_file(tmp_path: Path) -> Path:
    pairs = [CODE["python-script"], MATH["solve-for-x"], KEEP["dress-code"], KEEP["recipe"]]
    rows = [{"id": f"c{i}", "conversations": [{"from": "human", "value": u}, {"from": "gpt", "value": a}]}
            for i, (u, a) in enumerate(pairs)]
    path = tmp_path / "s.json"
    path.write_text(json.dumps(rows))
    return path


def test_load_source_applies_the_chosen_rule_and_counts_why(tmp_path):
    path = str(_sharegpt_file(tmp_path))
    convs, stats = load_source(SourceSpec("general", path, "sharegpt", filter="classifier"))
    assert [c.id for c in convs] == ["general:c2", "general:c3"]
    assert (stats.filter, stats.filtered, stats.filter_labels) == ("classifier", 2, {"code": 1, "math": 1})
    convs, stats = load_source(SourceSpec("general", path, "sharegpt", filter="keywords",
                                          filter_keywords=("code", "math")))
    assert [c.id for c in convs] == ["general:c0", "general:c1", "general:c3"] and stats.filter == "keywords"
    _, stats = load_source(SourceSpec("general", path, "sharegpt", filter_keywords=("code",)))
    assert stats.filter == "keywords" and stats.filtered == 1  # filter_keywords alone: the keyword rule, as before
    _, stats = load_source(SourceSpec("general", path, "sharegpt"))
    assert (stats.filter, stats.filtered) == ("none", 0)


def _study(**general) -> dict:
    data = tomllib.loads((EXAMPLES / "tiny_cpu.toml").read_text())
    data["sources"]["general"] = {"path": "tiny_sharegpt.json", "format": "sharegpt", **general}
    return data


def test_study_accepts_the_filter_option(tmp_path):
    study = parse_study(_study(filter="classifier"), EXAMPLES, out=str(tmp_path / "s"))
    general = next(s for s in study.sources if s.name == "general")
    assert (general.filter, general.filter_keywords) == ("classifier", ())
    study = parse_study(_study(filter="keywords", filter_keywords=["code"]), EXAMPLES, out=str(tmp_path / "s"))
    assert next(s for s in study.sources if s.name == "general").filter == "keywords"


@pytest.mark.parametrize("general,message", [
    ({"filter": "tags"}, r"\[sources.general\] filter: unknown rule 'tags'; choose from: classifier, keywords, none"),
    ({"filter": "keywords"}, r"\[sources.general\] filter = \"keywords\" needs filter_keywords"),
    ({"filter": "classifier", "filter_keywords": ["code"]}, r"filter_keywords is only used with filter = \"keywords\""),
])
def test_study_refuses_a_bad_filter(tmp_path, general, message):
    with pytest.raises(UsageError, match=message):
        parse_study(_study(**general), EXAMPLES, out=str(tmp_path / "s"))

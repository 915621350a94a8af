"""HumanEval instruct-mode code extraction on real-looking chat replies (docs/fidelity.md).

Each reply answers HumanEval/2 (``truncate_number``). The table pins which
text is extracted, and every program built from it is run against the
problem's own tests, in process: the code here is ours, so no sandbox is
needed to check the extraction (the sandbox has its own tests).
"""

from __future__ import annotations

import pytest

from harness.tasks import humaneval as he

SOL = "def truncate_number(number: float) -> float:\n    return number % 1.0\n"
BODY = "    return number % 1.0\n"
WRONG = "def truncate_number(number: float) -> float:\n    return 0.0\n"

REPLIES = {
    "plain": (f"Here is the function:\n\n```python\n{SOL}```\n", SOL),
    "py3 tag": (f"```py3\n{SOL}```", SOL),
    "python3 tag": (f"Sure!\n```python3\n{SOL}```\nDone.", SOL),
    "capital tag": (f"```Python\n{SOL}```", SOL),
    "space before tag": (f"``` python \n{SOL}```  \n", SOL),
    "untagged": (f"```\n{SOL}```", SOL),
    "bash block first": ("Install nothing, then:\n\n```bash\npip install nothing\n```\n\nThe code:\n\n"
                         f"```python\n{SOL}```\n", SOL),
    "javascript block too": (f"In JavaScript:\n```javascript\nconst f = (x) => x % 1;\n```\nIn Python:\n"
                             f"```python\n{SOL}```", SOL),
    "output block after": (f"```python\n{SOL}```\nOutput:\n```text\n0.5\n```", SOL),
    "inline fence in prose": (f"I'll answer in a ```python``` block as asked.\n```python\n{SOL}```", SOL),
    "crlf": (f"Here:\r\n```python\r\n{SOL.replace(chr(10), chr(13) + chr(10))}```\r\n", SOL),
    "list item, 3 spaces": ("1. Define the function:\n\n   ```python\n   def truncate_number(number: float) -> float:\n"
                            "       return number % 1.0\n   ```\n2. Call it.", SOL),
    "bullet, 2 spaces": ("- Solution:\n  ```python\n  def truncate_number(number: float) -> float:\n"
                         "      return number % 1.0\n  ```", SOL),
    "revised answer last": (f"First try:\n```python\n{WRONG}```\nOops, corrected:\n```python\n{SOL}```", SOL),
    "usage block after": (f"```python\n{SOL}```\nExample:\n```python\nprint(truncate_number(3.5))\n```", SOL),
    "usage block before": (f"Usage:\n```python\nprint(truncate_number(3.5))  # 0.5\n```\n```python\n{SOL}```", SOL),
    "unterminated": (f"Here you go:\n```python\n{SOL}", SOL),
    "four backticks": (f"````python\n{SOL}````", SOL),
    "tilde fence": (f"~~~python\n{SOL}~~~", SOL),
    "body only": (f"```python\n{BODY}```", BODY),
    "no fence": (SOL, SOL),
    "closing fence with spaces": (f"```python\n{SOL}```   \nThat's it.", SOL),
}


@pytest.mark.parametrize("name", list(REPLIES))
def test_extracted_code(name: str) -> None:
    reply, expected = REPLIES[name]
    assert he.extract_code(reply, "truncate_number") == expected


@pytest.mark.parametrize("name", list(REPLIES))
def test_extracted_program_passes_the_problem_tests(name: str) -> None:
    problem = he.load_problems()[2]
    program = he.build_program(problem, REPLIES[name][0], "instruct")
    scope: dict = {}
    exec(compile(program + "\n" + problem["test"], f"<{name}>", "exec"), scope)  # our own code, not a model's
    scope["check"](scope[problem["entry_point"]])


def test_wrong_revision_last_fails_the_tests() -> None:
    """'then the last' is a rule, not luck: a wrong final revision is what gets run."""
    reply = f"```python\n{SOL}```\nActually:\n```python\n{WRONG}```"
    assert he.extract_code(reply, "truncate_number") == WRONG


def test_only_non_python_blocks_fall_back_to_the_text() -> None:
    reply = "Run:\n```bash\necho hi\n```"
    assert he.extract_code(reply, "truncate_number") == reply


def test_samples_of_one_problem_form_one_unit() -> None:
    """n > 1 samples per problem: every metric is one value per problem, and says so."""
    task = he.HumanEval(he.HumanEvalOptions(n=4, temperature=0.8))
    assert {m.unit for m in task.metrics} == {"problem"}
    assert all(m.weight is None for m in task.metrics)  # one value per problem: nothing to pool


HELPER = "def frac(x: float) -> float:\n    return x - int(x)\n"
USES_HELPER = "def truncate_number(number: float) -> float:\n    return frac(number)\n"


def test_a_helper_block_before_the_solution_is_kept() -> None:
    reply = f"A helper:\n```python\n{HELPER}```\nThen:\n```python\n{USES_HELPER}```\n"
    assert he.extract_code(reply, "truncate_number") == HELPER + "\n" + USES_HELPER
    problem = he.load_problems()[2]
    scope: dict = {}
    exec(compile(he.build_program(problem, reply, "instruct") + "\n" + problem["test"], "<helper>", "exec"), scope)
    scope["check"](scope["truncate_number"])


@pytest.mark.parametrize("earlier", [
    "print(truncate_number(3.5))\n",  # a usage example runs code: never carried over
    "def unused(x):\n    return x\n",  # defines nothing the solution uses
    "def frac(x):\n    return x -\n",  # does not parse
])
def test_other_earlier_blocks_are_not_carried_over(earlier: str) -> None:
    reply = f"```python\n{earlier}```\n```python\n{USES_HELPER}```"
    assert he.extract_code(reply, "truncate_number") == USES_HELPER

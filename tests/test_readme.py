"""The README and docs/ show commands that work and stay readable.

Every `python <script>.py ...` (or `python3 ...`) command in a fenced block or inline code of
README.md and docs/*.md whose script is one of the project's (a top-level script or
benchmarks/*.py) must exist and use only flags that the script's argparse parser has; a flag with
choices must be given one of them. Each script's `--help` runs once, in a subprocess, all of them
at the same time, so no script's full start-up runs. The README must stay a short user's page
(under 200 lines, no table cell over 25 words), the test command it shows must be the one CI
runs, it must link every page of docs/, and every relative link must point to a file.
"""

import argparse
import concurrent.futures
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
CI_TEST_COMMAND = "python3 -m pytest -q -n 2 tests"
README_MAX_LINES = 200
CELL_MAX_WORDS = 25
# Scripts that hand the arguments after a bare `--` to another script's parser.
FORWARDED_AFTER_DASHES = {"quickstart.py": "train.py"}
# Fewer commands than this means the extraction below broke, not that the docs lost them.
FEWEST_COMMANDS = 40

FENCE = re.compile(r"^[ \t]*(```|~~~)[^\n]*\n(.*?)^[ \t]*\1[ \t]*$", re.M | re.S)
INLINE = re.compile(r"(`+)(.+?)\1", re.S)
SEPARATORS = {";", "&&", "||", "|", "&"}
ENVIRONMENT_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


# One xdist worker runs them all, so every script's --help runs once (the module's fixture).
pytestmark = pytest.mark.xdist_group("readme")


# ---------------------------------------------------------------------------------------------
# Commands in markdown


class Command:
    """One `python script.py args...` found on a page."""

    def __init__(self, page, line, script, arguments):
        self.page, self.line, self.script, self.arguments = page, line, script, arguments

    def where(self):
        return f"{self.page}:{self.line}: python {self.script} {' '.join(self.arguments)}"


def split_words(text):
    """Shell words and separators of `text`, comments dropped (plain split when unbalanced)."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:
        return text.split()


def commands_in(text):
    """[(script, arguments)] of every `python`/`python3` command in one shell line."""
    found, segment = [], []
    for word in split_words(text) + [";"]:
        if word not in SEPARATORS:
            segment.append(word)
            continue
        while segment and ENVIRONMENT_ASSIGNMENT.match(segment[0]):
            segment.pop(0)
        if (len(segment) >= 2 and segment[0] in ("python", "python3")
                and segment[1].endswith(".py")):
            found.append((segment[1], segment[2:]))
        segment = []
    return found


def line_of(text, offset):
    return text.count("\n", 0, offset) + 1


def page_commands(name, text):
    """Every Command of one page's markdown `text`: fenced blocks line by line (backslash
    continuations joined), then inline code spans outside them."""
    found = []
    for block in FENCE.finditer(text):
        first = line_of(text, block.start(2))
        lines = block.group(2).split("\n")
        index = 0
        while index < len(lines):
            start, logical = index, lines[index]
            while logical.rstrip().endswith("\\") and index + 1 < len(lines):
                index += 1
                logical = logical.rstrip()[:-1] + " " + lines[index]
            for script, arguments in commands_in(logical):
                found.append(Command(name, first + start, script, arguments))
            index += 1
    prose = FENCE.sub(lambda match: re.sub(r"[^\n]", " ", match.group(0)), text)
    for span in INLINE.finditer(prose):
        for script, arguments in commands_in(span.group(2).replace("\n", " ")):
            found.append(Command(name, line_of(prose, span.start()), script, arguments))
    return found


def all_commands():
    commands = []
    for page in PAGES:
        commands += page_commands(page.relative_to(ROOT).as_posix(),
                                  page.read_text(encoding="utf-8"))
    return commands


def project_script(script):
    """The script's path relative to the repository when it is one of the project's (a
    top-level script or benchmarks/*.py, existing or not), else None."""
    if "<" in script or "*" in script:
        return None  # a placeholder such as <script>.py
    parts = pathlib.PurePosixPath(script.removeprefix("./")).parts
    if len(parts) == 1 or (len(parts) == 2 and parts[0] == "benchmarks"):
        return "/".join(parts)
    return None


# ---------------------------------------------------------------------------------------------
# What a parser accepts, read from its --help


def parse_help(text):
    """({flag: (choices or None, takes several values)}, positional choices or None) of an
    argparse help text: each option line is indented two spaces, its invocations separated by
    ', ', a metavar `{a,b}` giving choices; `{a,b}` alone on such a line is a positional."""
    options, positional = {}, None
    for line in text.splitlines():
        if not line.startswith("  ") or line.startswith("   "):
            continue
        invocations = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
        if invocations.startswith("{") and invocations.endswith("}"):
            positional = positional or invocations[1:-1].split(",")
            continue
        if not invocations.startswith("-"):
            continue
        for invocation in invocations.split(", "):
            flag, _, metavar = invocation.partition(" ")
            choices = None
            if metavar.startswith("{"):
                choices = metavar[1:metavar.index("}")].split(",")
            options[flag] = (choices, "..." in metavar)
    return options, positional


def is_placeholder(value):
    """A value the docs leave to the reader: DIR, N, <name>, ..."""
    return value == "..." or "<" in value or re.fullmatch(r"[A-Z][A-Z0-9_.]*", value) is not None


def check_arguments(arguments, options, positional):
    """Problems (strings) of `arguments` against a parser's options and positional choices."""
    problems = []
    if positional and arguments and not arguments[0].startswith("-"):
        if arguments[0] not in positional and not is_placeholder(arguments[0]):
            problems.append(f"{arguments[0]!r} is not one of {positional}")
    for index, word in enumerate(arguments):
        if not word.startswith("--") or word == "--":
            continue
        flag, equals, value = word.partition("=")
        if flag not in options:
            problems.append(f"no flag {flag}")
            continue
        choices, several = options[flag]
        if not choices:
            continue
        values = [value] if equals else []
        for following in arguments[index + 1:] if not equals else []:
            if following.startswith("-"):
                break
            values.append(following)
            if not several:
                break
        for given in values:
            if given not in choices and not is_placeholder(given):
                problems.append(f"{flag} {given!r} is not one of {choices}")
    return problems


def run_help(script):
    environment = dict(os.environ, COLUMNS="120", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, env=environment,
                            capture_output=True, text=True, timeout=300)
    return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="module")
def commands():
    return all_commands()


@pytest.fixture(scope="module")
def helps(commands):
    """{script: (exit status, help text)} for every project script the docs run (and the
    scripts they forward to), each `--help` once, all at the same time."""
    scripts = {project_script(command.script) for command in commands} - {None}
    scripts |= {FORWARDED_AFTER_DASHES[script] for script in scripts
                if script in FORWARDED_AFTER_DASHES}
    scripts = sorted(script for script in scripts if (ROOT / script).is_file())
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(scripts) or 1) as pool:
        return dict(zip(scripts, pool.map(run_help, scripts)))


# ---------------------------------------------------------------------------------------------
# The extraction and the help parsing themselves


def test_commands_are_found_in_blocks_inline_code_and_shell_lines():
    text = "\n".join([
        "Run `python3 evaluate.py --oracle --ref A.json` or `python x/y.py --a`.",
        "```bash",
        "pip install -r requirements.txt && python quickstart.py  # the whole chain",
        "TF_CONFIG='{\"task\": {\"index\": 0}}' \\",
        "  python train.py --preset paper --strategy multiworker",
        "python -m pytest -q tests",
        "```",
        "Inline across a line break: `python train.py --preset cpu",
        "--max_train_minutes 60`.",
    ])
    found = [(c.line, c.script, c.arguments) for c in page_commands("page.md", text)]
    assert found == [
        (3, "quickstart.py", []),
        (4, "train.py", ["--preset", "paper", "--strategy", "multiworker"]),
        (1, "evaluate.py", ["--oracle", "--ref", "A.json"]),
        (1, "x/y.py", ["--a"]),
        (8, "train.py", ["--preset", "cpu", "--max_train_minutes", "60"]),
    ]
    assert project_script("x/y.py") is None
    assert project_script("benchmarks/bench_train.py") == "benchmarks/bench_train.py"


def test_help_parsing_and_argument_checks_on_a_real_parser():
    parser = argparse.ArgumentParser(prog="demo")
    parser.add_argument("role", choices=["dispatcher", "worker"])
    parser.add_argument("--check-only", "--check_only", action="store_true")
    parser.add_argument("--quantization", choices=["none", "int8"], nargs="+")
    parser.add_argument("--preset", choices=["cpu", "paper"], help="x " * 80)
    parser.add_argument("--format", nargs="+", metavar="FORMAT")
    options, positional = parse_help(parser.format_help())
    assert positional == ["dispatcher", "worker"]
    assert {"--check-only", "--check_only", "--quantization", "--preset", "--format",
            "--help"} <= set(options)
    assert options["--quantization"] == (["none", "int8"], True)
    assert check_arguments(["worker", "--check_only", "--quantization", "none", "int8",
                            "--preset=cpu", "--format", "onnx", "litert"],
                           options, positional) == []
    assert check_arguments(["master", "--preset", "gpu", "--quantization", "int4", "--nope"],
                           options, positional) == [
        "'master' is not one of ['dispatcher', 'worker']",
        "--preset 'gpu' is not one of ['cpu', 'paper']",
        "--quantization 'int4' is not one of ['none', 'int8']",
        "no flag --nope"]


# ---------------------------------------------------------------------------------------------
# The docs' commands


def test_the_docs_show_enough_commands_to_check(commands):
    checked = [c for c in commands if project_script(c.script)]
    assert len(checked) >= FEWEST_COMMANDS, [c.where() for c in checked]


def test_every_script_the_docs_run_exists(commands):
    missing = [c.where() for c in commands
               if project_script(c.script) and not (ROOT / project_script(c.script)).is_file()]
    assert missing == []


def test_every_flag_the_docs_use_is_in_the_scripts_parser(commands, helps):
    problems = [f"{script}: --help exited with {status}:\n{text[-2000:]}"
                for script, (status, text) in helps.items() if status != 0]
    parsed = {script: parse_help(text) for script, (status, text) in helps.items()}
    for command in commands:
        script = project_script(command.script)
        if script not in parsed:
            continue
        arguments = command.arguments
        forwarded = []
        if script in FORWARDED_AFTER_DASHES and "--" in arguments:
            cut = arguments.index("--")
            arguments, forwarded = arguments[:cut], arguments[cut + 1:]
        found = check_arguments(arguments, *parsed[script])
        if forwarded:
            found += check_arguments(forwarded, *parsed[FORWARDED_AFTER_DASHES[script]])
        problems += [f"{command.where()}\n    {problem}" for problem in found]
    assert problems == [], "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# The README as a user's page, and the links


def test_readme_is_under_200_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < README_MAX_LINES, len(lines)


def table_cells(text):
    """(line number, cell) of every markdown table cell outside fenced blocks."""
    prose = FENCE.sub(lambda match: re.sub(r"[^\n]", " ", match.group(0)), text)
    for number, line in enumerate(prose.splitlines(), 1):
        row = line.strip()
        if not row.startswith("|"):
            continue
        cells = re.split(r"(?<!\\)\|", row.strip("|"))
        if all(re.fullmatch(r"\s*:?-+:?\s*", cell) for cell in cells):
            continue
        for cell in cells:
            yield number, cell.strip()


def test_no_readme_table_cell_is_over_25_words():
    text = README.read_text(encoding="utf-8")
    cells = list(table_cells(text))
    assert cells, "the README has a results table"
    long = [f"README.md:{number}: {len(cell.split())} words: {cell}"
            for number, cell in cells if len(cell.split()) > CELL_MAX_WORDS]
    assert long == [], "\n".join(long)


def test_the_readme_test_command_is_the_one_ci_runs():
    blocks = [block.group(2) for block in FENCE.finditer(README.read_text(encoding="utf-8"))]
    assert any(line.strip() == CI_TEST_COMMAND
               for block in blocks for line in block.splitlines())
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert CI_TEST_COMMAND in [line.strip() for line in ci]


def relative_links(text):
    """(line number, path, fragment) of every markdown link and image outside code, web links
    left out; path is "" for an in-page anchor."""
    prose = FENCE.sub(lambda match: re.sub(r"[^\n]", " ", match.group(0)), text)
    prose = INLINE.sub(lambda match: re.sub(r"[^\n]", " ", match.group(0)), prose)
    targets = [(m.start(), m.group(1)) for m in re.finditer(r"\]\(\s*<?([^)\s>]+)", prose)]
    targets += [(m.start(), m.group(1))
                for m in re.finditer(r"^\s*\[[^\]]+\]:\s*<?([^\s>]+)", prose, re.M)]
    for offset, target in targets:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
            continue
        path, _, fragment = target.partition("#")
        yield line_of(prose, offset), path, fragment


def anchors(text):
    """The anchors GitHub gives the headings of a markdown page: lower case, code and link
    markup dropped, punctuation other than - and _ removed, spaces made hyphens, repeats
    numbered."""
    prose = FENCE.sub("", text)
    seen, found = {}, set()
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", prose, re.M):
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def test_anchors_follow_githubs_rules():
    assert anchors("# Host threads (`--intra_op_threads`)\n## A [link](x.md), again\n"
                   "## A link, again\n") == {"host-threads---intra_op_threads",
                                              "a-link-again", "a-link-again-1"}


def test_every_relative_link_points_to_a_file_and_its_anchor():
    broken = []
    for page in PAGES:
        for number, path, fragment in relative_links(page.read_text(encoding="utf-8")):
            target = (page.parent / path) if path else page
            where = f"{page.relative_to(ROOT)}:{number}: {path}#{fragment}"
            if not target.exists():
                broken.append(where)
            elif fragment and target.suffix == ".md" and fragment not in anchors(
                    target.read_text(encoding="utf-8")):
                broken.append(f"{where} (no such heading)")
    assert broken == [], "\n".join(broken)


def test_the_readme_links_every_page_of_docs():
    linked = {(README.parent / path).resolve()
              for _, path, _ in relative_links(README.read_text(encoding="utf-8")) if path}
    assert DOCS, "docs/ has pages"
    assert [page.name for page in DOCS if page.resolve() not in linked] == []


def test_every_page_of_docs_starts_with_a_title_and_a_one_line_purpose():
    for page in DOCS:
        lines = page.read_text(encoding="utf-8").splitlines()
        assert lines[0].startswith("# "), page.name
        blank, purpose, after = (lines[1:4] + ["", "", ""])[:3]
        assert not blank.strip() and not after.strip(), f"{page.name}: one line of purpose"
        assert purpose.strip() and not purpose.startswith(("#", "|", "```", "-", "!")), page.name

"""Validator for target prompts written by the stage-2 rewriter (paper Appendix C).

The paper asks Llama-3.1-8B-Instruct to rewrite a LLaVA caption so that exactly one
concept (an object) changes and every other word stays as it is. A language model does
not always obey, so each rewrite is checked here before it becomes an edit pair:

* it is not empty and not identical to the source caption;
* it carries no chat preamble ("Output:", "Here is ...", "Sure, ...") and is not wrapped
  in quotes;
* a word-level diff against the source finds ONE replacement (old words -> new words) of
  at most ``max_span_words`` words on each side. The same replacement may occur at
  several places: the paper's own example turns every "dog" of the caption into "fox"
  (five places), and that is still one concept;
* the replacement neither changes nor adds a colour word, unless allowed.

Decision on colour changes ("red car" -> "blue car"): rejected by default. The paper's
instruction says "Do not change or add colors" (rule 6) and "If changing an object ...
do not alter its color, shape, or other attributes" (rule 7), i.e. the edit set swaps
objects, not attributes. ``allow_colour_change=True`` (CLI ``--allow-colour-change``)
accepts them for other uses. Other single-word swaps ("wooden" -> "metal") cannot be
told apart from object swaps without a part-of-speech tagger and are accepted.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

# Words that name a colour. A replacement whose old and new words differ in these is a
# colour change (paper rules 6 and 7). Lower case; compared case-insensitively.
COLOUR_WORDS = frozenset(
    """
    red orange yellow green blue purple violet pink brown black white gray grey beige tan
    gold golden silver turquoise teal cyan magenta maroon navy crimson scarlet ivory cream
    lavender indigo olive bronze amber coral khaki burgundy lilac mauve azure emerald
    reddish bluish greenish yellowish brownish pinkish purplish greyish grayish blonde
    multicolored multicoloured colorful colourful
    """.split()
)

# Articles that may change together with the object ("a dog" -> "an owl"); they are not a
# second concept, so they are ignored when replacements are compared.
_ARTICLES = frozenset({"a", "an"})

# A rewrite that starts like a chat answer instead of the description itself.
_PREAMBLE_PATTERNS = [
    re.compile(
        r"^\s*(output|input|answer|result|response|target(\s+(prompt|text|caption))?|"
        r"(the\s+)?(modified|rewritten|new|edited)(\s+(text|prompt|caption|description))*)\s*:",
        re.IGNORECASE,
    ),
    re.compile(
        r"^\s*(here\s+is|here's|here\s+are|sure\b|certainly\b|okay\b|ok\b|of\s+course\b|"
        r"i\s+(have|changed|replaced|modified)\b|the\s+modified\b)",
        re.IGNORECASE,
    ),
]

_QUOTE_CHARS = "\"'\u201c\u201d\u2018\u2019\u00ab\u00bb`"

# Words with inner hyphens stay one word ("close-up"); apostrophes split, so that the
# possessive in "dog's" -> "fox's" is the same replacement as "dog" -> "fox".
_WORD_RE = re.compile(r"\w+(?:-\w+)*|[^\w\s]")


def split_words(text: str) -> list[str]:
    """Words and punctuation marks of ``text``, in order (the unit of the diff)."""
    return _WORD_RE.findall(text)


@dataclass(frozen=True)
class RewriteRules:
    """What counts as a valid one-concept rewrite."""

    max_span_words: int = 4  # most words on EACH side of the replacement
    allow_colour_change: bool = False  # paper rules 6-7 forbid it
    allow_repeated_replacement: bool = True  # the paper's example repeats dog -> fox

    def __post_init__(self) -> None:
        if self.max_span_words < 1:
            raise ValueError(f"max_span_words must be >= 1, got {self.max_span_words}")


@dataclass(frozen=True)
class ChangedSpan:
    """The single replacement found by the diff."""

    source: str  # old words, e.g. "dog"
    target: str  # new words, e.g. "fox"
    occurrences: int  # at how many places of the caption it was made
    source_word_index: int  # index (in split_words(source)) of the first changed word

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "target": self.target,
            "occurrences": self.occurrences,
            "source_word_index": self.source_word_index,
        }


@dataclass(frozen=True)
class RewriteCheck:
    """Outcome of :func:`check_rewrite`: ``ok`` with the span, or a reason."""

    ok: bool
    reason: str = ""
    span: ChangedSpan | None = None
    replacements: list[tuple[str, str]] = field(default_factory=list)


def _join(words: list[str]) -> str:
    text = " ".join(words)
    # Undo the spaces the split put around punctuation, for a readable span.
    return re.sub(r"\s+([^\w\s])", r"\1", text).replace("\u2019 s", "\u2019s").replace("' s", "'s")


def _short(text: str, limit: int = 60) -> str:
    """``repr`` of text cut to ``limit`` characters, for readable reasons."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _strip_articles(words: list[str]) -> list[str]:
    if len(words) > 1 and words[0].lower() in _ARTICLES:
        return words[1:]
    return words


def _find_preamble(source: str, rewrite: str) -> str:
    for pattern in _PREAMBLE_PATTERNS:
        if pattern.search(rewrite) and not pattern.search(source):
            first = rewrite.strip().splitlines()[0][:40]
            return f"starts with a preamble ({first!r}); the rewrite must be the description only"
    stripped = rewrite.strip()
    if (
        len(stripped) >= 2
        and stripped[0] in _QUOTE_CHARS
        and stripped.rstrip(".")[-1] in _QUOTE_CHARS
        and source.strip()[:1] not in _QUOTE_CHARS
    ):
        return "wrapped in quotes; the rewrite must be the description only"
    source_lines = [line for line in source.strip().splitlines() if line.strip()]
    rewrite_lines = [line for line in stripped.splitlines() if line.strip()]
    if len(rewrite_lines) > len(source_lines):
        return "has extra lines (commentary?) that the source caption does not have"
    return ""


def check_rewrite(source: str, rewrite: str, rules: RewriteRules | None = None) -> RewriteCheck:
    """Check that ``rewrite`` changes exactly one concept of ``source`` (see module doc)."""
    rules = rules or RewriteRules()
    if not source or not source.strip():
        return RewriteCheck(False, "source caption is empty")
    if not rewrite or not rewrite.strip():
        return RewriteCheck(False, "empty rewrite")

    preamble = _find_preamble(source, rewrite)
    if preamble:
        return RewriteCheck(False, preamble)

    source_words = split_words(source)
    rewrite_words = split_words(rewrite)
    if source_words == rewrite_words:
        return RewriteCheck(False, "identical to the source caption (nothing changed)")

    matcher = difflib.SequenceMatcher(a=source_words, b=rewrite_words, autojunk=False)
    changes = [op for op in matcher.get_opcodes() if op[0] != "equal"]

    replacements: list[tuple[str, str]] = []
    distinct: dict[tuple[tuple[str, ...], tuple[str, ...]], int] = {}
    first_index = changes[0][1]
    for tag, i1, i2, j1, j2 in changes:
        old, new = source_words[i1:i2], rewrite_words[j1:j2]
        replacements.append((_join(old), _join(new)))
        if tag == "insert":
            return RewriteCheck(
                False,
                f"adds words {_short(_join(new))} without replacing any (paper rule 4: no new elements)",
                replacements=replacements,
            )
        if tag == "delete":
            return RewriteCheck(
                False, f"deletes words {_short(_join(old))} without replacing them", replacements=replacements
            )
        canonical = (
            tuple(w.lower() for w in _strip_articles(old)),
            tuple(w.lower() for w in _strip_articles(new)),
        )
        distinct[canonical] = distinct.get(canonical, 0) + 1

    if len(distinct) > 1:
        listed = "; ".join(f"{_short(a, 30)} -> {_short(b, 30)}" for a, b in replacements[:3])
        return RewriteCheck(
            False, f"changes {len(distinct)} different things ({listed}); exactly one is allowed",
            replacements=replacements,
        )
    if len(changes) > 1 and not rules.allow_repeated_replacement:
        return RewriteCheck(
            False, f"the change is made at {len(changes)} places; one contiguous span is allowed",
            replacements=replacements,
        )

    (old_canon, new_canon), occurrences = next(iter(distinct.items()))
    longest = max(len(old_canon), len(new_canon))
    if longest > rules.max_span_words:
        return RewriteCheck(
            False,
            f"changed span is {longest} words long (max {rules.max_span_words} on each side): "
            f"{_short(replacements[0][0])} -> {_short(replacements[0][1])}",
            replacements=replacements,
        )

    old_colours = {w for w in old_canon if w in COLOUR_WORDS}
    new_colours = {w for w in new_canon if w in COLOUR_WORDS}
    if old_colours != new_colours and not rules.allow_colour_change:
        return RewriteCheck(
            False,
            f"changes or adds a colour ({_short(replacements[0][0])} -> {_short(replacements[0][1])}); "
            "the paper's rules 6-7 forbid colour edits",
            replacements=replacements,
        )

    first_old = source_words[changes[0][1] : changes[0][2]]
    first_new = rewrite_words[changes[0][3] : changes[0][4]]
    span = ChangedSpan(
        source=_join(first_old),
        target=_join(first_new),
        occurrences=occurrences,
        source_word_index=first_index,
    )
    return RewriteCheck(True, "", span=span, replacements=replacements)

"""Tells source code, configuration, JSON and logs from prose, so that findings in them can be
judged for what they are: `self.mo` is an attribute, `Logger` a class, `1.2.3.4` often a version.

Cheap on purpose (a few regexes per line): it runs on every text before any detector.
"""

from __future__ import annotations

import re

# A line reads as code, configuration, JSON or a log line when it matches one of these.
_CODE_LINE = re.compile(
    r"""
      [{}\[\];]\s*$                                   # ends a block or a statement
    | ^\s*[}\])]                                      # closes one
    | ^\s*(?:def|class|import|from|return|if|elif|else|for|while|try|except|with|async|await
          |func|fn|let|const|var|pub|public|private|protected|package|use|impl|struct|type
          |interface|enum|static|final|void|int|func|SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER
          |WHERE|FROM|RUN|COPY|ENV|ARG|CMD|ENTRYPOINT|WORKDIR|EXPOSE|export|echo|set|fi|then
          |done|do|case|esac|local|module|require|include|@\w+)\b
    | ^\s*(?://|\#!|/\*|\*\s|--\s|<!--|<\w+[\s>/])     # comments, shebangs, markup
    | ^\s*[\w.-]+\s*(?::|=)\s*(?:[^\s,]+,?\s*$|["'\[{\d(])  # key: value, key = "value"
    | ^\s*"[^"]+"\s*:                                 # JSON keys
    | ^\s*-\s+[\w.-]+:\s                              # YAML mappings in lists
    | \w\.\w+\(|\)\s*(?:=>|->|\{)|::|:=|=>|==|!=|&&|\|\|   # calls, arrows, operators
    | ^\d{4}-\d\d-\d\d[T ]\d\d:\d\d                   # log timestamps
    | ^\s*\$\s|\$[({]\w|\\$|^\s*[\w./-]+\s+--?\w        # shell: prompts, expansions, flags
    | ^[0-9a-f]{7,40}\s                              # git log lines
    """,
    re.VERBOSE,
)
_INDENTED = re.compile(r"^(?: {2,}|\t)\S")
# Sentences: a capital after a full stop and a space reads as prose even with a colon in it.
_SENTENCE = re.compile(r"[a-z]{2,}[,;]? [a-z]{2,} [a-z]{2,} [a-z]{2,}")


def technical_share(text: str) -> float:
    """The share of non-blank lines that look like code, configuration, JSON or logs."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return 0.0
    technical = 0
    for line in lines:
        if _CODE_LINE.search(line) or (_INDENTED.match(line) and not _SENTENCE.search(line)):
            technical += 1
    return technical / len(lines)


def is_technical(text: str) -> bool:
    """True for text that is mostly code, configuration, JSON or logs.

    One-line texts count only when they are clearly code (a JSON object, a call), since a
    single sentence with a colon in it is prose."""
    stripped = text.strip()
    if not stripped:
        return False
    if stripped[0] in "{[" and stripped[-1] in "}]":
        return True
    if "\n" not in stripped:
        return _SENTENCE.search(stripped) is None and _CODE_LINE.search(stripped) is not None
    return technical_share(stripped) >= 0.5

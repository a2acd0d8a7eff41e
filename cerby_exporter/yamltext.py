"""YAML as the web config and the webhook keys file are read: errors that reveal no content.

Both files hold secrets (password hashes, HMAC keys); PyYAML's messages quote the text around
the fault, so they are never passed on.
"""

from __future__ import annotations

import yaml


class InvalidYaml(ValueError):
    """The text is not YAML; the message says only where."""


def yaml_document(text: str) -> object:
    """The YAML document in `text`; the error names only the line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InvalidYaml(f"not valid YAML{where}") from None

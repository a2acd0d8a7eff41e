"""The Helm chart's tooling: `make chart`, and the chart's README.

    python -m tests.helm_render [VALUES.yaml ...]   # make chart
    python -m tests.helm_render --readme            # rewrite helm/cerby-exporter/README.md

`make chart` prints every manifest an install would create, as `helm template` does (a `# Source:`
line before each), with Helm's own engine and no helm binary, then runs `helm lint --strict` on the
same values and reports on stderr; it exits 1 if the lint finds anything worse than information.
With no values file it renders the least a real install needs (ci/default-values.yaml). It uses
helm-python-sdk as tests/test_helm.py does, so what it shows is what the tests check.

The README's table of values is made from the `# --` comments of values.yaml (the helm-docs
convention), so that the two cannot drift apart; tests/test_helm.py checks it is current.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

CHART_DIR = Path(__file__).resolve().parent.parent / "helm" / "cerby-exporter"
DEFAULT_VALUES = CHART_DIR / "ci" / "default-values.yaml"
VALUES_FILE = CHART_DIR / "values.yaml"
README = CHART_DIR / "README.md"
LINT_WARNING = 2
"""Helm's severities: 1 information, 2 warning, 3 error."""


def load_values(paths: list[Path]) -> dict[str, Any]:
    """The files merged left to right, later keys winning, as `helm -f a -f b` merges them."""
    merged: dict[str, Any] = {}
    for path in paths:
        merge(merged, yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    return merged


def merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value


def manifests(values: dict[str, Any], name: str, namespace: str) -> str:
    """What `helm template` prints: each rendered template but NOTES.txt, in path order."""
    with helm.Chart.load(CHART_DIR) as chart:
        rendered: dict[str, str] = chart.render(
            values, name=name, namespace=namespace, is_install=True
        )
    documents = [
        f"---\n# Source: {path}\n{text.strip()}\n"
        for path, text in sorted(rendered.items())
        if not path.endswith("NOTES.txt") and text.strip()
    ]
    return "".join(documents)


def lint(values: dict[str, Any], namespace: str) -> list[str]:
    """`helm lint --strict`: the problems found, warnings and errors, one line each."""
    report: dict[str, Any] = helm.lint(CHART_DIR, values, strict=True, namespace=namespace)
    problems = [str(error) for error in report["errors"]]
    problems += [
        f"{message['path']}: {message['error']}"
        for message in report["messages"]
        if message["severity"] >= LINT_WARNING
    ]
    return problems


PIPE = "\\|"
"""A `|` inside a Markdown table cell."""
_KEY_LINE = re.compile(r"(\s*)([A-Za-z][A-Za-z0-9_]*):(?:\s|$)")


def value_comments(text: str) -> dict[tuple[str, ...], str]:
    """Each key of values.yaml with a `# --` comment right above it (continued by the `#` lines
    that follow), by its path of keys. A documented map is documented as a whole."""
    found: dict[tuple[str, ...], str] = {}
    parents: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped.removeprefix("# --").strip()]
            continue
        if stripped.startswith("#"):
            if pending is not None:
                pending.append(stripped.removeprefix("#").strip())
            continue
        match = _KEY_LINE.match(line)
        if match is None:  # a blank line, or a list item of a value
            pending = None
            continue
        indent = len(match.group(1))
        while parents and parents[-1][0] >= indent:
            parents.pop()
        path = (*(key for _, key in parents), match.group(2))
        if pending is not None:
            found[path] = " ".join(pending)
        pending = None
        parents.append((indent, match.group(2)))
    return found


def undocumented(values: dict[str, Any], comments: dict[tuple[str, ...], str]) -> list[str]:
    """Values with no comment of their own or of a map above them."""
    missing: list[str] = []

    def walk(node: dict[str, Any], path: tuple[str, ...]) -> None:
        for key, value in node.items():
            here = (*path, key)
            if here in comments:
                continue
            if isinstance(value, dict) and value:
                walk(value, here)
            else:
                missing.append(".".join(here))

    walk(values, ())
    return missing


def readme() -> str:
    """The chart's README: what it is, where the guide is, and every value with its default."""
    text = VALUES_FILE.read_text(encoding="utf-8")
    values = yaml.safe_load(text)
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text(encoding="utf-8"))
    rows = []
    for path, comment in value_comments(text).items():
        default: Any = values
        for key in path:
            default = default[key]
        shown = json.dumps(default, ensure_ascii=False).replace("|", PIPE)
        rows.append(f"| `{'.'.join(path)}` | `{shown}` | {comment.replace('|', PIPE)} |")
    return "\n".join(
        [
            f"# {chart['name']} Helm chart",
            "",
            " ".join(chart["description"].split()),
            "",
            "How to build the image (none is published), install the chart, set up Cerby's",
            "webhooks and keep the state: [docs/deploy.md](../../docs/deploy.md). `make chart`",
            "prints what the chart renders for a values file and lints it.",
            "",
            "<!-- Generated from values.yaml by `python -m tests.helm_render --readme`: edit the",
            "comments there, not this file. -->",
            "",
            "## Values",
            "",
            f"Chart version {chart['version']}, exporter {chart['appVersion']}. Every key is",
            "checked by values.schema.json.",
            "",
            "| Key | Default | Description |",
            "|---|---|---|",
            *rows,
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make chart", description=__doc__.splitlines()[0])
    parser.add_argument("values", nargs="*", type=Path, help="values files (helm -f)")
    parser.add_argument("--name", default="cerby-exporter", help="release name")
    parser.add_argument("--namespace", default="monitoring")
    parser.add_argument("--readme", action="store_true", help=f"rewrite {README.name} instead")
    args = parser.parse_args(argv)
    if args.readme:
        README.write_text(readme(), encoding="utf-8")
        return 0
    values = load_values(args.values or [DEFAULT_VALUES])
    try:
        sys.stdout.write(manifests(values, args.name, args.namespace))
    except (helm.HelmRenderError, helm.HelmValuesError) as exc:
        print(f"render failed: {exc}", file=sys.stderr)
        return 1
    problems = lint(values, args.namespace)
    for problem in problems:
        print(f"lint: {problem}", file=sys.stderr)
    print(f"lint --strict: {len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

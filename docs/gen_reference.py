"""Writes reference/cli.md at build time (mkdocs-gen-files) from the command line's own parser, so
the page can never disagree with `onnx2snn COMMAND --help`."""
import argparse

import mkdocs_gen_files

from onnx2snn.cli import COMMANDS, build_parser


def _subparsers(parser: argparse.ArgumentParser) -> dict:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def _flag_rows(parser: argparse.ArgumentParser) -> list:
    rows = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        rows.append(f"\n**{group.title}**\n\n| flag | default | meaning |\n| --- | --- | --- |")
        for a in actions:
            names = ", ".join(f"`{n}`" for n in a.option_strings) or f"`{a.dest}`"
            if a.metavar and a.option_strings:
                names += f" `{a.metavar}`"
            elif a.choices and a.option_strings:
                names += " `" + "|".join(map(str, a.choices)) + "`"
            default = "" if a.default in (None, False, argparse.SUPPRESS) else f"`{a.default}`"
            text = (a.help or "").replace("|", "\\|").replace("\n", " ")
            rows.append(f"| {names} | {default} | {text} |")
    return rows


parser = build_parser()
lines = ["# Command-line reference", "",
         "Generated from the parser at build time: the same text as `onnx2snn COMMAND --help`.", "",
         f"`onnx2snn MODEL ...` means `onnx2snn convert MODEL ...`. {parser.epilog}"]
for name, sub in _subparsers(parser).items():
    assert name in COMMANDS
    lines += ["", f"## {name}", "", sub.description or "", "", "```text", sub.format_usage().strip(), "```"]
    lines += _flag_rows(sub)
with mkdocs_gen_files.open("reference/cli.md", "w") as f:
    f.write("\n".join(lines) + "\n")

# the changelog lives at the repository's top (CHANGELOG.md); the site shows the same file
with open("CHANGELOG.md") as src, mkdocs_gen_files.open("changelog.md", "w") as f:
    f.write(src.read())

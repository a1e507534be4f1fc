#!/usr/bin/env python3
"""Reference chat-template renderer for tests/test_chat_template.cpp: Jinja2 itself, configured
exactly as Hugging Face transformers renders `tokenizer.chat_template`:

    ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    globals: raise_exception(message), strftime_now(format)
    filter:  tojson = json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)

strftime_now() formats a fixed date (2024-07-26 12:00:00), the same the C++ test injects.

Usage:
    chat_template_ref.py TEMPLATE_FILE CONTEXT_JSON_FILE
        prints the rendered prompt to stdout (exit 0), or the error to stderr (exit 1)
    chat_template_ref.py --batch CASES_JSON_FILE OUT_JSON_FILE
        CASES: [{"template": "<template source>", "context": {...}}, ...]
        OUT:   [{"ok": true, "output": "..."} or {"ok": false, "error": "..."}, ...] (ASCII JSON)
"""
import datetime
import json
import sys

import jinja2
import jinja2.exceptions
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

FIXED_NOW = datetime.datetime(2024, 7, 26, 12, 0, 0)


def make_env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return FIXED_NOW.strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render(env, source, context):
    return env.from_string(source).render(**context)


def main(argv):
    env = make_env()
    if len(argv) == 4 and argv[1] == "--batch":
        with open(argv[2], encoding="utf-8") as f:
            cases = json.load(f)
        results = []
        for case in cases:
            try:
                results.append({"ok": True, "output": render(env, case["template"], case["context"])})
            except Exception as e:  # any failure: the C++ side must fail too
                results.append({"ok": False, "error": f"{type(e).__name__}: {e}"})
        with open(argv[3], "w", encoding="ascii") as f:
            json.dump(results, f, ensure_ascii=True)
        return 0
    if len(argv) == 3:
        with open(argv[1], encoding="utf-8", newline="") as f:
            source = f.read()
        with open(argv[2], encoding="utf-8") as f:
            context = json.load(f)
        try:
            out = render(env, source, context)
        except Exception as e:
            print(f"{type(e).__name__}: {e}", file=sys.stderr)
            return 1
        sys.stdout.buffer.write(out.encode("utf-8", "surrogateescape"))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))

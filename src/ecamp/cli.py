"""`ecamp <stage>`: one command line for every stage of the pipeline.

This module stays thin: each stage lives in its own module that defines
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.  Heavy
imports (torch, transformers) happen inside ``run`` so ``ecamp --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (command, module) in the order a user meets them; a module may register sub-commands itself
COMMANDS: list[tuple[str, str]] = [
    ("run", "ecamp.pipeline.cli"),
    ("distill", "ecamp.distill.cli"),
    ("text", "ecamp.text.cli"),
    ("tokenizer", "ecamp.text.tokenizer_cli"),
    ("mimic", "ecamp.data.sources.mimic_cxr"),
    ("cache", "ecamp.data.cache"),
    ("attention", "ecamp.train.attention_cli"),
    ("pretrain", "ecamp.train.pretrain"),
    ("pretrain show", "ecamp.train.pretrain_show"),  # a two-word command: see main()
    ("export", "ecamp.train.export"),
    ("splits", "ecamp.data.splits_cli"),
    ("finetune", "ecamp.train.finetune"),
    ("evaluate", "ecamp.eval.cli"),
    ("report", "ecamp.viz.report"),
]

# stages that train: on a CPU their Trainer lets glibc keep freed memory (ecamp.utils.allocator),
# a process-wide setting that only the command line opts into, never an import of the library
TRAINING_COMMANDS = frozenset({"run", "attention", "pretrain", "finetune"})


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every available stage registered."""
    from ecamp import __version__

    parser = argparse.ArgumentParser(
        prog="ecamp",
        description="ECAMP pre-training for chest X-rays: distill -> attention -> pretrain -> finetune.",
    )
    parser.add_argument("--version", action="version", version=f"ecamp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS:
        if " " in name:  # two-word commands get their own parser (_two_word_command)
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name:  # stage not built yet in this checkout
                continue
            raise
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        if not p.get_default("func"):
            # a stage made only of sub-commands has no run(): called bare, it shows its help
            p.set_defaults(func=getattr(module, "run", None), command_parser=p)
    return parser


def _two_word_command(argv: list[str]) -> argparse.Namespace | None:
    """Parse ``ecamp pretrain show ...`` (a command whose stage takes free ``key=value``
    overrides, which an argparse sub-parser would swallow), or None for any other line."""
    for name, module_name in COMMANDS:
        words = name.split()
        if len(words) == 2 and argv[:2] == words:
            module = importlib.import_module(module_name)
            p = argparse.ArgumentParser(prog=f"ecamp {name}", description=module.HELP)
            module.add_arguments(p)
            args = p.parse_args(argv[2:])
            args.func, args.command = module.run, name
            return args
    return None


def parse_args(
    parser: argparse.ArgumentParser, argv: list[str] | None = None
) -> argparse.Namespace:
    """Parse ``argv``; ``key=value`` overrides may stand before, between or after options.

    argparse gives a ``nargs="*"`` positional only the words before the first option; a stage
    whose positional collects overrides names it with ``set_defaults(override_dest=...)``,
    and the override-looking words argparse left over are appended to it in order.
    """
    args, extra = parser.parse_known_args(argv)
    dest = getattr(args, "override_dest", None)
    if extra and dest:
        moved = [x for x in extra if "=" in x and not x.startswith("-")]
        extra = [x for x in extra if x not in moved]
        setattr(args, dest, list(getattr(args, dest, None) or []) + moved)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ecamp`` console script."""
    from ecamp.errors import UserError

    argv = sys.argv[1:] if argv is None else list(argv)
    args = _two_word_command(argv)
    if args is None:
        args = parse_args(build_parser(), argv)
    if not getattr(args, "func", None):
        if args.command is None:
            build_parser().print_help()
            return 0
        args.command_parser.print_help(sys.stderr)
        return 2
    if args.command in TRAINING_COMMANDS:
        from ecamp.utils.allocator import request_keep_freed_memory

        request_keep_freed_memory()
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError) as e:
        print(f"ecamp {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (NotADirectoryError, FileExistsError, IsADirectoryError, PermissionError) as e:
        # a path problem no stage caught itself: still one line, naming the path
        print(
            f"ecamp {args.command}: error: {e.strerror or e}: {e.filename}; "
            "check the paths given (an output under a regular file, a read-only folder ...)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(
            f"ecamp {args.command}: interrupted; finished work is kept, rerun to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())

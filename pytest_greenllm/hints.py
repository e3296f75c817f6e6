"""Advice that names an option, never a flag: each front end renders it with its own flags.

The same device, report or meter error reaches a user through ``pytest --greenllm`` (flags
with the plugin's prefix, ``options.PYTEST_PREFIX``) and through the ``greenllm`` command
(flags ``--<option>``). Lower
layers attach a :class:`Hint` to what they raise or warn; the plugin renders it with its
prefix and the CLI with its own, so no message can name a flag its reader does not have.
"""

from __future__ import annotations

from dataclasses import dataclass

CLI_PREFIX = "--"


@dataclass(frozen=True)
class Hint:
    """What to change: an option (and the value to give it) inside a sentence."""

    option: str  # the option's name without a prefix, e.g. 'freqs' or 'allow-mismatch'
    value: str | None = None
    template: str = "; pass {flag}"  # the advice around the flag, appended to a message

    def flag(self, prefix: str) -> str:
        """The flag as written on a command line with ``prefix``."""
        return prefix + self.option + ("" if self.value is None else f"={self.value}")

    def render(self, prefix: str) -> str:
        """The advice, with the flag spelled for the front end of ``prefix``."""
        return self.template.format(flag=self.flag(prefix))


def render(message: str, hint: Hint | None, prefix: str) -> str:
    """``message`` followed by its hint, if any, rendered for ``prefix``."""
    return message if hint is None else message + hint.render(prefix)


class HintedError(Exception):
    """An error whose advice names an option; ``str()`` renders it for the CLI.

    ``subject``, where set, is the option (with its value) the error is about: it is
    rendered first, as ``--flag=value: message``.
    """

    def __init__(self, message: str, hint: Hint | None = None, subject: Hint | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.subject = subject

    def render(self, prefix: str) -> str:
        """The message with its advice rendered for the front end of ``prefix``."""
        about = "" if self.subject is None else f"{self.subject.flag(prefix)}: "
        return about + render(self.message, self.hint, prefix)

    def __str__(self) -> str:
        return self.render(CLI_PREFIX)


def render_error(error: BaseException, prefix: str) -> str:
    """Any error as one message, its hint (if it has one) rendered for ``prefix``."""
    return error.render(prefix) if isinstance(error, HintedError) else str(error)


ALLOW_MISMATCH = Hint("allow-mismatch", template=" ({flag} to compare anyway)")
LEAVE_CLOCKS = Hint("freqs", "default", ", or pass {flag} to leave the clocks alone")
LEAVE_CLOCKS_ONLY = Hint("freqs", "default", "; pass {flag} to leave the clocks alone")

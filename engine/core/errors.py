"""Errors a user can act on.

Every exception raised for bad input derives from ``ConvScopeError``; its message is
written for a person (the CLI prints it on one line, the GUI shows it in a dialog), so
it says what went wrong and what to do about it, never how the code got there.
"""

import re


class ConvScopeError(Exception):
    """Base of every user-facing error."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its class name when it has none), for
    one-line messages that quote what a library said (a model file that could not be
    read, code torch.fx could not trace)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class ImageLoadError(ConvScopeError):
    """The file is not an image we can read, or reading it would be unsafe."""


class ModelLoadError(ConvScopeError):
    """A model or its weights could not be loaded."""


class WeightsMissingError(ModelLoadError):
    """Pretrained weights are neither cached nor downloadable right now."""

    def __init__(self, message: str, *, filename: str = "", expected_path: str = "", url: str = ""):
        super().__init__(message)
        self.filename = filename
        self.expected_path = expected_path
        self.url = url


class UntrustedFileError(ModelLoadError):
    """The file needs full unpickling, which can run arbitrary code."""


class MethodInputError(ConvScopeError):
    """A method's parameters do not fit the model or the image."""


class ParamError(MethodInputError):
    """A value that does not fit its parameter: ``name`` is the parameter, ``problem`` the
    message without the flag, for a form to show beside its field. The message is the
    flag followed by the problem, unless ``message`` words it otherwise."""

    def __init__(self, name: str, problem: str, message: str | None = None):
        self.name = name
        self.flag = flag_of(name)
        self.problem = problem
        super().__init__(message or f"{self.flag} {problem}")


def flag_of(name: str) -> str:
    """The CLI flag of a parameter: --name-with-dashes."""
    return "--" + name.replace("_", "-")


def label_of(name: str) -> str:
    """The window's name for a parameter's field: "name with spaces"."""
    return name.replace("_", " ")


# A flag as the engine's texts write it: "--style-model", not part of a longer word.
_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)")


def in_field_words(text: str) -> str:
    """A text for the window: every parameter it names as a flag ("--style-model") named
    as the window's field ("'style model'").

    The engine writes one text for both front ends, naming parameters by their flags, so
    the CLI prints it as it is and the window renders it with this: the one place where a
    flag becomes a field's name (messages, descriptions, help, special values alike).
    """
    return _FLAG.sub(lambda match: f"'{label_of(match[1].replace('-', '_'))}'", text)


class JobCancelled(ConvScopeError):
    """The user cancelled the job; no result is reported."""

    def __init__(self, message: str = "Cancelled"):
        super().__init__(message)


class OutputWriteError(ConvScopeError):
    """A file the user asked for could not be written; ``reason`` says why in plain words."""

    def __init__(self, path, reason: str):
        super().__init__(f"cannot write {path}: {reason}")
        self.path = str(path)
        self.reason = reason


class OutputExistsError(OutputWriteError):
    """A file the user named exists already and replacing it was not allowed."""

    def __init__(self, path):
        super().__init__(path, "it exists already")


class NothingToExportError(ConvScopeError):
    """What is shown has no such output: no raw array, no recorded frames, nothing at all."""

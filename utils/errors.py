"""Errors that are the user's to fix: the scripts print them as one line and exit non-zero."""
import re


class UserError(Exception):
    """Bad input (flags, data, checkpoint, path). The message names the problem and the fix."""


class DataError(UserError):
    """Missing, malformed or inconsistent dataset files."""


class WriteFault(UserError):
    """A file could not be written (full disk, read-only file system, file-size limit, a
    symbolic link where a file was expected); its previous version is intact."""


class OptionError(UserError):
    """A bad value of an option, in the core's own terms: ``template`` names options between
    ⟨ ⟩ by their API keyword — ``⟨tau⟩``, ``⟨cs_every⟩``, ``⟨rates.cs⟩``, ``⟨target.flops⟩``,
    and with a value ``⟨method=sfp⟩``, ``⟨attenuate=bn⟩``, ``⟨target.flops=0.5⟩``; ``⟨target⟩``
    is "either target". ``str()`` words them as the API's keyword arguments; the scripts reword
    them with their flags (``render`` with ``utils.report.config.cli_name``)."""

    def __init__(self, template: str):
        self.template = template
        super().__init__(self.render(api_name))

    def render(self, name_of) -> str:
        """The message, each option worded by ``name_of(key, value)`` (value: None, or the
        text after ``=``)."""
        return re.sub(r"⟨([^⟩=]+)(?:=([^⟩]*))?⟩", lambda m: name_of(m[1], m[2]), self.template)


def api_name(key: str, value: str | None) -> str:
    """An option as a keyword argument of the API: ``rates['cs']``, ``target={'flops': 0.5}``,
    ``method 'sfp'``, ``attenuate='bn'``."""
    if key == "target":
        return "target={'flops': F} or target={'params': P}"
    head, _, sub = key.partition(".")
    if head == "rates" and sub:
        return f"rates[{sub!r}]"
    if head == "target":
        return f"target={{{sub!r}: {value or sub[0].upper()}}}"
    if value is None:
        return key
    return f"method {value!r}" if key == "method" else f"{key}={value!r}"
